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
    """The configured engine: in a process of its own (see `process.py`) unless `in_process`."""
    if not config.in_process:
        from asrfleet.engines.process import EngineProcess

        return EngineProcess(config, ENGINES[config.engine])
    module_name, class_name = ENGINES[config.engine].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(config)


__all__ = ["ENGINES", "TranscribeOptions", "Transcriber", "create_transcriber"]
