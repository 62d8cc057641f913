"""Batch formation across requests: budget, fairness, and surviving GPU out-of-memory."""

from __future__ import annotations

import threading
import time

import numpy as np

from asrfleet.engines.funasr.scheduler import BatchScheduler, Budget, _Queue, _Segment, select_batch
from asrfleet.engines.funasr.segments import SegmentText


def seg(key: str, index: int, frames: int) -> _Segment:
    return _Segment(key, index, np.zeros((frames, 4), dtype=np.float32))


def queues(spec: dict[str, tuple[float, float, list[int]]]) -> dict[str, _Queue]:
    """key -> (arrival, priority, segment frame counts)"""
    return {
        k: _Queue(arrival=a, priority=p, segments=[seg(k, i, f) for i, f in enumerate(fs)])
        for k, (a, p, fs) in spec.items()
    }


def test_budget_counts_padding():
    qs = queues({"a": (0, 1, [10, 10, 10, 100])})
    batch = select_batch(qs, Budget(max_frames=100))
    assert sorted(s.frames for s in batch) == [10, 10, 10]  # + the 100 would cost 4 x 100


def test_a_segment_over_budget_still_runs_alone():
    batch = select_batch(queues({"a": (0, 1, [500])}), Budget(max_frames=100))
    assert [s.frames for s in batch] == [500]


def test_short_request_goes_before_a_long_one():
    qs = queues({"long": (0.0, 10800.0, [300] * 50), "short": (5.0, 3.0, [200])})
    batch = select_batch(qs, Budget(max_frames=600))
    keys = [s.key for s in batch]
    assert "short" in keys
    assert keys.count("long") == 1  # the oldest request still gets its segment


def test_oldest_request_always_progresses():
    qs = queues({"long": (0.0, 10800.0, [100] * 10)})
    qs.update(queues({f"s{i}": (1.0 + i, 2.0, [50]) for i in range(100)}))
    batch = select_batch(qs, Budget(max_frames=1000))
    assert any(s.key == "long" for s in batch)


def test_item_cap():
    qs = queues({"a": (0, 1, [1] * 50)})
    assert len(select_batch(qs, Budget(max_frames=10**6, max_items=8))) == 8


def run_scheduler(recognize, budget, items):
    done = threading.Event()
    got: dict[int, SegmentText] = {}

    def on_results(key, results):
        got.update(results)
        if len(got) == len(items):
            done.set()

    errors = []
    s = BatchScheduler(recognize, budget, on_results, lambda key, err: (errors.append(err), done.set()))
    s.start()
    s.add("job", 1.0, items)
    assert done.wait(10)
    s.stop()
    return got, errors, s


def test_out_of_memory_splits_the_batch_and_lowers_the_budget():
    calls = []

    def recognize(feats):
        calls.append(len(feats))
        if len(feats) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        results = [SegmentText(str(f.shape[0]), []) for f in feats]
        return lambda: results

    items = [(i, np.zeros((10 + i, 4), dtype=np.float32)) for i in range(8)]
    got, errors, s = run_scheduler(recognize, Budget(max_frames=10**6), items)
    assert not errors
    assert {i: r.text for i, r in got.items()} == {i: str(10 + i) for i in range(8)}
    assert s.stats.oom_splits >= 1 and s.budget.max_frames < 10**6


def test_a_failing_batch_fails_its_request_not_the_scheduler():
    def recognize(feats):
        raise ValueError("boom")

    got, errors, s = run_scheduler(recognize, Budget(max_frames=10**6), [(0, np.zeros((5, 4), np.float32))])
    assert not got and isinstance(errors[0], ValueError)


def test_a_failing_host_part_fails_its_request_not_the_scheduler():
    def recognize(feats):
        def finish():
            if feats[0].shape[0] == 5:
                raise KeyError("a token the tokenizer does not know")
            return [SegmentText("fine", [])]

        return finish

    failed, answered = threading.Event(), threading.Event()
    errors, got = [], {}
    s = BatchScheduler(
        recognize,
        Budget(max_frames=10**6),
        lambda key, items: (got.update({key: items}), answered.set()),
        lambda key, err: (errors.append((key, err)), failed.set()),
    )
    s.start()
    try:
        s.add("bad", 1.0, [(0, np.zeros((5, 4), np.float32))])
        assert failed.wait(10)
        s.add("good", 1.0, [(0, np.zeros((6, 4), np.float32))])
        assert answered.wait(10)
    finally:
        s.stop()
    assert [(key, type(err)) for key, err in errors] == [("bad", KeyError)]
    assert got == {"good": [(0, SegmentText("fine", []))]}
    assert s.stats.batches == 2


def test_the_gpu_runs_the_next_batch_while_the_host_finishes_the_last():
    """The host's part of batch 1 waits until the GPU's part of batch 2 has run: in one thread
    that would never happen."""
    second_ran = threading.Event()
    gpu_thread = []

    def recognize(feats):
        gpu_thread.append(threading.current_thread().name)
        if len(gpu_thread) == 2:
            second_ran.set()
        results = [SegmentText(str(f.shape[0]), []) for f in feats]

        def finish():
            assert second_ran.wait(5), "the GPU thread waited for the host's part"
            return results

        return finish

    # one segment per batch: two segments of 6 frames each are over a budget of 10
    items = [(0, np.zeros((6, 4), np.float32)), (1, np.zeros((6, 4), np.float32))]
    got, errors, s = run_scheduler(recognize, Budget(max_frames=10), items)
    assert not errors
    assert {i: r.text for i, r in got.items()} == {0: "6", 1: "6"}
    assert gpu_thread == ["gpu-batches", "gpu-batches"]
    assert s.stats.batches == 2 and s.stats.host_busy_s > 0


def test_the_gpu_threads_cpu_time_tells_work_from_waiting():
    def working(feats):
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass
        return lambda: [SegmentText("", []) for _ in feats]

    def waiting(feats):
        time.sleep(0.05)  # as for the GPU, or for the GIL
        return lambda: [SegmentText("", []) for _ in feats]

    items = [(0, np.zeros((6, 4), np.float32))]
    worked = run_scheduler(working, Budget(max_frames=10), items)[2].stats
    waited = run_scheduler(waiting, Budget(max_frames=10), items)[2].stats
    assert worked.cpu_s >= 0.05 and worked.busy_s >= 0.05
    assert waited.cpu_s < 0.02 and waited.busy_s >= 0.05


def test_the_host_threads_busy_time_counts_its_whole_part():
    def recognize(feats):
        def finish():
            time.sleep(0.05)  # as for the batch's end on the GPU
            end = time.thread_time() + 0.03
            while time.thread_time() < end:  # the segments' text
                pass
            return [SegmentText("", []) for _ in feats]

        return finish

    stats = run_scheduler(recognize, Budget(max_frames=10), [(0, np.zeros((6, 4), np.float32))])[2].stats
    assert stats.host_busy_s >= 0.08
