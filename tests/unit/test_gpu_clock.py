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
    WOKE,
    BatchMarks,
    GpuClock,
)


@dataclass
class FakeEvent:
    """A completed CUDA event at `ms` on the GPU's clock."""

    ms: float

    def elapsed_time(self, other: FakeEvent) -> float:
        return other.ms - self.ms


def marks(host: dict[str, tuple[float, float]] | None = None, **at_ms: float) -> BatchMarks:
    """Events at `at_ms` on the GPU's clock; `host`: the host's (wall, CPU) seconds by mark."""
    names = {"start": START, "weights": WEIGHTS, "encoded": ENCODED, "decoding": DECODING, "end": END}
    out = BatchMarks(torch.device("cuda"))
    out.events = {names[name]: FakeEvent(ms) for name, ms in at_ms.items()}
    out.host = dict(host or {})
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
        "gpu_cif_cover_s": 0.0,
        "cif_host_s": 0.0,
        "cif_host_cpu_s": 0.0,
        "cif_late_s": 0.0,
        "cif_waited_batches": 0,
        "cif_woke_into_host_batches": 0,
        "cif_waited_into_host_batches": 0,
    }


def test_the_mid_batch_wait_taken_apart():
    clock = GpuClock()
    # The timestamp head covers 5 ms (weights at 5, encoded at 10); the host ran 2 ms (1 ms of CPU)
    # from waking to queuing the decoder, and the GPU still waited 3 ms: it woke 6 ms late.
    late = {WOKE: (100.0, 7.0), DECODING: (100.002, 7.001)}
    clock.add(marks(late, start=0.0, weights=5.0, encoded=10.0, decoding=13.0, end=20.0))
    # In time: 1 ms of host work inside 5 ms of cover, no wait, nothing late counted.
    in_time = {WOKE: (200.0, 8.0), DECODING: (200.001, 8.001)}
    clock.add(marks(in_time, start=20.0, weights=25.0, encoded=30.0, decoding=30.0, end=40.0))
    # Without the host's notes (an eager batch), the parts are not counted.
    clock.add(marks(start=40.0, weights=45.0, encoded=50.0, decoding=52.0, end=60.0))
    assert (clock.woke_into_host, clock.waited_into_host) == (0, 0)
    # Woke while the host thread was mid-segment, and waited: counted as both.
    into = marks(late, start=60.0, weights=65.0, encoded=70.0, decoding=73.0, end=80.0)
    into.woke_into_host = True
    clock.add(into)
    assert (clock.woke_into_host, clock.waited_into_host, clock.waited) == (1, 1, 2)
    assert abs(clock.cover_s - 0.015) < 1e-9
    assert abs(clock.cif_host_s - 0.005) < 1e-6
    assert abs(clock.cif_host_cpu_s - 0.003) < 1e-6
    assert abs(clock.late_s - 0.012) < 1e-6
    assert abs(clock.cif_wait_s - 0.008) < 1e-9  # every wait, the eager batch's too


def test_the_host_notes_its_clocks_only_beside_a_gpu():
    gpu, cpu = BatchMarks(torch.device("cuda")), BatchMarks(torch.device("cpu"))
    gpu.note(WOKE)
    cpu.note(WOKE)
    assert set(gpu.host) == {WOKE} and cpu.host == {}


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
