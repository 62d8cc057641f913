"""Copies between the host and the GPU that the host does not wait for.

The engine's GPU thread queues a batch's work and returns to the host's share of it (the next
batch's padding, the integrate-and-fire recurrence) while the GPU runs. A copy from ordinary
(pageable) host memory, or one that PyTorch makes blocking, waits until the GPU has done all
the work queued before it: the thread sleeps, the GPU then runs dry while the thread wakes and
queues more, and each such wait costs the most when the host's CPUs are busiest (a fleet).
"""

from __future__ import annotations

import numpy as np
import torch


def to_device(values: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """`values` on `device`. To a GPU through pinned memory, queued and not waited for; PyTorch's
    pinned-memory cache keeps the pinned copy until the GPU has read it."""
    tensor = torch.from_numpy(values) if isinstance(values, np.ndarray) else values
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of `tensor` on the host. From a GPU, the copy is queued, not waited for: read it
    only after an event recorded later on the same stream has completed."""
    if tensor.device.type == "cpu":
        return tensor.clone()
    return tensor.to("cpu", non_blocking=True)
