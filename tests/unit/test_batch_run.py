"""`batch.run.until_done_or_interrupted`: Ctrl-C stops a batch every time, and only Ctrl-C does."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from asrfleet.batch.run import Interrupted, until_done_or_interrupted


def run(coroutine_function) -> object:
    return asyncio.run(coroutine_function())


def test_ctrl_c_cancels_the_workers_and_raises_interrupted():
    cancelled = []

    async def slow(i: int) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(i)
            raise

    async def batch() -> None:
        workers = [asyncio.create_task(slow(i)) for i in range(3)]
        asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGINT)
        await until_done_or_interrupted(workers)

    with pytest.raises(Interrupted):
        run(batch)
    assert sorted(cancelled) == [0, 1, 2]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # a second Ctrl-C: Python's


def test_a_worker_that_swallows_its_cancellation_does_not_hide_the_interrupt():
    async def stubborn() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return  # as a library under a worker might

    async def batch() -> None:
        asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGINT)
        await until_done_or_interrupted([asyncio.create_task(stubborn())])

    with pytest.raises(Interrupted):
        run(batch)


def test_without_ctrl_c_the_workers_finish_and_their_failure_is_raised():
    async def quick() -> None:
        await asyncio.sleep(0.01)

    async def broken() -> None:
        raise RuntimeError("a worker's bug")

    async def finishes() -> None:
        await until_done_or_interrupted([asyncio.create_task(quick()) for _ in range(3)])

    async def fails() -> None:
        await until_done_or_interrupted([asyncio.create_task(quick()), asyncio.create_task(broken())])

    run(finishes)
    with pytest.raises(RuntimeError, match="a worker's bug"):
        run(fails)
