"""Run `launcher.py` for real in end-to-end tests, and clean up whatever it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from procs import REPO


def launcher(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "launcher.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"launcher {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def teardown(run_dir: Path) -> None:
    """`launcher.py stop`, and if supervisord is still there, kill it and its process group."""
    launcher("stop", "--run-dir", str(run_dir), check=False, timeout=180)
    pid_file = run_dir / "supervisord.pid"
    if not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
    except (ValueError, ProcessLookupError):
        return
