"""What the app and the launcher know about an engine: a `Transcriber` and its options.

An engine is anything that turns an audio file into a `Transcript`. The app calls `transcribe()`
from many request threads at once; how an engine turns that concurrency into GPU batches is its
own business. An engine may also offer `submit(path, options)`, a `concurrent.futures.Future` of
the transcript, so that nothing has to wait in a thread of its own (`process.py` uses it).
Adding an engine means one new module and one line in `asrfleet.engines.ENGINES`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from asrfleet.errors import Busy, NotReady
from asrfleet.transcript import Transcript


@dataclass(frozen=True)
class TranscribeOptions:
    hotwords: str | None = None  # prompt words to bias recognition, where the model supports it
    language: str | None = None  # a hint; engines that detect the language may ignore it


class Admission:
    """Who may start a transcription: none before the models are loaded, at most `limit` at once.

    Shared by the engines so that every one answers a full queue and a loading model alike.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self._lock = threading.Lock()
        self._ready = threading.Event()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def open(self) -> None:
        self._ready.set()

    def close(self) -> None:
        self._ready.clear()

    @contextmanager
    def admit(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def enter(self) -> None:
        """Count one more transcription in, or raise `NotReady` / `Busy`; `leave()` when it is over."""
        if not self.ready:
            raise NotReady("the model is still loading; try again in a moment")
        with self._lock:
            if self.in_flight >= self.limit:
                raise Busy(f"the instance is busy ({self.in_flight} requests in flight); retry shortly")
            self.in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


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
