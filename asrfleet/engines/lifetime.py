"""Child processes that die with their parent, however the parent dies (SIGKILL included).

The engine process and its audio workers ignore SIGTERM and SIGINT on purpose (a signal to the
whole process group must not kill them under a request that is finishing), and nothing tells them
that their parent is gone: a worker busy with a long file reads nothing, and once done it blocks
for ever writing its results into a queue that nobody reads. Left behind, each holds its models'
memory (hundreds of megabytes) until someone finds it by hand.

So each child calls `die_with_parent` first thing. On Linux it asks the kernel for SIGKILL when its
parent dies (prctl PR_SET_PDEATHSIG): that works whatever the child is doing, even stopped or in a
C call that holds the GIL. The setting is not inherited: a child that starts children of its own
has them ask too. Elsewhere a daemon thread polls getppid() and exits the process; it needs the
GIL for a moment each second, so a C call that holds the GIL longer delays the exit.

Caveat: the kernel sends the signal when the *thread* that started the child exits, not the whole
parent process. A child started from a thread that ends before the parent does (a loader thread,
a watcher thread that a bug ends) would be killed early. `start_tied` therefore starts each child
from a thread of its own that lives exactly as long as the child.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 1.0
EXIT_ORPHANED = 70  # nobody reads it (the parent is gone): for a tracer or a core dump


def die_with_parent(parent_pid: int) -> None:
    """End this process as soon as `parent_pid`, its parent, ends.

    `parent_pid` comes from the parent itself: os.getppid() read here could already name the
    process that adopted us, if the parent died while this one started.
    """
    if not _ask_the_kernel():
        watch_parent(parent_pid)
    # Asked too late, the kernel never signals: the parent may have died before the prctl.
    if os.getppid() != parent_pid:
        os._exit(EXIT_ORPHANED)


def watch_parent(parent_pid: int, interval_s: float = POLL_S) -> threading.Thread:
    """The portable fallback: a daemon thread that exits the process once it is orphaned.

    os._exit, not sys.exit: a normal exit would join multiprocessing's queue feeder threads,
    which wait for ever to write into a pipe that nobody reads any more.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os._exit(EXIT_ORPHANED)

    thread = threading.Thread(target=watch, name="watch-parent", daemon=True)
    thread.start()
    return thread


def _ask_the_kernel() -> bool:
    """Whether the kernel now sends us SIGKILL when our parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return False
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0


def start_tied(process: BaseProcess) -> None:
    """`process.start()`, from a new thread that then waits until the process ends.

    Whoever calls this may be a short-lived thread: the kernel's parent-death signal is tied to
    the starting thread (see the module's docstring). The keeper only waits on a copy of the
    process's sentinel; it reaps nothing, so join() and exitcode work as before, from any thread.
    Raises what `start()` raised.
    """
    started: Future[int] = Future()

    def keep() -> None:
        try:
            process.start()
            sentinel = os.dup(process.sentinel)  # a copy: Process.close() may close the original
        except BaseException as err:  # handed to the caller, whose process it is
            started.set_exception(err)
            return
        started.set_result(sentinel)
        try:
            wait([sentinel])
        finally:
            os.close(sentinel)

    threading.Thread(target=keep, name=f"keep-{process.name}", daemon=True).start()
    started.result()
