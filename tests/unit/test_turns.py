"""The host thread's turns on the GIL: it waits while the GPU thread works, at most its patience."""

from __future__ import annotations

import threading
import time

from asrfleet.engines.funasr.turns import Turns


def test_the_host_goes_at_once_while_the_gpu_thread_sleeps():
    turns = Turns(patience_s=5.0)
    started = time.perf_counter()
    turns.host_turn()  # nothing has run yet: asleep
    with turns.gpu_thread_sleeps():
        turns.host_turn()
    assert time.perf_counter() - started < 1.0


def test_the_host_waits_its_patience_while_the_gpu_thread_works():
    turns = Turns(patience_s=0.05)
    with turns.gpu_thread_sleeps():
        pass  # the GPU thread woke up and works from here on
    started = time.perf_counter()
    turns.host_turn()
    assert time.perf_counter() - started >= 0.045


def test_the_host_goes_as_soon_as_the_gpu_thread_sleeps_again():
    turns = Turns(patience_s=30.0)
    with turns.gpu_thread_sleeps():
        pass
    asleep = threading.Event()
    release = threading.Event()

    def gpu_thread() -> None:
        time.sleep(0.05)
        with turns.gpu_thread_sleeps():
            asleep.set()
            release.wait(5)

    worker = threading.Thread(target=gpu_thread)
    worker.start()
    started = time.perf_counter()
    turns.host_turn()
    waited = time.perf_counter() - started
    release.set()
    worker.join()
    assert asleep.is_set() and 0.03 < waited < 10.0


def test_a_host_piece_says_the_host_thread_is_working_until_it_ends():
    turns = Turns(patience_s=5.0)
    assert not turns.host_working
    with turns.host_piece():  # the GPU thread has not run yet: the host goes at once
        assert turns.host_working
    assert not turns.host_working
    try:
        with turns.host_piece():
            raise ValueError("a segment that fails")
    except ValueError:
        pass
    assert not turns.host_working
