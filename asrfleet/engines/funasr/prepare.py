"""Stage 1-2, run in worker processes: decode, find speech with FSMN-VAD, compute ASR features.

This is the CPU-heavy part of the pipeline (FFmpeg decoding, the VAD's network and per-frame state
machine, filterbanks), so it runs in separate processes: threads would serialise on the GIL. A
worker sends the segment list first, then the features in chunks, so the GPU can start on a long
recording before all of it is prepared.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asrfleet.audio import AudioLimits, check_not_silent, decode_recording
from asrfleet.engines.funasr import vad_frames
from asrfleet.engines.funasr.features import FbankReuse, build_frontend
from asrfleet.engines.funasr.segments import Features, Segmented, Span
from asrfleet.errors import NoSpeech

log = logging.getLogger(__name__)

# Torch CPU threads in each worker (its filterbank, the VAD's network): more threads per worker
# cost more CPU per request than they saved; the workers run side by side instead.
WORKER_THREADS = 1


@dataclass(frozen=True)
class PrepareSettings:
    asr_dir: str
    vad_dir: str
    limits: AudioLimits
    chunk_segments: int = 32  # segments per message: small enough to start the GPU early
    # Recordings up to this long reuse the VAD's filterbank for the ASR features (features.py);
    # keeping it costs 32 kB a second, half as much again as the decoded samples.
    reuse_fbank_s: float = 1200.0


class Preparer:
    """Owns one VAD model and one ASR frontend; used by one worker process at a time."""

    def __init__(self, settings: PrepareSettings) -> None:
        import torch
        from funasr import AutoModel

        torch.set_num_threads(WORKER_THREADS)
        self.settings = settings
        self.vad = AutoModel(
            model=settings.vad_dir,
            device="cpu",
            ncpu=WORKER_THREADS,
            disable_update=True,
            disable_pbar=True,
            disable_log=True,
        )
        vad_frames.install(self.vad.model)
        self.frontend = build_frontend(settings.asr_dir)
        self.fbank = FbankReuse(self.vad, self.frontend, max_seconds=settings.reuse_fbank_s)
        self.fbank.check(self.find_speech)

    def prepare(self, path: Path | str) -> Iterator[Segmented | Features]:
        decoded = decode_recording(path, self.settings.limits)
        samples = decoded.samples
        check_not_silent(samples)
        self.fbank.start(samples.size)
        segments = self.find_speech(samples)
        if not segments:
            raise NoSpeech("no speech was found in the recording")
        yield Segmented(duration=decoded.duration, segments=segments, warnings=decoded.warnings)
        step = self.settings.chunk_segments
        for first in range(0, len(segments), step):
            chunk = segments[first : first + step]
            yield Features(first, [self.fbank.features(samples, seg) for seg in chunk])
        self.fbank.forget()

    def find_speech(self, samples: np.ndarray) -> list[Span]:
        result = self.vad.generate(input=samples)
        return [(int(start), int(end)) for start, end in result[0]["value"]]
