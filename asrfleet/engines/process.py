"""Any engine in a process of its own, behind the same `Transcriber` interface.

The web server (Gradio, the OpenAI API) and an engine's GPU thread would otherwise share one
interpreter and one GIL: under load each slows the other, and the GPU waits for Python. Here the
web process keeps a thin proxy, and the engine runs in a child process that owns the models and
the GPU. The two talk over one pipe:

    parent -> child   ("transcribe", call_id, path, options) | ("stats", call_id) | ("close",)
    child -> parent   ("loaded", model_name) | ("load_failed", message)
                      ("done", call_id, transcript_or_exception)

The child answers each transcription from its future's callback when the engine has `submit()`
(the Paraformer engine), else from a thread of its own (the engine batches them either way), and
exits when the pipe closes. It never outlives its parent, however the parent dies: the kernel kills
it with its parent (`lifetime.py`), even while it is busy. If the child dies, every request in
flight fails with a clear error and `wait_died()` returns, so the instance can exit and be restarted.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import os
import signal
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout  # not the builtin before 3.11
from itertools import count
from multiprocessing.connection import Connection
from pathlib import Path

from asrfleet.config import InstanceConfig
from asrfleet.engines.base import TranscribeOptions, display_name
from asrfleet.engines.lifetime import die_with_parent, start_tied
from asrfleet.errors import AsrError, NotReady, first_line, user_message
from asrfleet.gc_pauses import GcPauses, freeze_loaded
from asrfleet.logs import configure_logging
from asrfleet.transcript import Transcript

log = logging.getLogger(__name__)

_STATS_TIMEOUT_S = 5.0
_CLOSE_TIMEOUT_S = 30.0


class EngineStopped(AsrError):
    """The engine process is gone; the instance restarts."""

    status = 503
    code = "engine_stopped"


def _stopped() -> EngineStopped:
    return EngineStopped("the engine process has stopped; retry shortly")


class LoadFailed(Exception):
    """The engine process could not load its models (it has logged why)."""


class EngineProcess:
    """A `Transcriber` whose engine (`engine_class`, "module:Class") runs in a child process."""

    def __init__(self, config: InstanceConfig, engine_class: str) -> None:
        self.config = config
        self.engine_class = engine_class
        self.model_name = display_name(config.model)
        self._conn: Connection | None = None
        self._process: mp.process.BaseProcess | None = None
        self._calls: dict[int, Future] = {}
        self._ids = count()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._closing = threading.Event()
        self._died = threading.Event()

    # -- the Transcriber interface -----------------------------------------------------------------

    def load(self) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that may hold CUDA or server threads
        parent_end, child_end = ctx.Pipe()
        self._process = ctx.Process(
            target=serve_engine,
            args=(self.config, self.engine_class, child_end, os.getpid()),
            name=f"{self.config.name}-engine",
        )
        # From a thread that lives as long as the engine, whichever thread calls load(): the
        # kernel kills the engine when the thread that started it ends (lifetime.py).
        start_tied(self._process)
        child_end.close()
        self._conn = parent_end
        try:
            kind, detail = parent_end.recv()
        except EOFError:
            self._process.join(_CLOSE_TIMEOUT_S)
            raise LoadFailed(f"the engine process exited with code {self._process.exitcode}") from None
        if kind != "loaded":
            self._process.join(_CLOSE_TIMEOUT_S)
            raise LoadFailed(detail)
        self.model_name = detail
        threading.Thread(target=self._read, name="engine-reader", daemon=True).start()
        self._ready.set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def transcribe(self, path: Path, options: TranscribeOptions) -> Transcript:
        return self.submit(path, options).result()

    def submit(self, path: Path, options: TranscribeOptions) -> Future:
        """Start a transcription; a future of its `Transcript`, set by the pipe's reader thread.

        The web app awaits it (`asyncio.wrap_future`) instead of parking a thread per request.
        """
        return self._call("transcribe", str(path), options)

    def stats(self) -> dict[str, object]:
        try:
            stats = self._call("stats").result(timeout=_STATS_TIMEOUT_S)
        except (AsrError, FutureTimeout):
            return {"engine_process": "not answering"}
        return {**stats, "engine_pid": self._process.pid if self._process else None}

    def close(self) -> None:
        self._closing.set()
        self._ready.clear()
        if self._conn is not None:
            try:
                self._send(("close",))
            except OSError:
                pass  # already gone
        if self._process is not None:
            self._process.join(_CLOSE_TIMEOUT_S)
            if self._process.is_alive():
                log.warning("the engine process did not stop in %.0f s; killing it", _CLOSE_TIMEOUT_S)
                self._process.kill()
                self._process.join()
        self._fail_all(NotReady("the instance is shutting down; retry on another"))

    def wait_died(self) -> int | None:
        """Block until the engine process dies without being asked to; its exit code.

        Returns None when the engine was closed on purpose instead.
        """
        self._died.wait()
        return None if self._closing.is_set() or self._process is None else self._process.exitcode

    # -- the parent's side of the pipe -------------------------------------------------------------

    def _call(self, kind: str, *args: object) -> Future:
        future: Future = Future()
        if self._died.is_set():
            future.set_exception(_stopped())
            return future
        if not self.ready:
            future.set_exception(NotReady("the model is still loading; try again in a moment"))
            return future
        call_id = next(self._ids)
        with self._lock:
            self._calls[call_id] = future
        try:
            self._send((kind, call_id, *args))
        except OSError:
            with self._lock:
                self._calls.pop(call_id, None)
            future.set_exception(_stopped())
        return future

    def _send(self, message: tuple) -> None:
        with self._lock:  # Connection.send is not safe from several threads at once
            self._conn.send(message)

    def _read(self) -> None:
        try:
            while True:
                _, call_id, outcome = self._conn.recv()
                with self._lock:
                    future = self._calls.pop(call_id, None)
                if future is None or not future.set_running_or_notify_cancel():
                    continue  # unknown, or cancelled by a client that went away
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        except (EOFError, OSError):
            pass
        self._ready.clear()
        if not self._closing.is_set():
            self._process.join(1.0)
            log.error("the engine process died (exit code %s)", self._process.exitcode)
        self._fail_all(_stopped())
        self._died.set()

    def _fail_all(self, error: AsrError) -> None:
        with self._lock:
            calls, self._calls = self._calls, {}
        for future in calls.values():
            if future.set_running_or_notify_cancel():
                future.set_exception(error)


# -- the child ---------------------------------------------------------------------------------------


def serve_engine(config: InstanceConfig, engine_class: str, conn: Connection, parent_pid: int) -> None:
    """The engine process: load, then answer calls until the pipe closes or "close" arrives."""
    # First: from here on the parent may die at any moment, SIGKILL included, and this process
    # must not outlive it, whatever it is doing then.
    die_with_parent(parent_pid)
    configure_logging(f"{config.name}-engine")
    # The web process stops us itself, once its requests are done: a signal to the whole process
    # group (supervisord's stopasgroup) must not kill the engine under a request that is finishing.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    module_name, class_name = engine_class.split(":")
    try:
        engine = getattr(importlib.import_module(module_name), class_name)(config)
        engine.load()
    except Exception as err:  # reported to the parent, which logs it and exits with its load code
        log.debug("loading failed", exc_info=True)
        conn.send(("load_failed", first_line(err)))
        if not isinstance(err, ValueError):
            log.error("loading the models failed", exc_info=True)
        return
    # Before answering: a full collection over the libraries' objects would stop the GPU thread.
    log.debug("froze %d objects after loading", freeze_loaded())
    pauses = GcPauses().install()  # serving's pauses only, not loading's
    conn.send(("loaded", engine.model_name))
    _Answerer(engine, conn, threads=config.max_queue + 16, pauses=pauses).run()


class _Answerer:
    """Answers the web process's calls. An engine with `submit()` (a future per transcription) is
    answered from the future's callback; any other gets a thread per transcription, which waits.

    Threads that only wait cost little, but every one that wakes takes the GIL, which the GPU
    thread needs between its CUDA calls: with many requests in flight, a thread per request would
    together hold the GIL much of the time.
    """

    def __init__(self, engine, conn: Connection, threads: int, pauses: GcPauses) -> None:
        self.engine = engine
        self.conn = conn
        self.pauses = pauses
        self.send_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="request")
        self.submit = getattr(engine, "submit", None)

    def run(self) -> None:
        try:
            while True:
                message = self.conn.recv()
                if message[0] == "close":
                    break
                if message[0] == "transcribe":
                    _, call_id, path, options = message
                    self._start(call_id, Path(path), options)
                elif message[0] == "stats":
                    self._answer(message[1], self._stats())
        except (EOFError, OSError):
            log.info("the web process is gone; stopping")
        finally:
            self.engine.close()
            self.pool.shutdown(wait=False, cancel_futures=True)

    def _stats(self) -> dict[str, object]:
        try:
            return {**self.engine.stats(), **self.pauses.as_dict()}
        except Exception as err:  # stats are for people; a failure there must not stop the engine
            log.warning("the engine's stats failed: %r", err)
            return {"stats_error": repr(err)}

    def _start(self, call_id: int, path: Path, options: TranscribeOptions) -> None:
        if self.submit is None:
            self.pool.submit(self._transcribe, call_id, path, options)
            return
        try:
            future = self.submit(path, options)
        except Exception as err:
            self._answer(call_id, _outcome(err, path))
            return
        future.add_done_callback(lambda done: self._answer_future(call_id, path, done))

    def _transcribe(self, call_id: int, path: Path, options: TranscribeOptions) -> None:
        try:
            outcome: object = self.engine.transcribe(path, options)
        except Exception as err:
            outcome = _outcome(err, path)
        self._answer(call_id, outcome)

    def _answer_future(self, call_id: int, path: Path, future: Future) -> None:
        error = future.exception()
        self._answer(call_id, future.result() if error is None else _outcome(error, path))

    def _answer(self, call_id: int, outcome: object) -> None:
        try:
            with self.send_lock:
                self.conn.send(("done", call_id, outcome))
        except OSError:
            pass  # the parent is gone; run() notices and stops


def _outcome(err: BaseException, path: Path) -> AsrError:
    """What the web process gets for a failed transcription: our errors as they are; a bug is
    logged here with its traceback, and a plain message goes back."""
    if isinstance(err, AsrError):
        return err
    log.error("transcribing %s failed", path, exc_info=err)
    return AsrError(user_message(err))
