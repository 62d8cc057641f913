"""The GPU clock adds up the intervals between marks on one timeline: no GPU needed, events are faked."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asrfleet.engines.funasr.gpu_clock import DECODING, ENCODED, END, START, BatchMarks, GpuClock


@dataclass(eq=False)
class FakeEvent:
    """A completed CUDA event at `ms` on the GPU's clock."""

    ms: float

    def elapsed_time(self, other: FakeEvent) -> float:
        return other.ms - self.ms


NAMES = {"s": START, "e": ENCODED, "d": DECODING, "n": END}


def queue(clock: GpuClock, *marks: tuple[str, float]) -> FakeEvent:
    """Queue marks ("s", ms) ... in stream order; the last one's event."""
    event = FakeEvent(0.0)
    for name, ms in marks:
        event = FakeEvent(ms)
        clock.queue(NAMES[name], event)
    return event


def test_work_mid_batch_wait_and_gaps_between_batches():
    clock = GpuClock()
    clock.count(queue(clock, ("s", 0.0), ("e", 10.0), ("d", 13.0), ("n", 20.0)))  # waited 3 ms for the CIF
    clock.count(queue(clock, ("s", 25.0), ("n", 40.0)))  # an eager batch: no mid-batch marks; 5 ms gap before
    clock.count(queue(clock, ("s", 40.0), ("e", 50.0), ("d", 50.0), ("n", 60.0)))  # queued in time: no waits
    assert clock.batches == 3
    assert abs(clock.work_s - (0.017 + 0.015 + 0.020)) < 1e-9
    assert abs(clock.cif_wait_s - 0.003) < 1e-9
    assert abs(clock.between_s - 0.005) < 1e-9
    assert clock.as_dict() == {
        "gpu_work_s": 0.052,
        "gpu_cif_wait_s": 0.003,
        "gpu_between_s": 0.005,
        "gpu_idle_s": 0.0,
    }


def test_interleaved_batches_count_each_interval_once():
    """The GPU thread queued batch 2's encoder before batch 1's decoder (`scheduler.py`)."""
    clock = GpuClock()
    first_end = queue(clock, ("s", 0.0), ("e", 10.0), ("s", 12.0), ("e", 22.0), ("d", 25.0), ("n", 30.0))
    second_end = queue(clock, ("s", 31.0), ("e", 41.0), ("d", 41.0), ("n", 46.0))
    clock.count(first_end)
    assert clock.batches == 1
    assert abs(clock.work_s - 0.025) < 1e-9  # encoders 10 + 10, decoder 5
    assert abs(clock.between_s - 0.002) < 1e-9  # before the second encoder
    assert abs(clock.cif_wait_s - 0.003) < 1e-9  # from the second encoder's end to the first decoder
    clock.count(second_end)
    assert clock.batches == 2
    assert abs(clock.work_s - 0.040) < 1e-9  # + the third encoder 10, the second decoder 5
    assert abs(clock.between_s - 0.003) < 1e-9
    assert abs(clock.cif_wait_s - 0.003) < 1e-9
    assert abs(clock.work_s + clock.between_s + clock.cif_wait_s - 0.046) < 1e-9  # the whole span, once


def test_a_long_gap_is_an_idle_gpu_not_a_slow_host():
    clock = GpuClock()
    clock.count(queue(clock, ("s", 0.0), ("n", 20.0)))
    clock.count(queue(clock, ("s", 30.0), ("n", 50.0)))  # 10 ms: the host was preparing this batch
    clock.count(queue(clock, ("s", 2050.0), ("n", 2070.0)))  # 2 s: nothing came to run
    assert abs(clock.between_s - 0.010) < 1e-9
    assert abs(clock.idle_s - 2.0) < 1e-9


def test_a_failed_batch_s_marks_count_with_the_next_batch():
    clock = GpuClock()
    queue(clock, ("s", 0.0), ("e", 10.0))  # its decoder failed: no END
    assert clock.batches == 0 and clock.work_s == 0.0
    clock.count(queue(clock, ("s", 12.0), ("e", 20.0), ("d", 21.0), ("n", 25.0)))
    assert clock.batches == 1
    assert abs(clock.work_s + clock.between_s + clock.cif_wait_s - 0.025) < 1e-9


def test_batch_marks_go_on_their_clock_s_timeline():
    marks = BatchMarks(torch.device("cuda"), GpuClock())
    recorded = []
    marks.clock.mark = lambda name, device: recorded.append(name) or FakeEvent(len(recorded))
    marks.mark(START)
    marks.mark(END)
    assert recorded == [START, END] and set(marks.events) == {START, END}


def test_on_the_cpu_nothing_is_marked():
    clock = GpuClock()
    cpu = BatchMarks(torch.device("cpu"), clock)
    cpu.mark(START)
    assert cpu.events == {}
    assert clock.mark(END, torch.device("cpu")) is None
    assert clock.batches == 0
