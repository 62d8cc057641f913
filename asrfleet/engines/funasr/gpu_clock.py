"""Where the GPU's time goes: working, or waiting for the host inside and between batches.

The GPU thread's own clock (`SchedulerStats.busy_s`) says how long it spent on batches, not how
long the GPU did: an instance can keep its GPU thread 97 % busy and its GPU less, because the GPU
waits whenever the host has not yet queued the next piece of work. A batch has two pieces of GPU
work, the encoder's and the decoder's; between them the host runs the integrate-and-fire
recurrence on the predictor's weights (`recognize.py`), and before the encoder's the GPU thread
chooses and pads the batch. When the host's CPUs are slower (four instances on one host), the
waits are what grows.

Each piece of work is marked on the GPU's stream with timed CUDA events: START and ENCODED around
the encoder's, DECODING and END around the decoder's (`BatchMarks`). The GPU thread queues the
marks in stream order on one timeline (`GpuClock.mark`), and the host thread, which waits for each
batch's end anyway, adds up the intervals between consecutive marks up to it (`GpuClock.count`):
from a START or DECODING to the next mark the GPU worked; from an ENCODED or END to the next
mark it waited, for the host's recurrence when the next mark is a DECODING, for the next batch
when it is a START. A GPU event completes when the GPU reaches it, so the time from a mark queued
after some work to the next mark is the GPU waiting whenever the host queued the second mark only
after that work was done. One timeline rather than one batch at a time, because the GPU thread may
queue the next batch's encoder before this batch's decoder (`scheduler.py`): the intervals then
interleave. On the CPU there are no events and nothing is counted.

Session 14, the 4x H200 host under `/v1` load at 32 clients an instance (`benchmarks/results/`):
the GPU worked 80-87 % of the time with its instance alone and 77-81 % in a fleet of 4 through
nginx, with batches of about ten 5-second segments; 4-9 % went to the mid-batch wait.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

# The marks, in a batch's stream order: START and DECODING begin a piece of work, ENCODED and END
# end one (see the module's doc for the intervals between them).
START, ENCODED, DECODING, END = "start", "encoded", "decoding", "end"
_WORK_BEGINS = (START, DECODING)
# A gap before a batch longer than this had no work waiting (an idle instance), not a slow host:
# under load a batch takes tens of milliseconds, and the host's share of it a few.
IDLE_GAP_S = 0.25


class GpuClock:
    """Seconds of GPU time, from one timeline of marks in stream order.

    work_s: from each START or DECODING to the next mark;
    cif_wait_s: the GPU idle until the host queued a decoder's work (after its recurrence);
    between_s: the GPU idle until the host queued the next batch's encoder, while it chose and
    padded that batch (gaps up to IDLE_GAP_S);
    idle_s: longer gaps before a batch: nothing to run.
    A batch that records a CUDA graph (`graphs.py`) counts its recording as work.
    """

    def __init__(self) -> None:
        self.batches = 0  # batches whose END has been counted
        self.work_s = 0.0
        self.cif_wait_s = 0.0
        self.between_s = 0.0
        self.idle_s = 0.0
        # Queued by the GPU thread, counted by the host thread (deque's append and popleft are
        # atomic, so neither locks).
        self._queued: deque[tuple[str, torch.cuda.Event]] = deque()
        self._last: tuple[str, torch.cuda.Event] | None = None  # the last mark counted

    def mark(self, name: str, device: torch.device) -> torch.cuda.Event | None:
        """A timed event `name` here in the current stream, on the timeline; None on the CPU."""
        event = record_event(device, timing=True)
        if event is not None:
            self.queue(name, event)
        return event

    def queue(self, name: str, event: torch.cuda.Event) -> None:
        """Put an event already recorded on the timeline (in stream order: by the GPU thread)."""
        self._queued.append((name, event))

    def count(self, end: torch.cuda.Event) -> None:
        """Add up the intervals between the marks queued up to `end`: a batch's END mark, which
        has completed, and so have all marks before it on the stream."""
        while self._queued:
            name, event = self._queued.popleft()
            if self._last is not None:
                self._add(self._last[0], name, _seconds(self._last[1], event))
            self._last = (name, event)
            if event is end:
                self.batches += 1
                return

    def _add(self, before: str, after: str, seconds: float) -> None:
        if before in _WORK_BEGINS:
            self.work_s += seconds
        elif after == DECODING:
            self.cif_wait_s += seconds
        elif seconds <= IDLE_GAP_S:
            self.between_s += seconds
        else:
            self.idle_s += seconds

    def as_dict(self) -> dict[str, float]:
        return {
            "gpu_work_s": round(self.work_s, 4),
            "gpu_cif_wait_s": round(self.cif_wait_s, 4),
            "gpu_between_s": round(self.between_s, 4),
            "gpu_idle_s": round(self.idle_s, 4),
        }


@dataclass
class BatchMarks:
    """One batch's timed events on the current stream of `device`, by name, each also on `clock`'s
    timeline when given; none on the CPU."""

    device: torch.device
    clock: GpuClock | None = None
    events: dict[str, torch.cuda.Event] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        if self.clock is not None:
            event = self.clock.mark(name, self.device)
        else:
            event = record_event(self.device, timing=True)
        if event is not None:
            self.events[name] = event


def record_event(device: torch.device, timing: bool = False) -> torch.cuda.Event | None:
    """On a GPU, an event at this point of the current stream, timed if asked; a thread that waits
    for it sleeps (as `device.set_gpu_wait` makes the other waits). None on the CPU: nothing to
    wait for."""
    if device.type != "cuda":
        return None
    event = torch.cuda.Event(enable_timing=timing, blocking=True)
    event.record(torch.cuda.current_stream(device))
    return event


def _seconds(first: torch.cuda.Event, second: torch.cuda.Event) -> float:
    return max(0.0, first.elapsed_time(second) / 1000.0)
