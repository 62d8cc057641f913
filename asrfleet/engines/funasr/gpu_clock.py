"""Where the GPU's time goes: working, or waiting for the host inside and between batches.

The GPU thread's own clock (`SchedulerStats.busy_s`) says how long it spent on batches, not how
long the GPU did: the GPU waits whenever the host has not yet queued the next piece of work. A
batch waits for the host at two points: in the middle, while the host runs the integrate-and-fire
recurrence on the predictor's weights (`recognize.py`), and between batches, while the GPU thread
chooses and pads the next one. When the host's CPUs are slower or busier (several instances on
one host), these waits are what grows.

Each batch marks the GPU's stream with timed CUDA events at those points (`BatchMarks`); the host
thread, which waits for each batch's end anyway, adds up the intervals (`GpuClock.add`). A GPU
event completes when the GPU reaches it, so the time from a mark queued after some work to the next
mark is the GPU waiting whenever the host queued the second mark only after that work was done.
On the CPU there are no events and nothing is counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# The marks of a batch, in stream order. WEIGHTS: the predictor's weights are copied to the host
# (the GPU thread waits for this mark before the recurrence); from ENCODED to DECODING the GPU has
# nothing queued until the host has run the recurrence.
START, WEIGHTS, ENCODED, DECODING, END = "start", "weights", "encoded", "decoding", "end"
# A gap between batches longer than this had no work waiting (an idle instance), not a slow host:
# under load a batch takes tens of milliseconds, and the host's share of it a few.
IDLE_GAP_S = 0.25


@dataclass
class BatchMarks:
    """Timed events on the current stream of `device`, by name; nothing on the CPU."""

    device: torch.device
    events: dict[str, torch.cuda.Event] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        """A timed event `name` here in the stream (`record_event`)."""
        event = record_event(self.device, timing=True)
        if event is not None:
            self.events[name] = event


@dataclass
class GpuClock:
    """Seconds of GPU time over all batches, read from their marks once each batch is done.

    work_s: from each batch's start to its end, less the wait in its middle;
    cif_wait_s: the GPU idle in a batch's middle, until the host queued the decoder's work;
    between_s: the GPU idle from one batch's end to the next one's start, while the host chose and
    padded the next batch (gaps up to IDLE_GAP_S);
    idle_s: longer gaps between batches: nothing to run.
    A batch that records a CUDA graph (`graphs.py`) counts its recording as work.
    """

    batches: int = 0
    work_s: float = 0.0
    cif_wait_s: float = 0.0
    between_s: float = 0.0
    idle_s: float = 0.0
    _last_end: torch.cuda.Event | None = None

    def add(self, marks: BatchMarks) -> None:
        """Count a batch whose end mark has completed (called in batch order, by one thread)."""
        events = marks.events
        if START not in events or END not in events:
            return
        span = _seconds(events[START], events[END])
        wait = 0.0
        if ENCODED in events and DECODING in events:
            wait = _seconds(events[ENCODED], events[DECODING])
        self.batches += 1
        self.work_s += span - wait
        self.cif_wait_s += wait
        if self._last_end is not None:
            gap = _seconds(self._last_end, events[START])
            if gap <= IDLE_GAP_S:
                self.between_s += gap
            else:
                self.idle_s += gap
        self._last_end = events[END]

    def as_dict(self) -> dict[str, float]:
        return {
            "gpu_work_s": round(self.work_s, 4),
            "gpu_cif_wait_s": round(self.cif_wait_s, 4),
            "gpu_between_s": round(self.between_s, 4),
            "gpu_idle_s": round(self.idle_s, 4),
        }


def record_event(device: torch.device, timing: bool = False) -> torch.cuda.Event | None:
    """On a GPU, an event at this point of the current stream, timed if asked; a thread that waits
    for it sleeps (as `device.set_blocking_sync` makes the other waits). None on the CPU: nothing
    to wait for."""
    if device.type != "cuda":
        return None
    event = torch.cuda.Event(enable_timing=timing, blocking=True)
    event.record(torch.cuda.current_stream(device))
    return event


def _seconds(first: torch.cuda.Event, second: torch.cuda.Event) -> float:
    return max(0.0, first.elapsed_time(second) / 1000.0)
