"""`--cpus`: the instance, its engine process and its audio workers, every thread of them, run on
the CPUs given; CPUs the machine does not have are a clear error, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import procs

pytestmark = pytest.mark.e2e


def session_threads(session: int) -> dict[str, str]:
    """'pid/tid (name)' -> Cpus_allowed_list, for every thread of every process in a session."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) != session:
                continue
            for task in (entry / "task").iterdir():
                status = dict(line.split(":\t", 1) for line in (task / "status").read_text().splitlines())
                found[f"{entry.name}/{task.name} ({status['Name']})"] = status["Cpus_allowed_list"]
        except (OSError, IndexError, ValueError):  # it exited while we looked
            continue
    return found


def test_an_instance_runs_every_process_and_thread_on_its_cpus(paraformer_args, tmp_path):
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        pytest.skip("one CPU only: pinning to it would show nothing")
    cpu = str(available[-1])
    with procs.instance([*paraformer_args, "--cpus", cpu], tmp_path) as running:
        stats = httpx.get(running.url + "/stats", timeout=10).json()["engine"]
        threads = session_threads(running.proc.pid)
        pids = {name.split("/")[0] for name in threads}
        assert {str(running.proc.pid), str(stats["engine_pid"])} <= pids
        assert len(pids) >= 3  # the web server, the engine, its audio worker
        assert set(threads.values()) == {cpu}, threads
        assert f"running on CPUs {cpu}" in running.log_tail(200)


def run_instance(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "asrfleet.instance", "--port", str(procs.free_port()), *args],
        cwd=procs.REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cpus_the_machine_lacks_exit_2_with_the_reason():
    missing = max(os.sched_getaffinity(0)) + 1000
    result = run_instance("--cpus", f"0,{missing}", "--device", "cpu")
    assert result.returncode == 2
    assert f"--cpus 0,{missing}: CPU {missing} is not available here" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_a_malformed_cpu_list_is_refused_by_the_parser():
    result = run_instance("--cpus", "3-1")
    assert result.returncode == 2
    assert "argument --cpus: '3-1' is not a CPU list: the range 3-1 runs backwards" in result.stderr
