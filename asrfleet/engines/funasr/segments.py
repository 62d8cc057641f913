"""What the pipeline's stages hand each other, and the frame geometry they share.

A recording is cut into speech segments by the VAD; each segment becomes ASR features in an audio
worker (`Segmented`, then `Features`), a row of a GPU batch in the engine, and a `SegmentText`.
Every request's attempt has its own name (`Attempt`), so that results of an attempt that was given
up (its worker died and the job started over) are told apart from the current one's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from asrfleet.audio import SAMPLE_RATE

# The filterbank that both the VAD and the ASR model compute: 25 ms frames every 10 ms, 80 mel bins.
FRAME_SHIFT_MS = 10
FRAME_LENGTH_MS = 25
MEL_BINS = 80
SAMPLES_PER_MS = SAMPLE_RATE // 1000
# Paraformer's low frame rate input: 7 filterbank frames stacked into one, every 6th frame.
LFR_STACK = 7
LFR_STRIDE = 6
FEATURE_DIM = MEL_BINS * LFR_STACK  # 560 values per encoder frame
ENCODER_FRAMES_PER_S = 1000 / (FRAME_SHIFT_MS * LFR_STRIDE)

Span = tuple[int, int]  # [start_ms, end_ms] of a segment in its recording


class Attempt(NamedTuple):
    """One attempt at a job: `n` counts the times it started over on another worker. A tuple, so
    it crosses process pipes and keys dicts."""

    job_id: str
    n: int = 0

    def next(self) -> Attempt:
        return Attempt(self.job_id, self.n + 1)


@dataclass(frozen=True)
class Segmented:
    """A worker's first message for a file: its duration, speech segments, and what decoding
    repaired (`audio.Decoded.warnings`), for the transcript."""

    duration: float
    segments: list[Span]
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Features:
    """ASR input features (frames, FEATURE_DIM) for segments first_index, first_index + 1, ..."""

    first_index: int
    feats: list[np.ndarray]


@dataclass(frozen=True)
class SegmentText:
    """A segment's recognised text and each token's [start_ms, end_ms] within the segment."""

    text: str
    timestamps: list[list[int]]
