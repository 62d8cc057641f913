"""`python -m asrfleet.instance ...`: one instance. Takes its port at once but accepts connections
only once its models are loaded and warmed up: until then a connection is refused, so nginx sends
nothing to an instance that is (re)starting and the others serve meanwhile. Stops cleanly on SIGTERM.

Exit codes: 0 stopped on request; 2 bad arguments (argparse's, or --cpus that this machine does not
have); 3 the models failed to load (the log says why; supervisord restarts us, and a crash loop
ends FATAL); 4 the engine process died under us (supervisord restarts the instance); 5 the port is
taken by another process.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from asrfleet.config import InstanceConfig
from asrfleet.cpus import parse_cpu_list, pin_process
from asrfleet.errors import first_line
from asrfleet.gc_pauses import freeze_loaded
from asrfleet.logs import configure_logging

if TYPE_CHECKING:  # imported for real only once GRADIO_TEMP_DIR is set (see _temp_dirs)
    import uvicorn

    from asrfleet.engines.base import Transcriber
    from asrfleet.instance.app import LoadState
    from asrfleet.instance.service import InstanceDirs

EXIT_OK = 0
EXIT_BAD_ARGUMENTS = 2
EXIT_LOAD_FAILED = 3
EXIT_ENGINE_DIED = 4
EXIT_PORT_IN_USE = 5

log = logging.getLogger("asrfleet.instance")


def main(argv: list[str] | None = None) -> int:
    config = InstanceConfig.from_argv(argv)
    configure_logging(config.name)
    if config.cpus:
        # First: every process and thread started from here on (engine, audio workers, torch's
        # thread pools) inherits it.
        try:
            pin_process(parse_cpu_list(config.cpus))
        except ValueError as err:
            log.error("%s", err)
            return EXIT_BAD_ARGUMENTS
        log.info("running on CPUs %s", config.cpus)
    _gpu_allocator()
    dirs, owned = _temp_dirs(config)
    try:
        return _serve(config, dirs)
    finally:
        if owned:
            shutil.rmtree(dirs.root, ignore_errors=True)


def _serve(config: InstanceConfig, dirs: InstanceDirs) -> int:
    import uvicorn

    from asrfleet.engines import create_transcriber
    from asrfleet.instance.app import LoadState, build_app

    try:
        sock = _bind(config.host, config.port)
    except OSError as err:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, err.strerror or err)
        return EXIT_PORT_IN_USE
    transcriber = create_transcriber(config)
    state = LoadState(started=time.time(), exit_code=EXIT_OK)
    app = build_app(config, transcriber, dirs, state)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            timeout_graceful_shutdown=30,
            lifespan="on",
        )
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # until uvicorn takes them over, and after
        signal.signal(sig, lambda signum, frame: _note_stop(signum, stop))
    loaded = threading.Event()
    loader = threading.Thread(
        target=_load, args=(transcriber, state, server, loaded), name="load", daemon=True
    )
    loader.start()
    log.info(
        "%s loading %s; accepting connections on http://%s:%d once ready",
        config.name,
        config.model,
        config.host,
        config.port,
    )
    while not (loaded.wait(0.2) or stop.is_set()):
        pass
    if loaded.is_set() and not state.failed and not stop.is_set():
        sock.listen(2048)
        server.run(sockets=[sock])
    sock.close()
    transcriber.close()
    return state.exit_code


def _bind(host: str, port: int) -> socket.socket:
    """The instance's socket, bound but not listening: the port is ours (a second instance on it
    fails at once), yet a connection is refused until `listen()`, once the models are ready."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def _note_stop(signum: int, stop: threading.Event) -> None:
    """Only note it: while serving, uvicorn has already stopped the server when this runs."""
    log.info("stopping on signal %d", signum)
    stop.set()


def _load(
    transcriber: Transcriber, state: LoadState, server: uvicorn.Server, loaded: threading.Event
) -> None:
    """Load the models; then, for an engine in its own process, watch that process."""
    from asrfleet.engines.process import EngineProcess, LoadFailed

    try:
        transcriber.load()
    except Exception as err:  # any load failure ends the process: supervisord decides what next
        summary = first_line(err)
        quiet = isinstance(err, (ValueError, LoadFailed))  # a plain cause, or logged by the engine
        log.error("loading the models failed: %s", summary, exc_info=not quiet)
        _exit(state, server, summary, EXIT_LOAD_FAILED)
        loaded.set()
        return
    # gc_pauses.py: no full collection walks the web server's and libraries' objects again
    freeze_loaded()
    log.info("ready after %.1f s", time.time() - state.started)
    loaded.set()
    if isinstance(transcriber, EngineProcess):
        code = transcriber.wait_died()
        if code is not None:
            _exit(state, server, f"the engine process died (exit code {code})", EXIT_ENGINE_DIED)


def _exit(state: LoadState, server: uvicorn.Server, why: str, code: int) -> None:
    log.error("exiting: %s", why)  # last in the log, where `launcher.py status` looks
    state.failed = why
    state.exit_code = code
    server.should_exit = True


def _gpu_allocator() -> None:
    """PyTorch's CUDA allocator grows its segments instead of reserving new fixed ones (unless the
    user configured it). Batches of ever-new shapes, plus the CUDA graphs' own memory pool, leave
    fixed segments reserved but unused, so an instance's GPU memory would keep growing over a long
    recording; expandable segments let the allocator grow the segments it has instead. Set before
    the engine process starts: it inherits it, and PyTorch reads it when CUDA first allocates."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


OWNER_FILE = "pid"


def _remove_left_behind(folders) -> None:
    """Remove what a killed run left: temp folders whose owner (the pid written in them, or in the
    folder above) no longer runs. Only folders of this instance's name are ever looked at."""
    for folder in folders:
        owner = folder / OWNER_FILE if (folder / OWNER_FILE).exists() else folder.parent / OWNER_FILE
        if folder.is_dir() and not _alive(owner) and not _just_made(folder, owner):
            log.info("removing %s, left behind by a run that did not stop cleanly", folder)
            shutil.rmtree(folder, ignore_errors=True)


def _just_made(folder: Path, owner_file: Path) -> bool:
    """A folder without its owner file yet may be another run's, between its creation and the
    owner file's: left alone for a minute."""
    try:
        return not owner_file.exists() and time.time() - folder.stat().st_mtime < 60
    except OSError:
        return True


def _alive(owner_file: Path) -> bool:
    try:
        pid = int(owner_file.read_text())
    except (OSError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # PermissionError: alive, another user's
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _temp_dirs(config: InstanceConfig) -> tuple[InstanceDirs, bool]:
    """This instance's own temp directory; Gradio's uploads and our files all live inside it.

    Set before Gradio is imported: it reads GRADIO_TEMP_DIR at import time.
    """
    from asrfleet.instance.service import InstanceDirs

    owned = config.temp_dir is None
    prefix = f"asr-{config.name}-"
    if owned:
        _remove_left_behind(Path(tempfile.gettempdir()).glob(f"{prefix}*"))
    root = Path(tempfile.mkdtemp(prefix=prefix)) if owned else Path(config.temp_dir)
    dirs = InstanceDirs(root.resolve())
    if not owned:  # the folder of this instance's previous run, which may have crashed in it
        _remove_left_behind([dirs.gradio, dirs.work])
    for folder in (dirs.gradio, dirs.work):
        folder.mkdir(parents=True, exist_ok=True)
    (dirs.root / OWNER_FILE).write_text(str(os.getpid()))
    os.environ["GRADIO_TEMP_DIR"] = str(dirs.gradio)
    # Gradio rebuilds a pandas table of its last 10 000 events after every event, for a
    # monitoring page we turn off: under load, that would cost more than serving the requests.
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
    os.environ["TMPDIR"] = str(dirs.work)
    tempfile.tempdir = str(dirs.work)
    return dirs, owned
