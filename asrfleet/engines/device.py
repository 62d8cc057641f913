"""Which torch device an instance runs on, and how many CPU threads it uses."""

from __future__ import annotations

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
