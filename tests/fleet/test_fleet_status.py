"""The table `launcher.py status` prints, from a planned fleet and a stand-in supervisord."""

from __future__ import annotations

import re
from pathlib import Path

from asrfleet.fleet.commands import SshOptions, print_fleet
from asrfleet.fleet.gpus import Gpu
from asrfleet.fleet.plan import FleetOptions, plan_fleet


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
