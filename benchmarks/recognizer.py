"""The GPU stage alone: how long one batched forward pass takes at each batch size.

    python -m benchmarks.recognizer --work DIR [--fp16] [--profile 8]

Random features of utterance length (about 4.5 s), the Paraformer built at its real size. Prints
the time per batch and per segment for each batch size; with --profile B, torch.profiler's top
operators at batch B (where the host's time goes when batches are small).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recognizer")
    p.add_argument("--work", type=Path, default=Path("/tmp/asr-bench"))
    p.add_argument("--size", choices=("large", "tiny"), default="large")
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--batches", default="1,2,4,8,16,32,64")
    p.add_argument("--frames", type=int, default=75, help="encoder frames per segment (75: 4.5 s)")
    p.add_argument("--profile", type=int, default=0, help="profile this batch size")
    args = p.parse_args(argv)

    import torch
    from funasr import AutoModel

    from asrfleet.engines.funasr.recognize import Recognizer
    from asrfleet.random_models import build_paraformer

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    model_dir = args.work / f"paraformer-{args.size}"
    if not (model_dir / "model.pt").exists():
        build_paraformer(model_dir, size=args.size)
    model, kwargs = AutoModel.build_model(model=str(model_dir), device=device, disable_update=True)
    recognizer = Recognizer(model, kwargs["tokenizer"], device, fp16=args.fp16)
    rng = np.random.default_rng(0)

    def feats(n: int) -> list[np.ndarray]:
        lengths = rng.integers(int(args.frames * 0.7), int(args.frames * 1.3), n)
        return [rng.standard_normal((int(m), 560), dtype=np.float32) for m in lengths]

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    recognizer(feats(4))
    print(f"{device} {torch.cuda.get_device_name(0) if device != 'cpu' else ''} fp16={args.fp16}")
    for batch in [int(b) for b in args.batches.split(",")]:
        runs = [feats(batch) for _ in range(5)]
        recognizer(runs[0])
        sync()
        started = time.perf_counter()
        for run in runs:
            recognizer(run)
        sync()
        per_batch = (time.perf_counter() - started) / len(runs)
        ms = per_batch * 1000
        print(f"batch {batch:>3}: {ms:7.1f} ms a batch, {ms / batch:6.2f} ms a segment", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device != "cpu" else [])
        run = feats(args.profile)
        with profile(activities=activities, with_stack=False) as prof:
            recognizer(run)
            sync()
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=40, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
