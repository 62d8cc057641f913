"""asrfleet.fleet.nginx_guard with real processes: a stand-in master that records the signals it
gets, and the real nginx on a rendered fleet config (no supervisord, no instance)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from asrfleet.fleet import procfs
from asrfleet.fleet.nginx_guard import Forwarder, run
from asrfleet.fleet.probes import lb_answers, port_in_use
from asrfleet.fleet.render import nginx_program_command, render_fleet, required_directories
from asrfleet.fleet.spec import FleetSpec, make_instance
from procs import free_port

# A master that notes the signals it gets and forks one "worker" that only sleeps, as an nginx
# worker does when its master dies. QUIT makes it exit with the status given as argv[2].
FAKE_MASTER = """
import os, signal, sys, time
notes = sys.argv[1]

def note(signum, frame):
    with open(notes, "a") as f:
        f.write(signal.Signals(signum).name + "\\n")
    if signum == signal.SIGQUIT:
        sys.exit(int(sys.argv[2]))

worker = os.fork()
if worker == 0:
    while True:
        time.sleep(1)
for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGQUIT):
    signal.signal(signum, note)
with open(notes, "a") as f:
    f.write(f"ready {os.getpid()} {worker}\\n")
while True:
    signal.pause()
"""


def guard(command: list[str], pid_file: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "asrfleet.fleet.nginx_guard", "--pid-file", str(pid_file), "--", *command]
    return start(argv)


def start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def fake_master(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """The guard running FAKE_MASTER; yields it once the master's handlers are in place."""
    script, notes = tmp_path / "master.py", tmp_path / "notes"
    script.write_text(FAKE_MASTER)
    proc = guard([sys.executable, str(script), str(notes), "3"], tmp_path / "none.pid")
    try:
        wait_for(lambda: any(line.startswith("ready") for line in lines(notes)), 20, "the master is ready")
        yield proc, notes
    finally:
        ended = [int(pid) for pid in lines(notes)[0].split()[1:]] if lines(notes) else []
        procfs.terminate([proc.pid, *ended], 1.0)
        proc.wait(5)


def master_and_worker(notes: Path) -> tuple[int, int]:
    _, master, worker = lines(notes)[0].split()
    return int(master), int(worker)


def test_it_passes_signals_on_and_exits_with_the_masters_status(fake_master) -> None:
    proc, notes = fake_master
    master, worker = master_and_worker(notes)
    assert procfs.read(master).pgid == master != procfs.read(proc.pid).pgid  # a group of its own
    for signum in (signal.SIGHUP, signal.SIGUSR1):
        proc.send_signal(signum)
        name = signal.Signals(signum).name
        wait_for(lambda name=name: name in lines(notes), 10, f"the master got {name}")
    proc.send_signal(signal.SIGQUIT)
    assert proc.wait(10) == 3
    assert lines(notes)[1:] == ["SIGHUP", "SIGUSR1", "SIGQUIT"]
    assert not procfs.alive(master) and procfs.wait_gone([worker], 5) == []


def test_a_killed_masters_workers_are_ended_and_its_status_passed_on(fake_master) -> None:
    proc, notes = fake_master
    master, worker = master_and_worker(notes)
    os.kill(master, signal.SIGKILL)
    assert proc.wait(10) == 128 + signal.SIGKILL
    assert not procfs.alive(worker)  # ended before the guard exited
    stderr = proc.stderr.read()
    assert f"nginx master {master} was killed by SIGKILL" in stderr
    assert f"ending its 1 leftover processes: {worker}" in stderr


def test_a_master_that_cannot_start_is_reported(tmp_path: Path) -> None:
    proc = guard([str(tmp_path / "no-such-nginx")], tmp_path / "none.pid")
    assert proc.wait(10) == 127
    assert "cannot start" in proc.stderr.read()


def test_a_stop_before_the_master_starts_means_it_never_starts(tmp_path: Path) -> None:
    """Signals while the guard is still clearing leftovers (it cannot pass them on yet)."""
    forwarder = Forwarder()
    forwarder.handle(signal.SIGHUP, None)  # a reload: moot, the master reads the config it finds
    assert not forwarder.stopping
    forwarder.handle(signal.SIGQUIT, None)
    marker = tmp_path / "started"
    assert run(["touch", str(marker)], forwarder) == 0 and not marker.exists()


# ---- the real nginx -----------------------------------------------------------------------------


def nginx_binary() -> str:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if binary is None:
        pytest.skip("no nginx binary on PATH or at /usr/sbin/nginx (Debian: apt-get install nginx)")
    return binary


def nginx_fleet(run_dir: Path) -> FleetSpec:
    """A fleet's nginx config on free ports, written out; its instance never runs (nor need it:
    nginx answers /healthz itself)."""
    instance = make_instance(0, port=free_port(), command=("true",), run_dir=run_dir)
    spec = FleetSpec(
        run_dir=run_dir,
        project_dir=run_dir,
        instances=(instance,),
        max_body_bytes=1 << 20,
        lb_port=free_port(),
        nginx_binary=nginx_binary(),
        python=sys.executable,
    )
    for folder in required_directories(spec):
        folder.mkdir(parents=True, exist_ok=True)
    for name, text in render_fleet(spec).items():
        (run_dir / name).write_text(text)
    return spec


class Nginxes:
    """The guards a test starts, each on a fleet config; all of them and their nginx ended after."""

    def __init__(self) -> None:
        self.guards: list[subprocess.Popen] = []
        self.masters: set[int] = set()

    def start(self, spec: FleetSpec) -> tuple[subprocess.Popen, int]:
        """A guard running the argv supervisord would; returns once nginx answers /healthz."""
        old = procfs.read_pid_file(spec.nginx_pid_file)
        proc = start(nginx_program_command(spec))
        self.guards.append(proc)
        wait_for(
            lambda: procfs.read_pid_file(spec.nginx_pid_file) not in (None, old) and lb_answers(spec),
            20,
            "nginx answers /healthz",
        )
        master = procfs.read_pid_file(spec.nginx_pid_file)
        self.masters.add(master)
        return proc, master

    def end(self) -> None:
        left = procfs.members(groups=self.masters) + [p for p in map(procfs.read, self.masters) if p]
        procfs.terminate([g.pid for g in self.guards] + [p.pid for p in left], 2.0)
        for proc in self.guards:
            proc.wait(5)


@pytest.fixture
def nginxes() -> Iterator[Nginxes]:
    started = Nginxes()
    try:
        yield started
    finally:
        started.end()


def group(master: int) -> list[int]:
    return [p.pid for p in procfs.members(groups=[master])]


def test_a_killed_nginx_master_leaves_no_worker_and_frees_the_port(tmp_path, nginxes) -> None:
    spec = nginx_fleet(tmp_path / "run")
    proc, master = nginxes.start(spec)
    workers = [pid for pid in group(master) if pid != master]
    assert len(workers) == 4  # worker_processes 4
    os.kill(master, signal.SIGKILL)
    assert proc.wait(10) == 128 + signal.SIGKILL
    assert group(master) == [] and not port_in_use(spec.lb_host, spec.lb_port)


def test_quit_stops_nginx_gracefully_through_the_guard(tmp_path, nginxes) -> None:
    spec = nginx_fleet(tmp_path / "run")
    proc, master = nginxes.start(spec)
    proc.send_signal(signal.SIGQUIT)  # supervisord's stopsignal
    assert proc.wait(15) == 0
    assert group(master) == [] and not spec.nginx_pid_file.exists()  # nginx's own clean exit


def test_a_new_guard_ends_the_nginx_a_killed_guard_left(tmp_path, nginxes) -> None:
    spec = nginx_fleet(tmp_path / "run")
    first, master = nginxes.start(spec)
    left = group(master)
    first.kill()  # what SIGKILL on the pid supervisord started does: nginx keeps serving
    first.wait(5)
    assert lb_answers(spec) and procfs.wait_gone(left, 0) == left
    second, new_master = nginxes.start(spec)
    assert new_master != master and procfs.wait_gone(left, 0) == []
    second.send_signal(signal.SIGQUIT)
    assert second.wait(15) == 0
    assert f"processes left by an earlier nginx master {master}" in second.stderr.read()


def test_a_guard_leaves_another_fleets_nginx_alone(tmp_path, nginxes) -> None:
    """The pid file names a live nginx master, but of another config: not this guard's to end."""
    other = nginx_fleet(tmp_path / "other")
    _, other_master = nginxes.start(other)
    spec = nginx_fleet(tmp_path / "run")
    spec.nginx_pid_file.write_text(f"{other_master}\n")
    nginxes.start(spec)
    assert procfs.alive(other_master) and len(group(other_master)) == 5 and lb_answers(other)
