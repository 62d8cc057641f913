"""Where the host's CPU time goes during a measurement, by role (Linux /proc).

    before = cpu.snapshot(); ...; used = cpu.used(before, cpu.snapshot())

Also, by role, how long its threads waited for a CPU while ready to run (the scheduler's run
queue, /proc/PID/task/TID/schedstat): CPU seconds say how much work a role did, the wait says
whether the host kept it from doing more. Roles follow the process tree: an instance's web
server (`python -m asrfleet.instance`), its engine process (the web server's child), the engine's
audio workers (its children), nginx, supervisord, and the load generator: this process here; its
client processes report their own CPU from the moment they start sending (`load.run_level`),
since what the kernel reports for reaped children includes their start-up. Also the host's busy
share over the interval, from /proc/stat, and its steal share: in a virtual machine, the time its
CPUs were ready to run but the hypervisor ran something else. Stolen time shows up in neither a
process's CPU seconds nor its run-queue wait, only as a process that did less per wall second.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from asrfleet.config import InstanceConfig, option_value
from asrfleet.cpus import format_cpu_list

T = TypeVar("T")

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Snapshot:
    at: float
    by_pid: dict[int, tuple[str, float]]  # pid -> (role, CPU seconds so far)
    waits: dict[int, tuple[float, float]]  # pid -> (main thread's, all threads') run-queue seconds
    load_generator: float  # this process (its clients report their own: see the module's doc)
    host_busy: float  # busy jiffies, stolen ones included
    host_total: float
    host_steal: float = 0.0  # jiffies the hypervisor took from this machine's CPUs


def _processes() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command line, CPU seconds)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8") as f:
                tail = f.read().rpartition(")")[2]
            fields = tail.split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        out[int(name)] = (int(fields[1]), cmdline, (int(fields[11]) + int(fields[12])) / _TICK)
    return out


def _run_queue_waits(pid: int) -> tuple[float, float]:
    """Seconds the main thread, and all threads together, waited for a CPU while runnable."""
    main = total = 0.0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0, 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="utf-8") as f:
                waited = int(f.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
        total += waited
        if tid == str(pid):
            main = waited
    return main, total


def _roles(procs: dict[int, tuple[int, str, float]]) -> dict[int, str]:
    roles: dict[int, str] = {}
    for pid, (_, cmdline, _) in procs.items():
        if "-m asrfleet.instance" in cmdline or "-m instances" in cmdline:
            roles[pid] = "web"
        elif cmdline.startswith("nginx"):
            roles[pid] = "nginx"
        elif "supervisord" in cmdline:
            roles[pid] = "supervisord"
    below = {"web": "engine", "engine": "workers"}
    return _spread_down(procs, roles, below.get)


def _spread_down(
    procs: dict[int, tuple[int, str, float]], marks: dict[int, T], mark_child: Callable[[T], T | None]
) -> dict[int, T]:
    """`marks` and what each marked process's children get from it (`mark_child`; None: nothing),
    two generations down: engines are children of web servers, workers of engines."""
    marks = dict(marks)
    for _ in range(2):
        for pid, (parent, _, _) in procs.items():
            if pid not in marks and parent in marks:
                child = mark_child(marks[parent])
                if child is not None:
                    marks[pid] = child
    return marks


def placements() -> dict[str, str]:
    """Each instance's CPUs, by its web server's command line: the CPUs that any thread of the web
    server, its engine or its audio workers may run on, and its audio workers' where they are
    fewer; and those of nginx's workers. A result thus shows whether the launcher's CPU blocks
    took effect."""
    procs = _processes()
    roles = _roles(procs)
    webs = {pid: pid for pid, role in roles.items() if role == "web"}
    ours = {pid: proc for pid, proc in procs.items() if pid in roles}
    instance_of = _spread_down(ours, webs, lambda web: web)
    cpus: dict[int, set[int]] = {}
    workers: dict[int, set[int]] = {}
    for pid, web in instance_of.items():
        allowed = _allowed_cpus(pid)
        cpus.setdefault(web, set()).update(allowed)
        if roles[pid] == "workers":
            workers.setdefault(web, set()).update(allowed)
    found: dict[str, str] = {}
    for web in sorted(cpus):
        port = instance_port(procs[web][1])
        if cpus[web]:
            found[port] = format_cpu_list(cpus[web])
        if workers.get(web) and workers[web] != cpus[web]:  # kept apart from the rest
            found[f"{port} audio workers"] = format_cpu_list(workers[web])
    # nginx's workers only: its master stays wherever it was started.
    nginx = [
        pid for pid, role in roles.items() if role == "nginx" and procs[pid][1].startswith("nginx: worker")
    ]
    nginx_cpus = set().union(*(_allowed_cpus(pid) for pid in nginx))
    if nginx_cpus:
        found["nginx workers"] = format_cpu_list(nginx_cpus)
    return found


def _allowed_cpus(pid: int) -> set[int]:
    """The union of the CPUs that the threads of a process may run on (each thread has its own)."""
    out: set[int] = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            out.update(os.sched_getaffinity(int(tid)))
        except OSError:  # gone meanwhile
            continue
    return out


def instance_port(cmdline: str) -> str:
    """'port 6007' from an instance's command line: its --port, or the default when it has none
    (the launcher leaves defaults out)."""
    return f"port {option_value(cmdline.split(), '--port') or InstanceConfig().port}"


def _host() -> tuple[float, float, float]:
    """Busy, total and stolen jiffies of all CPUs so far."""
    with open("/proc/stat", encoding="utf-8") as f:
        return host_jiffies(f.readline())


def host_jiffies(cpu_line: str) -> tuple[float, float, float]:
    """(busy, total, steal) from /proc/stat's "cpu" line: user nice system idle iowait irq
    softirq steal guest guest_nice. guest and guest_nice are already counted in user and nice."""
    values = [float(v) for v in cpu_line.split()[1:]][:8]
    idle = values[3] + values[4]  # idle, iowait
    steal = values[7] if len(values) > 7 else 0.0
    return sum(values) - idle, sum(values), steal


def snapshot() -> Snapshot:
    procs = _processes()
    roles = _roles(procs)
    mine = os.times()
    busy, total, steal = _host()
    return Snapshot(
        at=time.monotonic(),
        by_pid={pid: (role, procs[pid][2]) for pid, role in roles.items()},
        waits={pid: _run_queue_waits(pid) for pid in roles},
        load_generator=mine.user + mine.system,
        host_busy=busy,
        host_total=total,
        host_steal=steal,
    )


def used(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds by role between two snapshots, and the host's busy share (all CPUs)."""
    out: dict[str, float] = {}
    for pid, (role, seconds) in after.by_pid.items():
        start = before.by_pid.get(pid, (role, 0.0))[1]
        out[role] = out.get(role, 0.0) + seconds - start
    out = {role: round(s, 1) for role, s in sorted(out.items())}
    out["load generator"] = round(after.load_generator - before.load_generator, 1)
    total = after.host_total - before.host_total
    out["host_busy_share"] = round((after.host_busy - before.host_busy) / total, 3) if total else 0.0
    out["host_steal_share"] = round((after.host_steal - before.host_steal) / total, 4) if total else 0.0
    return out


def waited(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Run-queue seconds by role between two snapshots, all threads; and, as "web main thread",
    the web servers' event-loop threads alone (one per instance, summed)."""
    out: dict[str, float] = {}
    for pid, (role, _) in after.by_pid.items():
        main, total = after.waits.get(pid, (0.0, 0.0))
        main0, total0 = before.waits.get(pid, (0.0, 0.0))
        out[role] = out.get(role, 0.0) + total - total0
        if role == "web":
            out["web main thread"] = out.get("web main thread", 0.0) + main - main0
    return {role: round(s, 2) for role, s in sorted(out.items())}


def topology() -> str:
    """Logical CPUs, physical cores and sockets, from /proc/cpuinfo."""
    cores, sockets, logical = set(), set(), 0
    socket = core = ""
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "processor":
                logical += 1
            elif key == "physical id":
                socket = value
                sockets.add(value)
            elif key == "core id":
                core = value
                cores.add((socket, core))
    return f"{logical} logical CPUs, {len(cores)} physical cores, {len(sockets)} sockets"
