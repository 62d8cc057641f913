"""Which torch device an instance runs on, and how many CPU threads it uses."""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def pick_device(requested: str) -> str:
    """'cuda:0' when a GPU is visible and allowed, else 'cpu'.

    An instance sees only its own GPU (the launcher sets CUDA_VISIBLE_DEVICES), so it is cuda:0.
    """
    import torch

    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda:0"
    if requested == "cuda":
        raise RuntimeError("--device cuda was asked for, but no GPU is visible to this instance")
    return "cpu"


def set_threads(requested: int, device: str) -> int:
    """Torch intra-op threads: the given number, or all our CPUs on CPU, or a few on a GPU.

    On a GPU the model's CPU work is feature padding and bookkeeping; more threads only contend
    with the decoding workers.
    """
    import torch

    threads = requested or (available_cpus() if device == "cpu" else min(4, available_cpus()))
    torch.set_num_threads(threads)
    log.info("torch uses %d CPU threads on %s", threads, device)
    return threads


_CU_CTX_SCHED_BLOCKING_SYNC = 0x04


def set_blocking_sync(device: str) -> bool:
    """Make this process's waits for its GPU (each `.cpu()` of a result waits) sleep, not spin.

    CUDA's default spins: the thread that waits keeps one CPU core polling for as long as the GPU
    works. An engine waits for most of every batch, and with several instances on a host those
    polling cores slow the instances' web servers and audio workers (cores share clocks and, on
    most cloud VMs, a physical core). Blocking sync makes the waits sleep until the GPU signals.

    Set on the device's primary context through the driver API (PyTorch has no call for it);
    CUDA allows changing the scheduling flags while the context is active. False where there is
    no GPU or no driver, or the driver refused.
    """
    if not device.startswith("cuda"):
        return False
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    index = int(device.partition(":")[2] or 0)
    handle = ctypes.c_int()
    set_flags = getattr(cuda, "cuDevicePrimaryCtxSetFlags_v2", None) or cuda.cuDevicePrimaryCtxSetFlags
    ok = (
        cuda.cuInit(0) == 0
        and cuda.cuDeviceGet(ctypes.byref(handle), index) == 0
        and set_flags(handle, _CU_CTX_SCHED_BLOCKING_SYNC) == 0
    )
    if not ok:
        log.warning("could not make the engine's GPU waits sleep; CUDA's default (spinning) applies")
    return ok
