"""Speech-recognition engines behind one `Transcriber` interface (see `base.py`)."""

from __future__ import annotations

import importlib

from asrfleet.config import InstanceConfig
from asrfleet.engines.base import TranscribeOptions, Transcriber

# engine name -> "module:class"; imported lazily so an instance loads only its own engine's libraries.
ENGINES = {
    "paraformer": "asrfleet.engines.funasr.transcriber:FunasrTranscriber",
    "whisper": "asrfleet.engines.whisper:WhisperTranscriber",
}


def create_transcriber(config: InstanceConfig) -> Transcriber:
    module_name, class_name = ENGINES[config.engine].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(config)


__all__ = ["ENGINES", "TranscribeOptions", "Transcriber", "create_transcriber"]
