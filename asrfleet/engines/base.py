"""What the app and the launcher know about an engine: a `Transcriber` and its options.

An engine is anything that turns an audio file into a `Transcript`. The app calls `transcribe()`
from many request threads at once; how an engine turns that concurrency into GPU batches is its
own business. Adding an engine means one new module and one line in `asrfleet.engines.ENGINES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from asrfleet.transcript import Transcript


@dataclass(frozen=True)
class TranscribeOptions:
    hotwords: str | None = None  # prompt words to bias recognition, where the model supports it
    language: str | None = None  # a hint; engines that detect the language may ignore it


def display_name(model: str) -> str:
    """A model's name for people: the hub id, or a local directory's last two path parts."""
    path = Path(model)
    if not path.is_absolute() and not model.startswith("."):
        return model
    return "/".join(path.parts[-2:])


class Transcriber(Protocol):
    """The one interface between the web app and a speech-recognition engine."""

    model_name: str

    def load(self) -> None:
        """Load the models and run one warm-up inference. Slow; called once, off the event loop."""

    @property
    def ready(self) -> bool:
        """True once `load()` has finished."""

    def transcribe(self, path: Path, options: TranscribeOptions) -> Transcript:
        """Transcribe one file; blocks; safe to call from many threads. Raises `AsrError`s."""

    def stats(self) -> dict[str, object]:
        """Queue depth, memory and such, for /readyz and benchmarks."""

    def close(self) -> None:
        """Finish or fail what is in flight and release workers and GPU memory."""
