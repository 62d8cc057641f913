"""The recordings a benchmark sends, with their durations, read once from the files' headers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from asrfleet.audio import AUDIO_SUFFIXES, probe_duration


@dataclass(frozen=True)
class Recording:
    path: Path
    duration_s: float


def collect(folders: list[Path], limit: int | None = None) -> list[Recording]:
    """Every audio file under the folders, in a stable order; the first `limit` of each folder."""
    recordings = []
    for folder in folders:
        files = (
            sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
            if folder.is_dir()
            else [folder]
        )
        recordings += [Recording(p, probe_duration(p) or 0.0) for p in files[:limit]]
    return recordings


def total_s(recordings: list[Recording]) -> float:
    return sum(r.duration_s for r in recordings)


def write_wav(path: Path, samples) -> Path:
    """16 kHz mono 16-bit WAV, written directly (hours of audio in a second)."""
    import wave

    import numpy as np

    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(pcm.tobytes())
    return path
