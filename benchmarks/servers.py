"""Start an app under test in the background and stop it with its whole process tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from asrfleet.fleet.probes import port_in_use
from asrfleet.processes import stop_group

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def server(
    args: list[str], port: int, log: Path, ready_path: str, env: dict | None = None, timeout: float = 600
):
    """`python ARGS` until `ready_path` answers 200 on `port`; yields the base URL."""
    if port_in_use("127.0.0.1", port):  # whatever holds it would answer in our server's place
        raise RuntimeError(f"port {port} is already in use; stop what listens there first")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{args[:3]} exited with {proc.returncode}; see {log}")
            try:
                if httpx.get(url + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{args[:3]} not ready after {timeout} s; see {log}")
            time.sleep(0.5)
        yield url
    finally:
        stop_group(proc)


def exit_on_sigterm() -> None:
    """SIGTERM (`timeout`, a CI runner) ends the benchmark like Ctrl-C: servers it started are
    stopped on the way out instead of being left running on their ports and GPUs."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
