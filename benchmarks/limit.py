"""The limit: ASR alone (no VAD, no HTTP), utterances sorted by length, in batches of 128 under
fp16 autocast, in one process: FunASR's own `generate`, the usual way to quote a model's speed.

`benchmarks.one_gpu` measures it beside the instance. Run alone, it can also time several passes
over the same utterances (the first pays for every new input shape, which cuDNN plans once) and
plain Paraformer beside BiCifParaformer (the published Paraformer-large, whose timestamp head
FunASR's `generate` post-processes utterance by utterance on the host):

    python -m benchmarks.limit --audio DIR [--limit N] [--passes 3] [--model-class Paraformer] --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from asrfleet.audio import AudioLimits, decode_audio
from benchmarks.workload import Recording, collect


def decode_all(recordings: list[Recording]) -> list[np.ndarray]:
    limits = AudioLimits(2**31, 36000)
    return [decode_audio(r.path, limits) for r in recordings]


def measure(
    model_dir: str, recordings: list[Recording], batch: int = 128, device: str = "cuda:0", passes: int = 1
) -> dict:
    """`rtfx` is the first pass's, as the one-GPU benchmark has always reported it; `passes` has
    each pass's when there are several."""
    import torch
    from funasr import AutoModel

    model = AutoModel(
        model=model_dir, device=device, disable_update=True, disable_pbar=True, disable_log=True
    )
    audios = sorted(decode_all(recordings), key=len)
    seconds = sum(len(a) for a in audios) / 16000
    on_gpu = device.startswith("cuda")
    autocast = torch.autocast("cuda", dtype=torch.float16) if on_gpu else torch.autocast("cpu", enabled=False)
    walls = []
    with autocast:
        model.generate(input=audios[:batch], batch_size=batch)  # warm-up
        for _ in range(passes):
            walls.append(_timed(lambda: model.generate(input=audios, batch_size=batch), on_gpu))
    result = {
        "what": f"ASR only, sorted, batch {batch}, fp16 autocast",
        "files": len(audios),
        "audio_s": round(seconds, 2),
        "wall_s": round(walls[0], 3),
        "rtfx": round(seconds / walls[0], 1),
    }
    if passes > 1:
        result["passes"] = [{"wall_s": round(w, 3), "rtfx": round(seconds / w, 1)} for w in walls]
    return result


def _timed(run: Callable[[], object], on_gpu: bool) -> float:
    import torch

    if on_gpu:
        torch.cuda.synchronize()
    started = time.perf_counter()
    run()
    if on_gpu:
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    from asrfleet.testing.random_models import MODEL_CLASSES, built_paraformer
    from benchmarks.load import hardware

    p = argparse.ArgumentParser(prog="python -m benchmarks.limit", description=__doc__.split("\n\n")[0])
    p.add_argument("--audio", type=Path, required=True, help="folder of utterances")
    p.add_argument("--limit", type=int, default=None, help="utterances to use (the first, by name)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--passes", type=int, default=3, help="timed passes over the utterances")
    p.add_argument("--model-class", choices=MODEL_CLASSES, default=MODEL_CLASSES[0])
    p.add_argument("--size", choices=("large", "tiny"), default="large")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--work", type=Path, default=Path("/tmp/asr-bench"), help="where the model is built")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.passes < 1 or args.batch < 1:
        p.error("--passes and --batch must be at least 1")
    folder = built_paraformer(args.work, args.size, args.model_class)
    recordings = collect([args.audio], args.limit)
    result = {
        "hardware": hardware(),
        "model": f"{args.model_class}, Paraformer-large architecture ({args.size}), random weights",
        **measure(str(folder), recordings, batch=args.batch, device=args.device, passes=args.passes),
    }
    print(json.dumps(result), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
