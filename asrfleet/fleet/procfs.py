"""Processes as Linux's /proc shows them: who is in a session or process group, who listens on a
port, and ending processes that are left over.

supervisord knows only the processes it started itself. What those start in turn can outlive them:
nginx's workers keep serving, holding the port, when their master is killed; a child that ignores
SIGTERM stays when its parent exits. These helpers find such processes by what the kernel records
(session, process group, open sockets), not by name.

A process that exited but was not yet reaped (a zombie) holds no port and runs nothing: it counts
as gone. Where no init reaps orphans (some containers), zombies stay forever, and waiting for them
to vanish would never end.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_TCP_TABLES = (PROC / "net" / "tcp", PROC / "net" / "tcp6")
_TCP_LISTEN = "0A"  # the state column of /proc/net/tcp for a listening socket


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str  # ps's state letter: "R", "S", "D", "Z" (zombie), ...
    title: str  # its command line as ps shows it (nginx rewrites its own: "nginx: worker process")

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")

    def describe(self) -> str:
        return f"{self.pid} ({self.title[:80] or '?'})"


def read(pid: int) -> Proc | None:
    """The process `pid`, or None when there is none."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses, so the fields
    # are counted from the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    title = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return Proc(pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0], title)


def processes() -> Iterator[Proc]:
    """Every process this user can see, zombies left out."""
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            proc = read(int(entry.name))
            if proc is not None and not proc.zombie:
                yield proc


def read_pid_file(path: Path) -> int | None:
    """The pid a daemon wrote; None without a readable one (nginx and supervisord remove theirs
    when they exit normally)."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    proc = read(pid)
    return proc is not None and not proc.zombie


def members(*, sessions: Collection[int] = (), groups: Collection[int] = ()) -> list[Proc]:
    """The living processes of these sessions or process groups."""
    return [p for p in processes() if p.sid in sessions or p.pgid in groups]


def executable(pid: int) -> str | None:
    """The file `pid` runs, as a real path; an executable replaced on disk since still matches."""
    try:
        return os.readlink(PROC / str(pid) / "exe").removesuffix(" (deleted)")
    except OSError:
        return None


def listeners(ports: Collection[int]) -> dict[int, set[int]]:
    """The processes holding a listening TCP socket on each of `ports` (IPv4 and IPv6).

    A port whose socket belongs to a process this user cannot inspect maps to an empty set.
    """
    inodes = _listening_inodes(ports)
    found: dict[int, set[int]] = {port: set() for port in set(inodes.values())}
    if not inodes:
        return found
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue  # another user's process, or gone
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                found[inodes[target[8:-1]]].add(int(entry.name))
    return found


def _listening_inodes(ports: Collection[int]) -> dict[str, int]:
    """Socket inode -> port, for the listening sockets on `ports`."""
    inodes = {}
    for table in _TCP_TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue  # no IPv6 in this kernel
        for line in lines:
            cols = line.split()
            port = int(cols[1].rsplit(":", 1)[1], 16)
            if cols[3] == _TCP_LISTEN and port in ports:
                inodes[cols[9]] = port
    return inodes


def wait_gone(pids: Collection[int], timeout: float) -> list[int]:
    """Wait until none of `pids` is alive; those still alive at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if alive(pid)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def terminate(pids: Collection[int], grace: float) -> list[int]:
    """SIGTERM each of `pids`, SIGKILL those alive after `grace` seconds; those that survive both.

    By pid, not by group: the caller has checked each process, and a group may also hold others.
    (A pid freed and reused in the few milliseconds since the check is not guarded against.)
    """
    _send(pids, signal.SIGTERM)
    left = wait_gone(pids, grace)
    if left:
        _send(left, signal.SIGKILL)
        left = wait_gone(left, 2.0)
    return left


def _send(pids: Collection[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass  # gone already; or not ours, and then wait_gone reports it
