"""nginx under the real fleet (supervisord, nginx's guard, one CPU instance): its master killed, its
guard killed, its port taken by another process; then `stop`, which must leave nothing behind.

The tests run in this order on one fleet of their own: the last one stops it.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fleetctl import launcher, teardown

from asrfleet.fleet import procfs, state
from asrfleet.fleet.control import Supervisor
from asrfleet.fleet.probes import lb_answers, port_in_use
from asrfleet.fleet.spec import FleetSpec
from procs import free_ports, launcher_engine_args

pytestmark = pytest.mark.e2e


@contextmanager
def one_instance_fleet(run_dir: Path, engine_args: list[str]) -> Iterator[tuple[FleetSpec, Supervisor]]:
    ports = free_ports(2)  # the load balancer's, then the instance's
    args = ["--instances", "1", "--run-dir", str(run_dir), "--lb-port", str(ports)]
    args += ["--base-port", str(ports + 1), *launcher_engine_args(engine_args)]
    try:
        launcher(*args)
        spec = state.load(run_dir)
        yield spec, Supervisor(spec.socket_path)
    finally:
        teardown(run_dir)


@pytest.fixture(scope="module")
def fleet(paraformer_args, tmp_path_factory) -> Iterator[tuple[FleetSpec, Supervisor]]:
    with one_instance_fleet(tmp_path_factory.mktemp("nginx-fleet") / "run", paraformer_args) as started:
        yield started


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def nginx_state(supervisor: Supervisor) -> str:
    return supervisor.processes()["nginx"].state


def spawns(spec: FleetSpec) -> int:
    """How many times supervisord has started nginx (its guard) so far."""
    return spec.supervisord_log_file.read_text().count("spawned: 'nginx'")


def master(spec: FleetSpec) -> int:
    pid = procfs.read_pid_file(spec.nginx_pid_file)
    assert pid is not None and procfs.read(pid).title.startswith("nginx: master process")
    return pid


def group(pgid: int) -> list[int]:
    return [p.pid for p in procfs.members(groups=[pgid])]


def wait_back(spec: FleetSpec, supervisor: Supervisor, old_master: int) -> float:
    """Seconds until a new nginx master answers /healthz; then wait until supervisord counts it
    started (RUNNING, after startsecs)."""
    started = time.monotonic()
    wait_for(
        lambda: procfs.read_pid_file(spec.nginx_pid_file) not in (None, old_master) and lb_answers(spec),
        30,
        "a new nginx master answers /healthz",
    )
    back = time.monotonic() - started
    wait_for(lambda: nginx_state(supervisor) == "RUNNING", 30, "supervisord shows nginx RUNNING")
    return back


def fleet_ports(spec: FleetSpec) -> list[tuple[str, int]]:
    return [(spec.lb_host, spec.lb_port)] + [(i.host, i.port) for i in spec.instances]


def status(spec: FleetSpec):
    return launcher("status", "--run-dir", str(spec.run_dir), check=False)


def test_sigkill_nginx_master_ends_its_workers_and_nginx_comes_back_once(fleet) -> None:
    spec, supervisor = fleet
    old = master(spec)
    workers = [pid for pid in group(old) if pid != old]
    before = spawns(spec)
    assert len(workers) == 4
    os.kill(old, signal.SIGKILL)
    assert procfs.wait_gone(workers, 5.0) == []
    back = wait_back(spec, supervisor, old)
    assert spawns(spec) == before + 1 and back < 10
    print(f"nginx answered again {back:.2f} s after its master was killed")
    result = status(spec)
    assert result.returncode == 0, result.stdout
    assert "(RUNNING, answers /healthz)" in result.stdout


def test_sigkill_the_guard_and_the_next_one_ends_the_nginx_it_left(fleet) -> None:
    """SIGKILL on the pid supervisord started: the guard, which cannot pass that on."""
    spec, supervisor = fleet
    old = master(spec)
    left = group(old)
    before = spawns(spec)
    os.kill(supervisor.processes()["nginx"].pid, signal.SIGKILL)
    back = wait_back(spec, supervisor, old)
    assert procfs.wait_gone(left, 0) == [] and spawns(spec) == before + 1
    print(f"nginx answered again {back:.2f} s after its guard was killed")
    assert f"processes left by an earlier nginx master {old}" in spec.nginx_error_log.read_text()


def test_a_foreign_process_on_the_lb_port_makes_nginx_fatal_and_status_says_so(fleet) -> None:
    spec, supervisor = fleet
    supervisor.stop("nginx")
    before = spawns(spec)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((spec.lb_host, spec.lb_port))
        squatter.listen()
        started = time.monotonic()
        supervisor.start_process("nginx")
        wait_for(lambda: nginx_state(supervisor) == "FATAL", 60, "nginx ends FATAL")
        print(f"nginx was FATAL {time.monotonic() - started:.1f} s after it started on a taken port")
        # One start and startretries retries, no more: each failed try counted as a failed start.
        assert spawns(spec) == before + 1 + spec.supervisor.startretries
        result = status(spec)
    assert result.returncode == 1
    assert f"nginx: http://{spec.lb_host}:{spec.lb_port}  (FATAL: Exited too quickly" in result.stdout
    assert f"port {spec.lb_port} is held by {os.getpid()} (" in result.stdout
    assert "nginx is FATAL; its last error log lines:" in result.stdout
    assert "Address already in use" in result.stdout
    supervisor.start_process("nginx")  # the port is free again
    wait_for(lambda: nginx_state(supervisor) == "RUNNING" and lb_answers(spec), 30, "nginx is back")


def test_stop_frees_every_port_and_leaves_no_process_of_the_fleet(fleet) -> None:
    spec, supervisor = fleet
    session = supervisor.pid()
    assert len(procfs.members(sessions=[session])) >= 7  # supervisord, instance, guard, nginx's 5
    result = launcher("stop", "--run-dir", str(spec.run_dir), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "fleet stopped" and "outlived" not in result.stdout
    assert procfs.members(sessions=[session]) == []
    assert not any(port_in_use(host, port) for host, port in fleet_ports(spec))


def test_stop_ends_what_a_killed_supervisord_left_running(paraformer_args, tmp_path) -> None:
    """supervisord gone, its programs still serving: `stop` finds them by supervisord's session."""
    with one_instance_fleet(tmp_path / "run", paraformer_args) as (spec, supervisor):
        session = supervisor.pid()
        left = procfs.members(sessions=[session])
        os.kill(session, signal.SIGKILL)
        assert procfs.wait_gone([session], 5) == [] and lb_answers(spec)
        result = launcher("stop", "--run-dir", str(spec.run_dir), check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout.splitlines()
        assert out[0].startswith("supervisord is not running") and out[-1] == "fleet stopped"
        assert out[1].startswith(f"warning: {len(left) - 1} processes of the fleet outlived supervisord")
        assert procfs.members(sessions=[session]) == []
        assert not any(port_in_use(host, port) for host, port in fleet_ports(spec))
        again = launcher("stop", "--run-dir", str(spec.run_dir), check=False)
        assert again.returncode == 6 and "is not running" in again.stderr
