"""Finding and ending what outlives supervisord: /proc's sessions, groups and listening sockets, and
the check `stop` makes before it says the fleet stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from asrfleet.fleet import procfs
from asrfleet.fleet.commands import EXIT_NOT_STOPPED, LaunchError, end_leftovers
from asrfleet.fleet.spec import FleetSpec, make_instance
from procs import free_port

LISTENER = "import socket, sys, time; s = socket.create_server(('127.0.0.1', int(sys.argv[1]))); "
LISTENER += "print('up', flush=True); time.sleep(60)"


@pytest.fixture
def session() -> Iterator[subprocess.Popen]:
    """A session whose leader exited and left two children: supervisord killed under its programs."""
    proc = subprocess.Popen(
        ["sh", "-c", "sleep 60 & sleep 60 & echo up"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline() == "up\n"
    assert proc.wait(5) == 0
    try:
        yield proc
    finally:
        procfs.terminate([p.pid for p in procfs.members(sessions=[proc.pid])], 1.0)


def fleet_on_free_ports(run_dir: Path) -> FleetSpec:
    instance = make_instance(0, port=free_port(), command=("true",), run_dir=run_dir)
    return FleetSpec(
        run_dir=run_dir, project_dir=run_dir, instances=(instance,), max_body_bytes=1, lb_port=free_port()
    )


def test_members_of_a_session_and_of_a_group(session) -> None:
    found = procfs.members(sessions=[session.pid])
    assert len(found) == 2 and {p.sid for p in found} == {session.pid}
    assert {p.pid for p in procfs.members(groups=[session.pid])} == {p.pid for p in found}
    assert {p.title for p in found} == {"sleep 60"} and {p.ppid for p in found} != {session.pid}


def test_a_zombie_counts_as_gone() -> None:
    proc = subprocess.Popen(["true"], start_new_session=True)  # exits, and is not reaped yet
    try:
        deadline = time.monotonic() + 10
        while not procfs.read(proc.pid).zombie:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not procfs.alive(proc.pid) and procfs.members(groups=[proc.pid]) == []
    finally:
        proc.wait()


def test_listeners_names_the_process_on_a_port() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", LISTENER, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "up\n"
        assert procfs.listeners([port, free_port()]) == {port: {proc.pid}}
    finally:
        proc.kill()
        proc.wait()


def test_stop_ends_what_outlived_supervisord_and_says_so(tmp_path, session) -> None:
    spec = fleet_on_free_ports(tmp_path / "run")
    left = procfs.members(sessions=[session.pid])
    said: list[str] = []
    assert end_leftovers(spec, session.pid, said.append) == 2
    assert procfs.wait_gone([p.pid for p in left], 0) == []
    assert said == [
        "warning: 2 processes of the fleet outlived supervisord; ending them: "
        + ", ".join(p.describe() for p in left)
    ]


def test_stop_fails_while_a_port_of_the_fleet_is_held(tmp_path) -> None:
    """Not the fleet's process (another session): named, left running, and stop fails."""
    spec = fleet_on_free_ports(tmp_path / "run")
    said: list[str] = []
    with socket.create_server(("127.0.0.1", spec.lb_port)):
        with pytest.raises(LaunchError) as err:
            end_leftovers(spec, None, said.append)
        assert err.value.code == EXIT_NOT_STOPPED
        me = procfs.read(os.getpid()).describe()
        assert f"port {spec.lb_port} is still in use by {me}" in str(err.value)
    assert said == [] and end_leftovers(spec, None, said.append) == 0
