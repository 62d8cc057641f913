"""`python -m asrfleet.instance ...`: one instance. Loads the model in the background while already
answering /healthz, reports /readyz once warmed up, and stops cleanly on SIGTERM.

Exit codes: 0 stopped on request; 2 bad arguments (argparse's, or --cpus that this machine does not
have); 3 the models failed to load (the log says why; supervisord restarts us, and a crash loop
ends FATAL); 4 the engine process died under us (supervisord restarts the instance).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
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

    transcriber = create_transcriber(config)
    state = LoadState(started=time.time(), exit_code=EXIT_OK)
    app = build_app(config, transcriber, dirs, state)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="warning",
            timeout_graceful_shutdown=30,
            lifespan="on",
        )
    )
    loader = threading.Thread(target=_load, args=(transcriber, state, server), name="load", daemon=True)
    loader.start()
    # uvicorn handles SIGTERM/SIGINT while it runs, then re-raises the signal once it has shut
    # down; these handlers catch that so the engine is closed and we exit with our own code.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _note_stop)
    log.info("%s listening on http://%s:%d (loading %s)", config.name, config.host, config.port, config.model)
    server.run()
    transcriber.close()
    return state.exit_code


def _note_stop(signum: int, frame: object) -> None:
    """Only note it: uvicorn has already stopped the server when this runs."""
    log.info("stopping on signal %d", signum)


def _load(transcriber: Transcriber, state: LoadState, server: uvicorn.Server) -> None:
    """Load the models; then, for an engine in its own process, watch that process."""
    from asrfleet.engines.process import EngineProcess, LoadFailed

    try:
        transcriber.load()
    except Exception as err:  # any load failure ends the process: supervisord decides what next
        summary = first_line(err)
        quiet = isinstance(err, (ValueError, LoadFailed))  # a plain cause, or logged by the engine
        log.error("loading the models failed: %s", summary, exc_info=not quiet)
        _exit(state, server, summary, EXIT_LOAD_FAILED)
        return
    # gc_pauses.py: no full collection walks the web server's and libraries' objects again
    freeze_loaded()
    log.info("ready after %.1f s", time.time() - state.started)
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


def _temp_dirs(config: InstanceConfig) -> tuple[InstanceDirs, bool]:
    """This instance's own temp directory; Gradio's uploads and our files all live inside it.

    Set before Gradio is imported: it reads GRADIO_TEMP_DIR at import time.
    """
    from asrfleet.instance.service import InstanceDirs

    owned = config.temp_dir is None
    root = Path(tempfile.mkdtemp(prefix=f"asr-{config.name}-")) if owned else Path(config.temp_dir)
    dirs = InstanceDirs(root.resolve())
    for folder in (dirs.gradio, dirs.work):
        folder.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(dirs.gradio)
    # Gradio rebuilds a pandas table of its last 10 000 events after every event, for a
    # monitoring page we turn off: under load, that would cost more than serving the requests.
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
    os.environ["TMPDIR"] = str(dirs.work)
    tempfile.tempdir = str(dirs.work)
    return dirs, owned
