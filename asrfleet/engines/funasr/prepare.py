"""Stage 1-2, run in worker processes: decode, find speech with FSMN-VAD, compute ASR features.

This is the CPU-heavy part of the pipeline (FFmpeg decoding, the VAD's per-frame state machine,
filterbanks), so it runs in separate processes: threads would serialise on the GIL. A worker sends
the segment list first, then the features in chunks, so the GPU can start on a long recording
before all of it is prepared.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asrfleet.audio import SAMPLE_RATE, AudioLimits, check_not_silent, decode_audio
from asrfleet.engines.funasr import vad_frames, vad_scores
from asrfleet.engines.funasr.features import FbankReuse, build_frontend
from asrfleet.engines.funasr.vad_scorer import ScorerAddress
from asrfleet.errors import NoSpeech

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareSettings:
    asr_dir: str
    vad_dir: str
    limits: AudioLimits
    threads: int = 1
    chunk_segments: int = 32  # segments per message: small enough to start the GPU early
    # Recordings up to this long reuse the VAD's filterbank for the ASR features (features.py);
    # keeping it costs 32 kB a second, half as much again as the decoded samples.
    reuse_fbank_s: float = 1200.0
    # The VAD's network runs elsewhere (`vad_scores.py`): the worker asks for its output, from the
    # scorer process at `scorer` (`vad_scorer.py`), or else from the engine.
    remote_scores: bool = False
    scorer: ScorerAddress | None = None


@dataclass(frozen=True)
class Segmented:
    """The first message for a file: its duration and speech segments [start_ms, end_ms]."""

    duration: float
    segments: list[tuple[int, int]]


@dataclass(frozen=True)
class Features:
    """ASR input features for segments first_index, first_index + 1, ..."""

    first_index: int
    feats: list[np.ndarray]


class Preparer:
    """Owns one VAD model and one ASR frontend; used by one worker process at a time.

    `ask`: where the VAD's network output comes from when `settings.remote_scores` is set.
    """

    def __init__(self, settings: PrepareSettings, ask: vad_scores.Ask | None = None) -> None:
        import torch
        from funasr import AutoModel

        torch.set_num_threads(settings.threads)
        self.settings = settings
        self.vad = AutoModel(
            model=settings.vad_dir,
            device="cpu",
            ncpu=settings.threads,
            disable_update=True,
            disable_pbar=True,
            disable_log=True,
        )
        vad_frames.install(self.vad.model)
        if settings.remote_scores and (ask is None or not vad_scores.install_remote(self.vad.model, ask)):
            raise RuntimeError("the engine scores the VAD's frames, and this worker cannot ask it")
        self.frontend = build_frontend(settings.asr_dir)
        self.fbank = FbankReuse(self.vad, self.frontend, max_seconds=settings.reuse_fbank_s)
        self.fbank.check(self.find_speech)

    def prepare(self, path: Path | str) -> Iterator[Segmented | Features]:
        samples = decode_audio(path, self.settings.limits)
        check_not_silent(samples)
        self.fbank.start(samples.size)
        segments = self.find_speech(samples)
        if not segments:
            raise NoSpeech("no speech was found in the recording")
        yield Segmented(duration=samples.size / SAMPLE_RATE, segments=segments)
        step = self.settings.chunk_segments
        for first in range(0, len(segments), step):
            chunk = segments[first : first + step]
            yield Features(first, [self.fbank.features(samples, seg) for seg in chunk])
        self.fbank.forget()

    def find_speech(self, samples: np.ndarray) -> list[tuple[int, int]]:
        result = self.vad.generate(input=samples)
        return [(int(start), int(end)) for start, end in result[0]["value"]]
