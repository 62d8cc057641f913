"""The GPU stage alone: how long one batched forward pass takes at each batch size.

    python -m benchmarks.recognizer --work DIR [--fp16] [--graphs] [--profile 8]

Random features of utterance length (about 4.5 s), the Paraformer built at its real size. Prints
the time per batch and per segment for each batch size; with --graphs, the same batches again
with CUDA graphs (`asrfleet/engines/funasr/graphs.py`), the time their first pass took (it records
the graphs) and how many segments got the same transcript, and timestamps, both ways; with --profile B,
torch.profiler's top operators at batch B (where the host's time goes when batches are small).
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
    p.add_argument("--graphs", action="store_true", help="also with CUDA graphs, and compare")
    p.add_argument("--profile", type=int, default=0, help="profile this batch size")
    args = p.parse_args(argv)

    import torch
    from funasr import AutoModel

    from asrfleet.engines.funasr.recognize import Recognizer
    from asrfleet.testing.random_models import build_paraformer

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
    graphed = None
    if args.graphs:
        graphed = Recognizer(model, kwargs["tokenizer"], device, fp16=args.fp16)
        graphed.use_graphs(capture=device != "cpu")  # on the CPU: the bucketed code, eagerly
    print(f"{device} {torch.cuda.get_device_name(0) if device != 'cpu' else ''} fp16={args.fp16}")
    for batch in [int(b) for b in args.batches.split(",")]:
        runs = [feats(batch) for _ in range(5)]
        line = f"batch {batch:>3}:"
        eager_results = None
        for name, rec in (("eager", recognizer), ("graphs", graphed)):
            if rec is None:
                continue
            first, results = timed(rec, runs, sync)  # the first pass loads kernels, records graphs
            ms = timed(rec, runs, sync)[0] * 1000
            line += f"  {name} {ms:7.1f} ms a batch, {ms / batch:6.2f} ms a segment"
            if name == "graphs":
                pairs = list(zip(eager_results, results, strict=True))
                text = sum(a.text == b.text for a, b in pairs)
                stamps = sum(a.timestamps == b.timestamps for a, b in pairs if a.text == b.text)
                line += (
                    f" (first pass {first * 1000:.0f} ms; same text {text}/{len(pairs)},"
                    f" and of those same timestamps {stamps}/{text})"
                )
            eager_results = results
        print(line, flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device != "cpu" else [])
        run = feats(args.profile)
        with profile(activities=activities, with_stack=False) as prof:
            recognizer(run)
            sync()
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=40, max_name_column_width=60))
    return 0


def timed(recognize, runs: list, sync) -> tuple[float, list]:
    """Seconds per batch over `runs`, and the results (text and timestamps) of every segment."""
    sync()
    started = time.perf_counter()
    results = [r for run in runs for r in recognize(run)]
    sync()
    return (time.perf_counter() - started) / len(runs), results


if __name__ == "__main__":
    raise SystemExit(main())
