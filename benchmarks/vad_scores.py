"""FSMN-VAD's network on the engine's device against the workers' CPU: the same segments, and the
workers' CPU it saves (`asrfleet/engines/funasr/vad_scores.py`).

    python -m benchmarks.vad_scores --audio DIR --vad-model DIR --device cuda --out FILE.json

Every recording is prepared as an audio worker prepares it (`prepare.Preparer`: decoding, VAD,
ASR features) twice: with the VAD's network on the worker's CPU (`--vad-scores workers`), and
asking a `ScoreServer` on --device (`--vad-scores engine`), --clients recordings at a time so that
the server batches them as it does for an instance's workers. It reports how many recordings got
the same segments and the same ASR features both ways (the ones that differ are listed), and the
preparing thread's CPU time per recording both ways.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from asrfleet.audio import AudioLimits
from asrfleet.engines.funasr.prepare import Features, Preparer, PrepareSettings, Segmented
from asrfleet.engines.funasr.vad_scores import ScoreServer
from asrfleet.testing.random_models import built_paraformer
from benchmarks import load
from benchmarks.workload import collect


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--audio", type=Path, required=True)
    p.add_argument("--vad-model", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--clients", type=int, default=8, help="recordings prepared at once")
    p.add_argument("--limit", type=int, default=None, help="at most this many recordings")
    p.add_argument("--work", type=Path, default=Path("/tmp/asr-bench"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    result = run(args)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(json.dumps({k: v for k, v in result.items() if k != "differing"}, indent=2))


def run(args: argparse.Namespace) -> dict:
    from funasr import AutoModel

    recordings = [r.path for r in collect([args.audio], args.limit)]
    settings = PrepareSettings(
        asr_dir=str(built_paraformer(args.work, "tiny")),  # only its frontend is used: any size will do
        vad_dir=str(args.vad_model),
        limits=AudioLimits(2**31, 36000.0),
    )
    vad, _ = AutoModel.build_model(
        model=str(args.vad_model), device=args.device, disable_update=True, disable_log=True
    )
    server = ScoreServer(vad.encoder, args.device)
    try:
        local = prepare_all(lambda: Preparer(settings), recordings, args.clients)
        remote_settings = PrepareSettings(**{**settings.__dict__, "remote_scores": True})
        remote = prepare_all(lambda: Preparer(remote_settings, server.ask), recordings, args.clients)
    finally:
        server.stop()
    differing = [
        str(path)
        for path, a, b in zip(recordings, local["out"], remote["out"], strict=True)
        if not same(a, b)
    ]
    s = server.stats
    return {
        "hardware": load.hardware(),
        "device": args.device,
        "recordings": len(recordings),
        "same_segments_and_features": len(recordings) - len(differing),
        "differing": differing,
        "worker_cpu_ms_per_recording": {
            "network_in_the_worker": local["cpu_ms"],
            "network_in_the_engine": remote["cpu_ms"],
        },
        "server": {
            "batches": s.batches,
            "chunks": s.chunks,
            "mean_batch": round(s.chunks / max(1, s.batches), 2),
            "ms_per_batch": round(1000 * s.busy_s / max(1, s.batches), 3),
        },
    }


def prepare_all(make, recordings: list[Path], clients: int) -> dict:
    """Every recording's messages, and the mean CPU time of the thread that prepared it."""
    local = threading.local()
    cpu: list[float] = []

    def one(path: Path) -> list:
        if not hasattr(local, "preparer"):
            local.preparer = make()
        started = time.thread_time()
        messages = list(local.preparer.prepare(path))
        cpu.append(time.thread_time() - started)
        return messages

    with ThreadPoolExecutor(clients) as pool:
        out = list(pool.map(one, recordings))
    return {"out": out, "cpu_ms": round(1000 * float(np.mean(cpu)), 2)}


def same(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, Segmented) and x != y:
            return False
        if isinstance(x, Features) and (
            x.first_index != y.first_index
            or len(x.feats) != len(y.feats)
            or not all(np.array_equal(f, g) for f, g in zip(x.feats, y.feats, strict=True))
        ):
            return False
    return True


if __name__ == "__main__":
    main()
