"""The limit: ASR alone (no VAD, no HTTP), utterances sorted by length, in batches of 128 under
fp16 autocast, in one process: FunASR's own `generate`, as measured in ../shared/notes/FACTS.md."""

from __future__ import annotations

import time

import numpy as np

from asrfleet.audio import AudioLimits, decode_audio
from benchmarks.workload import Recording


def decode_all(recordings: list[Recording]) -> list[np.ndarray]:
    limits = AudioLimits(2**31, 36000)
    return [decode_audio(r.path, limits) for r in recordings]


def measure(model_dir: str, recordings: list[Recording], batch: int = 128, device: str = "cuda:0") -> dict:
    import torch
    from funasr import AutoModel

    model = AutoModel(
        model=model_dir, device=device, disable_update=True, disable_pbar=True, disable_log=True
    )
    audios = sorted(decode_all(recordings), key=len)
    seconds = sum(len(a) for a in audios) / 16000
    on_gpu = device.startswith("cuda")
    autocast = torch.autocast("cuda", dtype=torch.float16) if on_gpu else torch.autocast("cpu", enabled=False)
    with autocast:
        model.generate(input=audios[:batch], batch_size=batch)  # warm-up
        if on_gpu:
            torch.cuda.synchronize()
        started = time.perf_counter()
        model.generate(input=audios, batch_size=batch)
        if on_gpu:
            torch.cuda.synchronize()
        wall = time.perf_counter() - started
    return {
        "what": f"ASR only, sorted, batch {batch}, fp16 autocast",
        "files": len(audios),
        "audio_s": round(seconds, 2),
        "wall_s": round(wall, 3),
        "rtfx": round(seconds / wall, 1),
    }
