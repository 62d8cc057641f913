"""Where the GPU's time goes: working, or waiting for the host inside and between batches.

The GPU thread's own clock (`SchedulerStats.busy_s`) says how long it spent on batches, not how
long the GPU did: an instance can keep its GPU thread 97 % busy and its GPU less, because the GPU
waits whenever the host has not yet queued the next piece of work. A batch waits for the host at
two points: in the middle, while the host runs the integrate-and-fire recurrence on the
predictor's weights (`recognize.py`), and between batches, while the GPU thread chooses and pads
the next one. When the host's CPUs are slower (four instances on one host), these waits are
what grows.

Each batch marks the GPU's stream with timed CUDA events at those points (`BatchMarks`); the host
thread, which waits for each batch's end anyway, adds up the intervals (`GpuClock.add`). A GPU
event completes when the GPU reaches it, so the time from a mark queued after some work to the next
mark is the GPU waiting whenever the host queued the second mark only after that work was done.
On the CPU there are no events and nothing is counted.

Session 14, the 4x H200 host under `/v1` load at 32 clients an instance (`benchmarks/results/`):
the GPU worked 80-87 % of the time with its instance alone and 77-81 % in a fleet of 4 through
nginx, with batches of about ten 5-second segments; 4-9 % went to the mid-batch wait.

The mid-batch wait, taken apart (session 25: in a quarter of the measurements one instance's GPU
waited 5-9 % of the time there, in the others 0 %, with the same CPU time a batch, and neither a
spinning wait nor throttling the host thread changed that). Between the predictor's weights
reaching the host (WEIGHTS) and the end of the work queued behind them (ENCODED, the timestamp
head) the host must wake (WOKE) and run the recurrence (until DECODING). The clock adds up, per
batch: the GPU work that covers the host (`cover_s`), the host's wall and CPU time from WOKE to
DECODING (`cif_host_s`, `cif_host_cpu_s`), and, in batches whose GPU waited, how late the GPU
thread ran again after the weights came (`late_s` = wait + cover - host wall; its waking up and
taking the GIL back). So a slow batch shows whether its host woke late, ran long while using the
same CPU (it waited inside), or needed more CPU. It also counts the batches whose GPU thread woke
while the host thread was in the middle of a segment's text (`turns.py`), which it must then share
the GIL with, and of those, the ones whose GPU waited.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

# The marks of a batch, in stream order: the intervals between consecutive ones are named below.
START, WEIGHTS, ENCODED, DECODING, END = "start", "weights", "encoded", "decoding", "end"
# On the host only: the GPU thread runs again after waiting for the predictor's weights.
WOKE = "woke"
# A gap between batches longer than this had no work waiting (an idle instance), not a slow host:
# under load a batch takes tens of milliseconds, and the host's share of it a few.
IDLE_GAP_S = 0.25


@dataclass
class BatchMarks:
    """Timed events on the current stream of `device`, by name, and the host's clocks (wall,
    thread CPU) when each was queued or noted; nothing on the CPU."""

    device: torch.device
    events: dict[str, torch.cuda.Event] = field(default_factory=dict)
    host: dict[str, tuple[float, float]] = field(default_factory=dict)
    woke_into_host: bool = False  # at WOKE the host thread was inside a piece of its work

    def mark(self, name: str) -> None:
        """A timed event `name` here in the stream (`record_event`), and the host's clocks."""
        event = record_event(self.device, timing=True)
        if event is not None:
            self.events[name] = event
            self.note(name)

    def note(self, name: str) -> None:
        """The host's clocks now, as `name`."""
        if self.device.type == "cuda":
            self.host[name] = (time.perf_counter(), time.thread_time())


@dataclass
class GpuClock:
    """Seconds of GPU time over all batches, read from their marks once each batch is done.

    work_s: from each batch's start to its end, less the wait in its middle;
    cif_wait_s: the GPU idle in a batch's middle, until the host queued the decoder's work;
    between_s: the GPU idle from one batch's end to the next one's start, while the host chose and
    padded the next batch (gaps up to IDLE_GAP_S);
    idle_s: longer gaps between batches: nothing to run.
    The mid-batch wait taken apart (the module's doc): cover_s, cif_host_s, cif_host_cpu_s, and
    late_s over the `waited` batches whose GPU waited there.
    A batch that records a CUDA graph (`graphs.py`) counts its recording as work.
    """

    batches: int = 0
    work_s: float = 0.0
    cif_wait_s: float = 0.0
    between_s: float = 0.0
    idle_s: float = 0.0
    cover_s: float = 0.0
    cif_host_s: float = 0.0
    cif_host_cpu_s: float = 0.0
    late_s: float = 0.0
    waited: int = 0
    woke_into_host: int = 0  # batches whose GPU thread woke while the host thread was mid-piece
    waited_into_host: int = 0  # those of them whose GPU waited
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
        self._take_apart(marks, wait)
        if self._last_end is not None:
            gap = _seconds(self._last_end, events[START])
            if gap <= IDLE_GAP_S:
                self.between_s += gap
            else:
                self.idle_s += gap
        self._last_end = events[END]

    def _take_apart(self, marks: BatchMarks, wait: float) -> None:
        """The mid-batch wait's parts, for a batch with every mark and note they need."""
        events, host = marks.events, marks.host
        if not all(name in events for name in (WEIGHTS, ENCODED, DECODING)):
            return
        if WOKE not in host or DECODING not in host:
            return
        cover = _seconds(events[WEIGHTS], events[ENCODED])
        host_s = host[DECODING][0] - host[WOKE][0]
        self.cover_s += cover
        self.cif_host_s += host_s
        self.cif_host_cpu_s += host[DECODING][1] - host[WOKE][1]
        self.woke_into_host += marks.woke_into_host
        if wait > 0.0:
            self.waited += 1
            self.waited_into_host += marks.woke_into_host
            self.late_s += max(0.0, wait + cover - host_s)

    def as_dict(self) -> dict[str, float]:
        return {
            "gpu_work_s": round(self.work_s, 4),
            "gpu_cif_wait_s": round(self.cif_wait_s, 4),
            "gpu_between_s": round(self.between_s, 4),
            "gpu_idle_s": round(self.idle_s, 4),
            "gpu_cif_cover_s": round(self.cover_s, 4),
            "cif_host_s": round(self.cif_host_s, 4),
            "cif_host_cpu_s": round(self.cif_host_cpu_s, 4),
            "cif_late_s": round(self.late_s, 4),
            "cif_waited_batches": self.waited,
            "cif_woke_into_host_batches": self.woke_into_host,
            "cif_waited_into_host_batches": self.waited_into_host,
        }


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
