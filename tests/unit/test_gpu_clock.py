"""The GPU clock adds up the intervals between a batch's marks: no GPU needed, events are faked."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asrfleet.engines.funasr.gpu_clock import (
    DECODING,
    ENCODED,
    END,
    START,
    WEIGHTS,
    BatchMarks,
    GpuClock,
)


@dataclass
class FakeEvent:
    """A completed CUDA event at `ms` on the GPU's clock."""

    ms: float

    def elapsed_time(self, other: FakeEvent) -> float:
        return other.ms - self.ms


def marks(**at_ms: float) -> BatchMarks:
    """Events at `at_ms` on the GPU's clock."""
    names = {"start": START, "weights": WEIGHTS, "encoded": ENCODED, "decoding": DECODING, "end": END}
    out = BatchMarks(torch.device("cuda"))
    out.events = {names[name]: FakeEvent(ms) for name, ms in at_ms.items()}
    return out


def test_work_mid_batch_wait_and_gaps_between_batches():
    clock = GpuClock()
    clock.add(marks(start=0.0, encoded=10.0, decoding=13.0, end=20.0))  # waited 3 ms for the CIF
    clock.add(marks(start=25.0, end=40.0))  # an eager batch: no mid-batch marks; 5 ms gap before it
    clock.add(marks(start=40.0, encoded=50.0, decoding=50.0, end=60.0))  # queued in time: no waits
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


def test_the_weights_mark_counts_as_work():
    """The weights' copy sits inside the encoding: the wait is from ENCODED to DECODING only."""
    clock = GpuClock()
    clock.add(marks(start=0.0, weights=5.0, encoded=10.0, decoding=13.0, end=20.0))
    assert abs(clock.work_s - 0.017) < 1e-9 and abs(clock.cif_wait_s - 0.003) < 1e-9


def test_a_long_gap_is_an_idle_gpu_not_a_slow_host():
    clock = GpuClock()
    clock.add(marks(start=0.0, end=20.0))
    clock.add(marks(start=30.0, end=50.0))  # 10 ms: the host was preparing this batch
    clock.add(marks(start=2050.0, end=2070.0))  # 2 s: nothing came to run
    assert abs(clock.between_s - 0.010) < 1e-9
    assert abs(clock.idle_s - 2.0) < 1e-9


def test_a_batch_without_its_end_mark_is_not_counted():
    clock = GpuClock()
    clock.add(marks(start=0.0, encoded=10.0))
    assert clock.batches == 0 and clock.work_s == 0.0


def test_on_the_cpu_nothing_is_marked():
    cpu = BatchMarks(torch.device("cpu"))
    cpu.mark(START)
    assert cpu.events == {}
    clock = GpuClock()
    clock.add(cpu)
    assert clock.batches == 0
