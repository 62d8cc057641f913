"""FSMN-VAD's network in a process of its own, on the instance's device, which the audio workers
ask over a Unix socket (`--vad-scores process`).

Session 13 ran the same batched network (`vad_scores.ScoreServer`) in the engine process: the
workers' CPU fell by a third, but every request's chunk crossed the engine's result queue and
waited for its GIL, which the GPU thread keeps busy, and preparation got longer. Here the scorer
is a process of its own, with its own interpreter and CUDA context; the workers talk to it
directly, and nothing of it passes through the engine process.

* `ScorerProcess`, in the engine: starts the process, waits until it listens, starts it again
  when it dies, and stops it at close.
* `_scorer_main`, the process: FunASR's VAD model on the device, a `ScoreServer` batching every
  worker's requests, and a thread per connected worker that hands it the requests.
* `ScorerClient`, in each audio worker: the `Ask` that `vad_scores.RemoteFsmn` calls. It connects
  on first use; if the scorer went away (it is being started again), it connects once more and
  asks again, and past that the request fails with a clear error, not the worker.

Measured on the 2x H200 host (session 16, `benchmarks/results/sessions.md`): the instance's CPU a
request fell by a sixth, the host was 47-52 % busy with a fleet of 2 instead of 63 %, and the
fleet scaled at 1.98x and 1.92x against the default's 1.88x; but one instance alone was about 5 %
slower, since a chunk waits for the scorer's batch (whose kernels most likely time-slice the GPU
with the engine's), so the fleet's own throughput stayed the same. Hence an option, not the default. The
scorer's CUDA context and cache take about 1 GB of GPU memory.

Session 17 replayed its batches from CUDA graphs (a16b357): a batch took 3 ms instead of 5.3, but
the scorer's CPU rose from 2.5 to about 9 ms a request, for a cause not found, so that was reverted.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import pickle
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from functools import partial
from multiprocessing.connection import Client, Connection, Listener

from asrfleet.engines.funasr.vad_scores import ScoreError, ScoreRequest, Scores, ScoreServer
from asrfleet.errors import AsrError
from asrfleet.gc_pauses import freeze_loaded

log = logging.getLogger(__name__)

STATS = "stats"  # a request for the server's counters instead of scores
PROCESS_NAME = "asr-vad-scorer"  # what `ps` shows (and benchmarks/cpu.py looks for); 15 bytes at most
_START_TIMEOUT_S = 300.0
_RESTART_PAUSE_S = 2.0  # between attempts to start a scorer that keeps failing
_PR_SET_NAME = 15  # prctl's option, from <linux/prctl.h>


@dataclass(frozen=True)
class ScorerAddress:
    """Where the workers find the scorer: a Unix socket in a private folder, and the key that
    `multiprocessing.connection` checks on every connection."""

    path: str
    authkey: bytes


# -- the engine side ------------------------------------------------------------------------------


class ScorerProcess:
    """Runs `_scorer_main` for one instance and keeps it running until `close()`."""

    def __init__(self, vad_dir: str, device: str, start_timeout: float = _START_TIMEOUT_S) -> None:
        self.vad_dir = vad_dir
        self.device = device
        self.start_timeout = start_timeout
        # Under /tmp, not the run directory: a Unix socket's path may be at most 107 bytes.
        self._folder = tempfile.mkdtemp(prefix="asr-vad-")  # mode 0700: only this user connects
        self.address = ScorerAddress(os.path.join(self._folder, "scores.sock"), os.urandom(32))
        self._ctx = mp.get_context("spawn")  # never fork a process that holds CUDA or threads
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self.restarts = 0
        self._proc = self._start()
        threading.Thread(target=self._watch, name="vad-scorer-watch", daemon=True).start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def stats(self, timeout: float = 5.0) -> dict[str, object]:
        """The server's counters (`vad_scores.ScoreStats`), asked over a connection of its own."""
        with _connect(self.address) as conn:
            conn.send(STATS)
            if not conn.poll(timeout):
                raise TimeoutError("the VAD scorer did not answer")
            counters = conn.recv()
        return {**counters, "restarts": self.restarts}

    def close(self) -> None:
        with self._lock:  # a scorer that `_watch` is starting now is stopped there
            self._closed.set()
            proc = self._proc
        _stop(proc)
        shutil.rmtree(self._folder, ignore_errors=True)

    def _start(self) -> mp.process.BaseProcess:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.address.path)  # a dead scorer's socket
        ready, ready_in_child = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=_scorer_main,
            args=(self.vad_dir, self.device, self.address, ready_in_child),
            name="vad-scorer",
            daemon=True,
        )
        proc.start()
        ready_in_child.close()
        try:
            if not ready.poll(self.start_timeout):
                raise RuntimeError("the VAD scorer did not start in time")
            ready.recv()
        except (EOFError, RuntimeError) as err:
            proc.kill()
            proc.join(timeout=5)
            raise RuntimeError(f"the VAD scorer failed to start (exit code {proc.exitcode})") from err
        finally:
            ready.close()
        return proc

    def _watch(self) -> None:
        """Start the scorer again whenever it dies; the workers reconnect on their own."""
        while not self._closed.is_set():
            self._proc.join()
            while not self._closed.is_set():
                log.error("the VAD scorer died (exit code %s); starting another", self._proc.exitcode)
                try:
                    proc = self._start()
                except RuntimeError:
                    log.exception("starting the VAD scorer again failed")
                    self._closed.wait(_RESTART_PAUSE_S)
                    continue
                with self._lock:
                    if self._closed.is_set():  # closed while it started
                        _stop(proc)
                        return
                    self._proc = proc
                    self.restarts += 1
                break


def _stop(proc: mp.process.BaseProcess) -> None:
    proc.terminate()
    proc.join(timeout=5)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout=5)


# -- the scorer process ---------------------------------------------------------------------------


def _scorer_main(vad_dir: str, device: str, address: ScorerAddress, ready: Connection) -> None:
    logging.basicConfig(level=logging.WARNING, format="[vad-scorer] %(levelname)s %(message)s")
    _name_process(PROCESS_NAME)
    # A process group of its own: a signal to the instance's group (supervisord's stopasgroup, a
    # terminal's Ctrl-C) must not stop it under the requests that are finishing; its engine stops
    # it after them, and it exits by itself if the engine dies (`_exit_when_orphaned`).
    os.setpgrp()
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    import torch
    from funasr import AutoModel

    torch.set_num_threads(1)  # on the CPU (tests), one core as a worker has; on a GPU, unused
    model, _ = AutoModel.build_model(model=vad_dir, device=device, disable_update=True, disable_log=True)
    server = ScoreServer(model.encoder, device)
    listener = Listener(address.path, family="AF_UNIX", authkey=address.authkey)
    freeze_loaded()  # a full collection over torch's objects would stall every worker's VAD
    ready.send("listening")
    ready.close()
    while True:
        try:
            conn = listener.accept()
        except (OSError, EOFError, mp.AuthenticationError):
            log.warning("a connection to the VAD scorer was refused", exc_info=True)
            continue
        threading.Thread(target=_serve, args=(server, conn), name="vad-scorer-conn", daemon=True).start()


def _name_process(name: str) -> None:
    """Set the name the kernel shows for this process (Linux; elsewhere nothing changes)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def _serve(server: ScoreServer, conn: Connection) -> None:
    """One worker's requests, one at a time (a worker waits for each answer), into the server."""
    reply = partial(_send, conn)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError, pickle.UnpicklingError):  # the worker went away
            conn.close()
            return
        if request == STATS:
            reply(asdict(server.stats))
        elif isinstance(request, ScoreRequest):
            server.submit(request, reply)
        else:
            reply(ScoreError("the VAD scorer got a request it does not know"))


def _send(conn: Connection, answer: object) -> None:
    with contextlib.suppress(OSError):  # the worker died meanwhile: nobody to answer
        conn.send(answer)


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


# -- the worker side ------------------------------------------------------------------------------


class ScorerClient:
    """A worker's `Ask`: one connection to the scorer, opened on first use.

    timeout_s: how long one answer may take; reconnect_s: how long to wait for a scorer that is
    being started again (its model loads first).
    """

    def __init__(self, address: ScorerAddress, timeout_s: float = 60.0, reconnect_s: float = 120.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.reconnect_s = reconnect_s
        self._conn: Connection | None = None

    def __call__(self, request: ScoreRequest) -> Scores:
        for attempt in (1, 2):
            try:
                answer = self._ask(request)
            except (EOFError, OSError):  # the scorer went away with the request
                self._drop()
                if attempt == 2:
                    raise AsrError("voice activity detection is restarting; try again") from None
                continue
            if isinstance(answer, ScoreError):
                raise AsrError(answer.message)
            return answer
        raise AssertionError("unreachable")

    def _ask(self, request: ScoreRequest) -> Scores | ScoreError:
        conn = self._connection()
        conn.send(request)
        if not conn.poll(self.timeout_s):
            self._drop()  # its late answer must not be read as the next request's
            raise AsrError("voice activity detection did not answer in time")
        return conn.recv()

    def _connection(self) -> Connection:
        deadline = time.monotonic() + self.reconnect_s
        while self._conn is None:
            try:
                self._conn = _connect(self.address)
            except OSError:
                if time.monotonic() > deadline:
                    raise AsrError("voice activity detection is not available") from None
                time.sleep(0.2)
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _connect(address: ScorerAddress) -> Connection:
    return Client(address.path, family="AF_UNIX", authkey=address.authkey)
