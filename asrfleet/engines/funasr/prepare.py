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
import torch

from asrfleet.audio import SAMPLE_RATE, AudioLimits, check_not_silent, decode_audio
from asrfleet.errors import NoSpeech

log = logging.getLogger(__name__)

_MS = SAMPLE_RATE // 1000  # samples per millisecond


@dataclass(frozen=True)
class PrepareSettings:
    asr_dir: str
    vad_dir: str
    limits: AudioLimits
    threads: int = 1
    chunk_segments: int = 32  # segments per message: small enough to start the GPU early


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
    """Owns one VAD model and one ASR frontend; used by one worker process at a time."""

    def __init__(self, settings: PrepareSettings) -> None:
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
        self.frontend = build_frontend(settings.asr_dir)

    def prepare(self, path: Path | str) -> Iterator[Segmented | Features]:
        samples = decode_audio(path, self.settings.limits)
        check_not_silent(samples)
        segments = self.find_speech(samples)
        if not segments:
            raise NoSpeech("no speech was found in the recording")
        yield Segmented(duration=samples.size / SAMPLE_RATE, segments=segments)
        step = self.settings.chunk_segments
        for first in range(0, len(segments), step):
            chunk = segments[first : first + step]
            yield Features(first, [self.features(samples, seg) for seg in chunk])

    def find_speech(self, samples: np.ndarray) -> list[tuple[int, int]]:
        result = self.vad.generate(input=samples)
        return [(int(start), int(end)) for start, end in result[0]["value"]]

    def features(self, samples: np.ndarray, segment: tuple[int, int]) -> np.ndarray:
        """Features of one segment, cut exactly as FunASR's own VAD pipeline cuts it."""
        import torch

        piece = samples[segment[0] * _MS : min(segment[1] * _MS, samples.size)]
        wave = torch.from_numpy(np.ascontiguousarray(piece))[None, :]
        with torch.inference_mode():
            feats, lengths = self.frontend(wave, [wave.shape[1]])
        return feats[0, : int(lengths[0])].numpy()


def build_frontend(asr_dir: str) -> torch.nn.Module:
    """The ASR model's own frontend (e.g. WavFrontend with its CMVN), built from its config.

    Dither is switched off: FunASR's WavFrontend dithers by default, a training-time augmentation
    that makes the same file transcribe differently from run to run and from batch to batch.
    """
    from funasr.download.download_model_from_hub import download_model
    from funasr.register import tables

    conf = download_model(model=asr_dir, disable_update=True)
    frontend_class = tables.frontend_classes.get(conf["frontend"])
    return frontend_class(**{**conf.get("frontend_conf", {}), "dither": 0.0}).eval()
