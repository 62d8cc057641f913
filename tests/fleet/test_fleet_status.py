"""The table `launcher.py status` prints, from a planned fleet and a stand-in supervisord."""

from __future__ import annotations

import re
from pathlib import Path

from asrfleet.fleet.commands import SshOptions, print_fleet
from asrfleet.fleet.control import ProcessInfo
from asrfleet.fleet.gpus import Gpu
from asrfleet.fleet.plan import FleetOptions, plan_fleet
from procs import free_port


class NothingRunning:
    """A supervisord that runs none of the fleet's programs (no instance is probed)."""

    def processes(self) -> dict:
        return {}


def table(gpus: list[Gpu], cpus: int, **options: object) -> list[str]:
    opts = FleetOptions(run_dir=Path("/tmp/asr-status-test"), **options)
    spec = plan_fleet(opts, gpus, [(cpu,) for cpu in range(cpus)], "python", Path("/repo")).spec
    lines: list[str] = []
    healthy = print_fleet(spec, NothingRunning(), SshOptions(host="gpu-box", user="me"), lines.append)
    assert not healthy  # nothing runs
    return lines


def test_status_shows_each_instances_gpu_and_cpus():
    gpus = [
        Gpu(index=i, name="NVIDIA H200", memory_total_bytes=141 * 2**30, uuid=f"GPU-{i}") for i in range(2)
    ]
    lines = table(gpus, cpus=32)
    assert re.fullmatch(r"INSTANCE\s+GPU\s+CPUS\s+PORT\s+URL\s+STATE", lines[0])
    assert re.fullmatch(r"asr-0\s+0\s+0-15\s+6006\s+http://127\.0\.0\.1:6006\s+MISSING.*", lines[1])
    assert re.fullmatch(r"asr-1\s+1\s+16-31\s+6007\s+\S+\s+MISSING.*", lines[2])


def test_status_shows_any_for_instances_that_are_not_pinned():
    lines = table([], cpus=8, instances=2)  # a host without GPUs: CPU instances, on every CPU
    assert re.fullmatch(r"asr-0\s+cpu\s+any\s+6006\s+\S+\s+MISSING.*", lines[1])
    assert re.fullmatch(r"asr-1\s+cpu\s+any\s+6007\s+\S+\s+MISSING.*", lines[2])


class States:
    """A supervisord that reports the given states (a process that runs has a pid)."""

    def __init__(self, **states: str) -> None:
        self.states = states

    def processes(self) -> dict:
        return {
            name: ProcessInfo(name, state, 4242, DESCRIPTIONS.get(state, ""), 0)
            for name, state in self.states.items()
        }


DESCRIPTIONS = {"FATAL": "Exited too quickly (process log may have details)", "RUNNING": "pid 4242"}


def run_status(supervisor: object) -> tuple[list[str], bool]:
    """The table of a one-instance fleet on free ports where nothing listens."""
    opts = FleetOptions(
        run_dir=Path("/tmp/asr-status-test"), instances=1, base_port=free_port(), lb_port=free_port()
    )
    spec = plan_fleet(opts, [], [(0,)], "python", Path("/repo")).spec
    lines: list[str] = []
    healthy = print_fleet(spec, supervisor, SshOptions(host="gpu-box", user="me"), lines.append)
    return lines, healthy


def test_an_instance_whose_process_runs_but_refuses_connections_is_loading():
    for state in ("STARTING", "RUNNING"):
        lines, healthy = run_status(States(**{"asr-0": state, "nginx": "RUNNING"}))
        assert re.fullmatch(r"asr-0\s+cpu\s+any\s+\d+\s+\S+\s+loading", lines[1]) and not healthy


def test_nginx_that_runs_but_does_not_answer_is_not_healthy():
    lines, _ = run_status(States(nginx="RUNNING"))
    assert re.search(
        r"^nginx: http://127\.0\.0\.1:\d+  \(RUNNING, but its port does not answer /healthz\)$",
        "\n".join(lines),
        re.M,
    )


def test_a_fatal_nginx_is_shown_as_fatal_with_its_error_log():
    lines, healthy = run_status(States(nginx="FATAL"))
    text = "\n".join(lines)
    assert "(FATAL: Exited too quickly (process log may have details))" in text and not healthy
    assert "nginx is FATAL; its last error log lines:" in text
