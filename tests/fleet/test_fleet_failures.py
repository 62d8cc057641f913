"""The launcher's answers when things go wrong: offline with a hub id, a crash-looping instance."""

from __future__ import annotations

import pytest
from fleetctl import launcher, teardown

from procs import free_port

pytestmark = pytest.mark.e2e


def test_offline_hub_id_fails_fast_and_names_model_dir(tmp_path):
    result = launcher(
        "--instances", "1", "--run-dir", str(tmp_path / "run"), "--device", "cpu", check=False, timeout=120
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "--model DIR" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "supervisord.pid").exists()  # nothing was started


def test_a_crash_loop_ends_fatal_and_status_says_why(tmp_path, vad_dir):
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    run_dir = tmp_path / "run"
    args = [
        "--instances",
        "1",
        "--run-dir",
        str(run_dir),
        "--lb-port",
        str(free_port()),
        "--base-port",
        str(free_port()),
        "--model",
        str(broken),
        "--vad-model",
        str(vad_dir),
        "--no-punc",
        "--ready-timeout",
        "240",
    ]
    try:
        up = launcher(*args, check=False, timeout=300)
        assert up.returncode == 5, up.stdout + up.stderr
        assert "asr-0 failed to start (FATAL" in up.stderr
        assert "exiting: --model" in up.stderr and "not a FunASR model directory" in up.stderr
        status = launcher("status", "--run-dir", str(run_dir), check=False)
        assert status.returncode == 1
        assert "FATAL" in status.stdout and "last log lines" in status.stdout
        assert "exiting: --model" in status.stdout
    finally:
        teardown(run_dir)
