"""The garbage collector's pauses: kept short after loading, and counted.

CPython's cyclic collector runs in whichever thread allocates past its threshold, and holds the GIL
until it is done. A full collection walks every object the collector tracks: after torch and FunASR
are imported, about half a million, which takes hundreds of milliseconds. Whatever thread runs one
stops the GPU thread for that long (it cannot take the GIL back after a CUDA wait), and the GPU
idles.

`freeze_loaded()` moves everything alive after loading into the permanent generation, which
no collection walks (`gc.freeze`), so later collections only walk what serving created. Garbage
is collected first, so none of it is frozen. The cost: a frozen object that later becomes part of
unreachable cycles is never freed, which suits what loading leaves (modules, models, the server),
alive as long as the process. `GcPauses` counts the collections and times them
through `gc.callbacks`; `as_dict()` goes into an engine's stats.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

OLDEST = 2  # the generation a full collection collects


def freeze_loaded() -> int:
    """Collect, then freeze what is left. Returns how many objects are now frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcPauses:
    """The collections in this process since `install()`, and the time they held the GIL."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started: float | None = None
        self.collections = 0
        self.pause_s = 0.0
        self.full_collections = 0
        self.full_pause_s = 0.0
        self.longest_pause_s = 0.0

    def install(self) -> GcPauses:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)
        return self

    def remove(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Called by the collecting thread, holding the GIL; collections never overlap.
        if phase == "start":
            self._started = self._clock()
            return
        if self._started is None:  # installed mid-collection
            return
        pause = self._clock() - self._started
        self._started = None
        self.collections += 1
        self.pause_s += pause
        self.longest_pause_s = max(self.longest_pause_s, pause)
        if info.get("generation") == OLDEST:
            self.full_collections += 1
            self.full_pause_s += pause

    def as_dict(self) -> dict[str, float | int]:
        return {
            "gc_collections": self.collections,
            "gc_pause_s": round(self.pause_s, 4),
            "gc_full_collections": self.full_collections,
            "gc_full_pause_s": round(self.full_pause_s, 4),
            "gc_longest_pause_ms": round(1000 * self.longest_pause_s, 2),
            "gc_frozen_objects": gc.get_freeze_count(),
        }
