"""Pools the speech segments of every request in flight into GPU batches.

FunASR batches only the segments of one file, and serves one file at a time; a GPU fed many short
uploads that way idles. Here one thread owns the model and, whenever it is free, builds the next
batch from all pending segments of all requests:

  * a batch holds at most `Budget.max_frames` padded frames (longest segment x count), a bound
    measured against GPU memory at startup, so memory does not grow with file length;
  * requests with the least audio go first (shortest-job-first keeps a 3 s upload from waiting
    behind a 3 h one), while the oldest request always gets a segment into every batch, so a long
    recording keeps moving however busy the instance is;
  * a batch that runs out of GPU memory is split and retried, and the budget lowered.

A batch has two parts: the GPU's (the forward pass, up to the copy of its results to the host)
and the host's (each segment's text and timestamps, a few ms of Python a batch). The GPU thread
does only the first and hands the second to a host thread, so the GPU starts on the next batch
instead of waiting for that Python. At most `_HANDED_OVER` batches wait for the host thread; past
that, the GPU thread waits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from queue import Queue

import numpy as np

from asrfleet.engines.funasr.segments import SegmentText

log = logging.getLogger(__name__)

_HANDED_OVER = 2  # batches run on the GPU and waiting for the host thread, at most

# The GPU's part of a batch; it returns the host's part, to be called in another thread.
Finish = Callable[[], list[SegmentText]]
Recognize = Callable[[list[np.ndarray]], Finish]
Key = Hashable  # names a request's segments (the transcriber's `segments.Attempt`)
OnResults = Callable[[Key, list[tuple[int, SegmentText]]], None]
OnError = Callable[[Key, BaseException], None]


@dataclass
class Budget:
    max_frames: int  # padded frames per batch: longest segment x number of segments
    max_items: int = 512


@dataclass
class _Segment:
    key: Key
    index: int
    feats: np.ndarray

    @property
    def frames(self) -> int:
        return self.feats.shape[0]


@dataclass
class _Queue:
    """The pending segments of one request."""

    arrival: float
    priority: float  # seconds of audio in the request: less goes first
    segments: list[_Segment] = field(default_factory=list)


@dataclass
class SchedulerStats:
    batches: int = 0
    segments: int = 0
    padded_frames: int = 0
    real_frames: int = 0
    busy_s: float = 0.0  # the GPU thread's, in batches
    # ... and its CPU time in them: per batch, more CPU for the same work means a slower CPU; a
    # longer wall time with the same CPU means waits (for the GPU, for a CPU, for the GIL)
    cpu_s: float = 0.0
    host_busy_s: float = 0.0  # the host thread's, turning batches into text
    oom_splits: int = 0


class BatchScheduler:
    def __init__(
        self,
        recognize: Recognize,
        budget: Budget,
        on_results: OnResults,
        on_error: OnError,
    ) -> None:
        self.recognize = recognize
        self.budget = budget
        self.on_results = on_results
        self.on_error = on_error
        self.stats = SchedulerStats()
        self._queues: dict[Key, _Queue] = {}
        self._cond = threading.Condition()
        self._stopped = False
        self._ran: Queue[tuple[list[_Segment], Finish] | None] = Queue(_HANDED_OVER)
        self._thread = threading.Thread(target=self._run, name="gpu-batches", daemon=True)
        self._host_thread = threading.Thread(target=self._run_host, name="batch-texts", daemon=True)

    def start(self) -> None:
        self._host_thread.start()
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        self._ran.put(None)
        self._host_thread.join(timeout=30)

    def add(self, key: Key, priority: float, items: list[tuple[int, np.ndarray]]) -> None:
        """Queue segments (index within the request, features) of request `key`."""
        with self._cond:
            queue = self._queues.setdefault(key, _Queue(arrival=time.monotonic(), priority=priority))
            queue.segments.extend(_Segment(key, index, feats) for index, feats in items)
            self._cond.notify()

    def cancel(self, key: Key) -> None:
        with self._cond:
            self._queues.pop(key, None)

    def pending(self) -> int:
        with self._cond:
            return sum(len(q.segments) for q in self._queues.values())

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not any(q.segments for q in self._queues.values()):
                    self._cond.wait()
                if self._stopped:
                    return
                batch = self._take_batch()
            self._process(batch)

    def _take_batch(self) -> list[_Segment]:
        """Choose the next batch and remove it from the queues. Called with the lock held."""
        chosen = select_batch(self._queues, self.budget)
        taken = {id(s) for s in chosen}
        for key in list(self._queues):
            queue = self._queues[key]
            queue.segments = [s for s in queue.segments if id(s) not in taken]
        return chosen

    def _process(self, batch: list[_Segment]) -> None:
        started, cpu_started = time.perf_counter(), time.thread_time()
        try:
            finish = self._recognize_fitting(batch)
        except Exception as err:  # one bad batch fails its requests, not the instance
            self._fail(batch, err)
            return
        self._account(batch, time.perf_counter() - started, time.thread_time() - cpu_started)
        self._ran.put((batch, finish))  # waits while the host thread is `_HANDED_OVER` batches behind

    def _run_host(self) -> None:
        while (item := self._ran.get()) is not None:
            self._finish(*item)

    def _finish(self, batch: list[_Segment], finish: Finish) -> None:
        started = time.perf_counter()
        try:
            by_key: dict[Key, list[tuple[int, SegmentText]]] = {}
            for seg, result in zip(batch, finish(), strict=True):
                by_key.setdefault(seg.key, []).append((seg.index, result))
            for key, items in by_key.items():
                self.on_results(key, items)
        except Exception as err:  # as on the GPU thread: its requests fail, the thread goes on
            self._fail(batch, err)
        finally:
            self.stats.host_busy_s += time.perf_counter() - started

    def _fail(self, batch: list[_Segment], err: Exception) -> None:
        log.error("a batch of %d segments failed", len(batch), exc_info=err)
        for key in {s.key for s in batch}:
            self.on_error(key, err)

    def _recognize_fitting(self, batch: list[_Segment]) -> Finish:
        """Run the batch, splitting it in halves while it does not fit in GPU memory."""
        try:
            return self.recognize([s.feats for s in batch])
        except RuntimeError as err:
            if not _is_out_of_memory(err) or len(batch) == 1:
                raise
        _release_cached_memory()
        self.stats.oom_splits += 1
        longest = max(s.frames for s in batch)
        self.budget.max_frames = max(longest, int(self.budget.max_frames * 0.75))
        log.warning(
            "GPU out of memory on %d segments; splitting, budget now %d frames",
            len(batch),
            self.budget.max_frames,
        )
        half = len(batch) // 2
        first, second = self._recognize_fitting(batch[:half]), self._recognize_fitting(batch[half:])
        return lambda: first() + second()

    def _account(self, batch: list[_Segment], seconds: float, cpu_seconds: float) -> None:
        s = self.stats
        s.cpu_s += cpu_seconds
        s.batches += 1
        s.segments += len(batch)
        s.padded_frames += max(seg.frames for seg in batch) * len(batch)
        s.real_frames += sum(seg.frames for seg in batch)
        s.busy_s += seconds


def select_batch(queues: dict[Key, _Queue], budget: Budget) -> list[_Segment]:
    """The next batch: the oldest request's shortest segment, then shortest jobs first.

    A segment that would break the budget is skipped, not the end of the batch: a shorter one
    further on may still fit. The first segment is always taken, even when it alone is over budget.
    """
    live = [q for q in queues.values() if q.segments]
    if not live:
        return []
    oldest = min(live, key=lambda q: q.arrival)
    first = min(oldest.segments, key=lambda s: s.frames)
    order = [first]
    for queue in sorted(live, key=lambda q: (q.priority, q.arrival)):
        order += sorted((s for s in queue.segments if s is not first), key=lambda s: s.frames)
    batch: list[_Segment] = []
    longest = 0
    for seg in order:
        if len(batch) >= budget.max_items:
            break
        new_longest = max(longest, seg.frames)
        if batch and new_longest * (len(batch) + 1) > budget.max_frames:
            continue
        batch.append(seg)
        longest = new_longest
    return batch


def _is_out_of_memory(err: RuntimeError) -> bool:
    return "out of memory" in str(err).lower()


def _release_cached_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
