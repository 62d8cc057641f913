"""Whisper through faster-whisper (CTranslate2), INT8: the `Transcriber` for `--engine whisper`.

CTranslate2 runs `workers` transcriptions at once on one model (its own threads, outside the
GIL); further requests wait their turn. Audio is decoded by our own `audio.py`, so formats, limits
and errors are the same as for every engine.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from asrfleet.audio import SAMPLE_RATE, AudioLimits, Decoded, check_not_silent, decode_recording
from asrfleet.config import InstanceConfig
from asrfleet.engines.base import Admission, TranscribeOptions, display_name
from asrfleet.engines.device import available_cpus, pick_device, set_blocking_sync
from asrfleet.errors import NoSpeech
from asrfleet.hub import ModelRequest, resolve
from asrfleet.transcript import Sentence, Transcript

log = logging.getLogger(__name__)


class WhisperTranscriber:
    def __init__(self, config: InstanceConfig) -> None:
        self.config = config
        self.model_name = display_name(config.model)
        self.limits = AudioLimits(config.max_file_size, config.max_duration_s)
        self.workers = config.workers or 1
        self._model = None
        self._slots = threading.Semaphore(self.workers)
        self._admission = Admission(config.max_queue)
        self.device = "cpu"

    def load(self) -> None:
        from faster_whisper import WhisperModel

        cfg = self.config
        model_dir = resolve(ModelRequest(cfg.model, "whisper", "--model"), cfg.hub, cfg.model_cache)
        self.device = pick_device(cfg.device)
        on_gpu = self.device.startswith("cuda")
        set_blocking_sync(self.device)
        self._model = WhisperModel(
            str(model_dir),
            device="cuda" if on_gpu else "cpu",
            compute_type="int8_float16" if on_gpu else "int8",
            cpu_threads=cfg.threads or available_cpus(),
            num_workers=self.workers,
        )
        segments, _ = self._model.transcribe(_warm_up_audio(), beam_size=1)
        list(segments)
        self._admission.open()
        log.info("ready: whisper %s on %s (INT8), %d at a time", self.model_name, self.device, self.workers)

    @property
    def ready(self) -> bool:
        return self._admission.ready

    def transcribe(self, path: Path, options: TranscribeOptions) -> Transcript:
        with self._admission.admit():
            decoded = decode_recording(path, self.limits)
            check_not_silent(decoded.samples)
            with self._slots:
                return self._recognize(decoded, options)

    def _recognize(self, decoded: Decoded, options: TranscribeOptions) -> Transcript:
        started = time.perf_counter()
        segments, info = self._model.transcribe(
            decoded.samples,
            beam_size=5,
            language=options.language,
            initial_prompt=options.hotwords,
            vad_filter=True,  # skips silence, where Whisper is prone to invent text
        )
        sentences = tuple(Sentence(round(s.start, 3), round(s.end, 3), s.text.strip()) for s in segments)
        text = " ".join(s.text for s in sentences if s.text)
        if not text:
            raise NoSpeech("no speech was recognised in the recording")
        return Transcript(
            text=text,
            sentences=sentences,
            duration=decoded.duration,
            language=info.language,
            model=self.model_name,
            warnings=decoded.warnings,
            timings={"total_s": time.perf_counter() - started},
        )

    def stats(self) -> dict[str, object]:
        return {"in_flight": self._admission.in_flight, "device": self.device, "workers": self.workers}

    def close(self) -> None:
        self._admission.close()
        self._model = None


def _warm_up_audio() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal(SAMPLE_RATE) * 0.01).astype(np.float32)
