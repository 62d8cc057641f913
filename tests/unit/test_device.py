"""How an engine waits for its GPU: CUDA's default spins a core; blocking sync sleeps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from asrfleet.engines.device import set_blocking_sync

REPO = Path(__file__).resolve().parents[2]

# A fresh process per case: the flag belongs to the process's CUDA context. It prints the CPU
# seconds the process spent while the GPU slept for about half a second.
_WAIT = """
import time, torch
from asrfleet.engines.device import set_blocking_sync
if sys.argv[1] == "block":
    assert set_blocking_sync("cuda:0")
torch.zeros(1, device="cuda")
torch.cuda.synchronize()
cpu, wall = time.process_time(), time.perf_counter()
torch.cuda._sleep(int(1e9))  # GPU clock cycles: about half a second on current GPUs
torch.cuda.synchronize()
print(time.process_time() - cpu, time.perf_counter() - wall)
"""


def test_no_gpu_no_flag():
    assert set_blocking_sync("cpu") is False


def _cpu_while_waiting(mode: str) -> tuple[float, float]:
    code = "import sys\n" + _WAIT
    out = subprocess.run(
        [sys.executable, "-c", code, mode], capture_output=True, text=True, check=True, cwd=REPO
    )
    cpu, wall = map(float, out.stdout.split())
    return cpu, wall


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a GPU")
def test_block_sleeps_while_the_gpu_works():
    spin_cpu, spin_wall = _cpu_while_waiting("default")  # CUDA's default: the waiting thread spins
    block_cpu, block_wall = _cpu_while_waiting("block")
    assert spin_wall > 0.2 and block_wall > 0.2  # the GPU did sleep
    assert spin_cpu > 0.8 * spin_wall  # a core polled the whole time
    assert block_cpu < 0.2 * block_wall
