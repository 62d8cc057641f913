"""Worker processes that run `prepare.py`, and the messages they send back.

The parent hands each idle worker one file at a time on that worker's own task queue, so it
always knows which job a worker holds. Workers stream what they prepare back on one shared result
queue, tagged with the job's attempt (`segments.Attempt`). When a worker dies (FFmpeg crashing on
a hostile file, the OOM killer), the parent starts a new one and retries its job once, as the next
attempt, so the dead worker's messages are dropped; a job that kills a worker twice fails with a
clear error, and no other job is lost. Workers die with the process that started them, however it
dies, even in the middle of a file (`lifetime.py`).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import signal
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

from asrfleet.engines.funasr.prepare import Preparer, PrepareSettings
from asrfleet.engines.funasr.segments import Attempt, Features, Segmented
from asrfleet.engines.lifetime import die_with_parent, start_tied
from asrfleet.errors import AsrError, BadAudio
from asrfleet.gc_pauses import freeze_loaded

log = logging.getLogger(__name__)

_READY_TIMEOUT_S = 300.0
_MAX_ATTEMPTS = 2


@dataclass(frozen=True)
class Failed:
    """The job failed in a worker; `error` is the AsrError to raise to the user."""

    error: AsrError


@dataclass(frozen=True)
class Retrying:
    """The worker preparing this job died; it starts over on another: forget what it sent."""


Message = Segmented | Features | Failed | Retrying


WORKER_NICENESS = 5


def _worker_main(
    settings: PrepareSettings, tasks: mp.Queue, results: mp.Queue, worker_id: int, parent_pid: int
) -> None:
    """Entry point of a worker process: load once, then prepare files until told to stop."""
    # First, since we ignore SIGTERM: a worker left behind by a killed engine holds hundreds of
    # megabytes, and nothing else ends one that is busy with a file when the engine dies.
    die_with_parent(parent_pid)
    logging.basicConfig(level=logging.WARNING, format=f"[prepare-{worker_id}] %(levelname)s %(message)s")
    # The parent stops its workers itself, after its own requests; a signal to the whole process
    # group (supervisord's stopasgroup) must not kill them under a request that is finishing.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Below the web server and the GPU thread: where CPUs are short (a fleet on one host), a burst
    # of decoding must not keep them waiting, since they serve every request already prepared.
    os.nice(WORKER_NICENESS)
    preparer = Preparer(settings)
    freeze_loaded()  # a full collection over torch's objects would stall this worker's requests
    results.put(("ready", worker_id, None, None))
    while True:
        task = tasks.get()
        if task is None:
            return
        attempt, path = task
        for message in _prepare_messages(preparer, path):
            results.put(("message", worker_id, attempt, message))
        results.put(("idle", worker_id, None, None))


def _prepare_messages(preparer: Preparer, path: str) -> Iterator[Message]:
    try:
        yield from preparer.prepare(path)
    except AsrError as err:
        yield Failed(err)
    except Exception:  # a bug or a library failure: the job fails, the worker lives on
        log.error("preparing %s failed:\n%s", path, traceback.format_exc())
        yield Failed(BadAudio("this file could not be processed"))


@dataclass
class _Job:
    attempt: Attempt
    path: Path


class PreparePool:
    """`workers` processes preparing files; `on_message(job_id, message)` receives their output."""

    def __init__(self, settings: PrepareSettings, workers: int, on_message: Callable[[str, Message], None]):
        self.settings = settings
        self.on_message = on_message
        self.size = workers
        self._ctx = mp.get_context("spawn")  # never fork a process that holds CUDA or threads
        self._results: mp.Queue = self._ctx.Queue()
        self._procs: dict[int, mp.process.BaseProcess] = {}
        self._task_queues: dict[int, mp.Queue] = {}
        self._idle: deque[int] = deque()
        self._holding: dict[int, _Job] = {}  # worker id -> the job it works on
        self._attempts: dict[str, Attempt] = {}  # job id -> its current attempt, to drop stale messages
        self._waiting: deque[_Job] = deque()
        self._lock = threading.Lock()
        self._ready = threading.Semaphore(0)
        self._closed = False
        self._next_id = 0
        for _ in range(workers):
            self._spawn()
        threading.Thread(target=self._read_results, name="prepare-results", daemon=True).start()
        threading.Thread(target=self._watch_workers, name="prepare-watch", daemon=True).start()

    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs.values() if proc.pid is not None]

    def wait_ready(self, timeout: float = _READY_TIMEOUT_S) -> None:
        for _ in range(self.size):
            if not self._ready.acquire(timeout=timeout):
                raise RuntimeError("audio preparation workers did not start in time")

    def submit(self, job_id: str, path: Path) -> None:
        with self._lock:
            attempt = self._attempts[job_id] = Attempt(job_id)
            self._waiting.append(_Job(attempt, path))
            self._dispatch()

    def forget(self, job_id: str) -> None:
        """The job is over (done or failed): later messages about it are dropped."""
        with self._lock:
            self._attempts.pop(job_id, None)
            self._waiting = deque(j for j in self._waiting if j.attempt.job_id != job_id)

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def close(self) -> None:
        self._closed = True
        for q in self._task_queues.values():
            q.put(None)
        for proc in self._procs.values():
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        self._results.put(("closed", -1, None, None))

    def _spawn(self) -> None:
        worker_id = self._next_id
        self._next_id += 1
        tasks: mp.Queue = self._ctx.Queue()
        proc = self._ctx.Process(
            target=_worker_main,
            args=(self.settings, tasks, self._results, worker_id, os.getpid()),
            name=f"prepare-{worker_id}",
            daemon=True,
        )
        # Replacements start from the watcher thread, which ends at close() or on a bug: each
        # worker gets a thread that lives as long as it does instead (lifetime.py).
        start_tied(proc)
        self._procs[worker_id] = proc
        self._task_queues[worker_id] = tasks

    def _dispatch(self) -> None:
        """Give waiting jobs to idle workers. Called with the lock held."""
        while self._idle and self._waiting:
            worker_id = self._idle.popleft()
            if worker_id not in self._procs:
                continue
            job = self._waiting.popleft()
            self._holding[worker_id] = job
            self._task_queues[worker_id].put((job.attempt, str(job.path)))

    def _read_results(self) -> None:
        while True:
            try:
                kind, worker_id, attempt, message = self._results.get()
            except (EOFError, OSError):  # the queue itself is gone: nothing more will arrive
                if not self._closed:
                    log.exception("the workers' result queue broke")
                return
            except (TypeError, ValueError, pickle.UnpicklingError):
                if self._closed:
                    return  # a worker killed at shutdown in the middle of a message
                log.exception("a worker message could not be read")
                continue
            if kind == "closed":
                return
            if kind in ("ready", "idle"):
                with self._lock:
                    self._holding.pop(worker_id, None)
                    self._idle.append(worker_id)
                    self._dispatch()
                if kind == "ready":
                    self._ready.release()
                continue
            with self._lock:
                current = self._attempts.get(attempt.job_id)
            if current == attempt:
                self._deliver(attempt.job_id, message)

    def _deliver(self, job_id: str, message: Message) -> None:
        try:
            self.on_message(job_id, message)
        except Exception:  # a consumer bug must not kill the reader thread
            log.exception("handling a worker message for job %s failed", job_id)

    def _watch_workers(self) -> None:
        while not self._closed:
            with self._lock:
                sentinels = {proc.sentinel: wid for wid, proc in self._procs.items()}
            dead = wait(list(sentinels), timeout=1.0)
            for sentinel in dead:
                if not self._closed:
                    self._replace(sentinels[sentinel])

    def _replace(self, worker_id: int) -> None:
        with self._lock:
            proc = self._procs.pop(worker_id)
            self._task_queues.pop(worker_id)
            job = self._holding.pop(worker_id, None)
            log.error("audio worker %d died (exit code %s); starting another", worker_id, proc.exitcode)
            self._spawn()
            if job is None or job.attempt.job_id not in self._attempts:
                return
            job_id = job.attempt.job_id
            job.attempt = self._attempts[job_id] = job.attempt.next()  # the dead worker's messages: stale
        if job.attempt.n >= _MAX_ATTEMPTS:
            self._deliver(job_id, Failed(BadAudio("this file crashed the audio decoder twice")))
            return
        log.warning("retrying job %s on another worker", job_id)
        self._deliver(job_id, Retrying())  # before the retry can produce anything
        with self._lock:
            self._waiting.appendleft(job)
            self._dispatch()
