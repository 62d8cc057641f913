"""An instance whose engine process dies exits with its own code, for supervisord to restart it."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

import procs

pytestmark = pytest.mark.e2e


def test_the_instance_exits_4_when_its_engine_dies(whisper_dir, tmp_path):
    args = ["--engine", "whisper", "--model", str(whisper_dir), "--device", "cpu", "--threads", "1"]
    with procs.instance(args, tmp_path) as running:
        stats = httpx.get(running.url + "/stats", timeout=10).json()["engine"]
        assert stats["engine_pid"] != running.proc.pid  # the engine has a process of its own
        os.kill(stats["engine_pid"], signal.SIGKILL)
        assert running.proc.wait(timeout=60) == 4
        assert "exiting: the engine process died (exit code -9)" in running.log_tail()
