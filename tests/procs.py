"""Start real processes for end-to-end tests, wait until they are ready, tear down their trees."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from asrfleet.processes import cpu_seconds, stop_group

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count: int) -> int:
    """The first of `count` consecutive ports that are free now, below the kernel's ephemeral range
    (32768 and up by default): there, a client's outgoing connection cannot take one of them
    between this check and the server's bind, as it can take `free_port() + 1`."""
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(20000, 32000 - count)
        if all(_bindable(port) for port in range(first, first + count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports found")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Running:
    proc: subprocess.Popen
    url: str
    log: Path

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def wait_http(
    url: str, timeout: float, proc: subprocess.Popen | None = None, status: int = 200
) -> httpx.Response:
    """Poll `url` until it answers `status`; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} while waiting for {url}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == status:
                return r
            last = r.status_code
        except httpx.HTTPError as err:
            last = err
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer {status} within {timeout} s (last: {last})")


def kill_tree(proc: subprocess.Popen, grace: float = 10.0) -> None:
    stop_group(proc, grace)


@contextmanager
def instance(args: list[str], log_dir: Path, ready_timeout: float = 180.0) -> Iterator[Running]:
    """`python -m asrfleet.instance ARGS` on a free port; yields once /readyz answers 200."""
    port = free_port()
    log = log_dir / f"instance-{port}.log"
    cmd = [sys.executable, "-m", "asrfleet.instance", "--port", str(port), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    running = Running(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_http(running.url + "/readyz", ready_timeout, proc)
    except (RuntimeError, TimeoutError) as err:
        kill_tree(proc)
        raise RuntimeError(f"{err}\n--- instance log ---\n{running.log_tail()}") from err
    try:
        yield running
    finally:
        kill_tree(proc)


def launcher_engine_args(instance_args: list[str]) -> list[str]:
    """The instance options the launcher passes on: it decides threads, workers and device itself."""
    keep, skip = [], {"--threads", "--workers", "--device"}
    pairs = iter(instance_args)
    for arg in pairs:
        value = next(pairs)
        if arg not in skip:
            keep += [arg, value]
    return keep


def wait_busy(idle: dict[int, float], cpu_s: float = 0.2) -> None:
    """Until one of the workers (pid: its CPU seconds while idle) has used `cpu_s` more: it is
    preparing the file. Counted in CPU time, not wall time: a loaded host runs it slower."""
    deadline = time.monotonic() + 60
    while not any(cpu_seconds(pid) - before >= cpu_s for pid, before in idle.items()):
        assert time.monotonic() < deadline, "no audio worker got busy with the file"
        time.sleep(0.05)
