"""Turns on the engine process's GIL: the host thread's Python waits while the GPU thread works.

Two threads of the engine need the GIL for every batch. The GPU thread chooses and pads the next
batch, runs the integrate-and-fire recurrence in the middle of each batch and launches the graphs;
while it does, the GPU has nothing queued and waits (`gpu_clock.py`). The host thread turns the
last batch into text, 6-9 ms of Python for ten segments. Whenever both are runnable, Python hands
the GIL from one to the other every switch interval, so each runs at about half speed; and the
host thread wakes exactly when the GPU finishes a batch, which is when the GPU thread, unless it
has the next batch queued already, is all that the GPU waits for. Under load on the 4x H200 host
the GPU waited a fifth of the time, and the host thread held the GIL 12-18 % of it (session 14,
`benchmarks/results/engine_gil_h200x4.txt`).

So the GPU thread says when it sleeps (waiting for the GPU, for work, or for the host thread to
catch up), and the host thread runs each segment's Python only then, or once it has waited
`patience_s` for its turn: a segment takes well under a millisecond, so the GPU thread never waits
long for the GIL, nor a transcript long for its text.

Measured against the engine before (session 14, the same 4x H200 host, `turns_ab_h200x4.txt`): the
GPU's wait between batches halved (3.4-4.5 to 1.8-2.4 ms a batch) and the GPU thread's cycle
shortened by 2-4 ms; throughput stayed within the measurements' spread, since with a fixed number
of clients a shorter cycle means smaller batches.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

PATIENCE_S = 0.002


class Turns:
    def __init__(self, patience_s: float = PATIENCE_S) -> None:
        self.patience_s = patience_s
        self._gpu_thread_asleep = threading.Event()
        self._gpu_thread_asleep.set()  # until it runs a batch
        # Whether the host thread is inside a piece of its work: read by the GPU thread as it wakes
        # (then holding the GIL), to count the wake-ups that found the host thread mid-piece.
        self.host_working = False

    @contextmanager
    def gpu_thread_sleeps(self) -> Iterator[None]:
        """Around a wait of the GPU thread's: the host thread may run meanwhile."""
        self._gpu_thread_asleep.set()
        try:
            yield
        finally:
            self._gpu_thread_asleep.clear()

    def host_turn(self) -> None:
        """Before a piece of the host thread's work: wait until the GPU thread sleeps, or at most
        `patience_s`."""
        self._gpu_thread_asleep.wait(self.patience_s)

    @contextmanager
    def host_piece(self) -> Iterator[None]:
        """Around a piece of the host thread's work: its turn first (`host_turn`)."""
        self.host_turn()
        self.host_working = True
        try:
            yield
        finally:
            self.host_working = False
