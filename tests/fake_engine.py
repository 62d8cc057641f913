"""An engine for testing what surrounds engines: what it does is picked by the file's name.

ok.wav          a transcript naming the file and the hotwords
bad.wav         BadAudio (an error the user caused)
busy.wav        Busy with a retry hint
bug.wav         a KeyError (a bug in the engine)
crash.wav       the process exits at once with code 9
meet-N.wav      waits until N requests are inside transcribe() together (proves concurrency)
hang.wav        never returns (until the process ends)
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from asrfleet.config import InstanceConfig
from asrfleet.engines.base import TranscribeOptions
from asrfleet.errors import BadAudio, Busy
from asrfleet.transcript import Sentence, Transcript

FAIL_TO_LOAD = "fail-to-load"


class FakeEngine:
    def __init__(self, config: InstanceConfig) -> None:
        self.config = config
        self.model_name = "fake-model"
        self._ready = False
        self._barriers: dict[int, threading.Barrier] = {}
        self._lock = threading.Lock()

    def load(self) -> None:
        if self.config.model == FAIL_TO_LOAD:
            raise ValueError("--model fail-to-load: not a model directory")
        self._ready = True

    @property
    def ready(self) -> bool:
        return self._ready

    def transcribe(self, path: Path, options: TranscribeOptions) -> Transcript:
        name = Path(path).stem
        if name == "bad":
            raise BadAudio("the file could not be decoded as audio")
        if name == "busy":
            raise Busy("full", retry_after_s=7)
        if name == "bug":
            raise KeyError("internal detail")
        if name == "crash":
            os._exit(9)
        if name == "hang":
            time.sleep(3600)
        if name.startswith("meet-"):
            self._meet(int(name.split("-")[1]))
        text = f"heard {Path(path).name} {options.hotwords or ''}".strip()
        sentences = (Sentence(0.0, 1.0, text),)
        return Transcript(text=text, sentences=sentences, duration=1.0, model=self.model_name)

    def _meet(self, parties: int) -> None:
        with self._lock:
            barrier = self._barriers.setdefault(parties, threading.Barrier(parties))
        barrier.wait(timeout=20)  # BrokenBarrierError if they never are inside together

    def stats(self) -> dict[str, object]:
        return {"pid": os.getpid(), "threads": sorted(t.name for t in threading.enumerate())}

    def close(self) -> None:
        self._ready = False


class FutureFakeEngine(FakeEngine):
    """The same, with `submit()`: a future per transcription, as the Paraformer engine has.

    refused.wav  refused by submit() itself (Busy), before any future exists
    """

    def __init__(self, config: InstanceConfig) -> None:
        super().__init__(config)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fake-engine")

    def submit(self, path: Path, options: TranscribeOptions) -> Future:
        if Path(path).stem == "refused":
            raise Busy("full at submit", retry_after_s=3)
        return self._pool.submit(self.transcribe, path, options)
