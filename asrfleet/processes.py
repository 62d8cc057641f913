"""Stopping a child process together with everything it started, and finding what it started
(Linux's /proc), for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def stop_group(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the child's process group (it was started with start_new_session=True), then SIGKILL
    whatever is left after `grace` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def running(pid: int) -> bool:
    """Whether `pid` exists and runs: a zombie (dead, not yet reaped) counts as gone."""
    state = _stat(pid)
    return state is not None and state[0] not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    """Every running process below `pid`: its children, theirs, and so on."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        state = _stat(int(entry.name)) if entry.name.isdigit() else None
        if state is not None and state[0] not in ("Z", "X"):
            parents[int(entry.name)] = state[1]
    found: list[int] = []
    below = [pid]
    while below:
        parent = below.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        found += kids
        below += kids
    return found


def cpu_seconds(pid: int) -> float:
    """The CPU time `pid` has used so far, user and system; 0 once it is gone."""
    fields = _fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of `pid`, or None when there is no such process."""
    fields = _fields(pid)
    return (fields[0], int(fields[1])) if fields else None


def _fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from its third field on (state, ppid, ...), or None when there is no `pid`."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rindex(")") + 2 :].split()  # "pid (comm) ...": comm may hold spaces and ")"
