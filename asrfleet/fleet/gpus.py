"""Which GPUs the fleet may use: NVML's list, narrowed by CUDA_VISIBLE_DEVICES and by --gpus.

Indices here are NVML indices (PCI bus order, as nvidia-smi shows them). The instances get
CUDA_DEVICE_ORDER=PCI_BUS_ID so that CUDA numbers the devices the same way.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import pynvml

from asrfleet.cpus import cpus_from_mask


class _FromEnvironment:
    """The default of `visible`: read CUDA_VISIBLE_DEVICES when called, not when imported."""


FROM_ENVIRONMENT = _FromEnvironment()


@dataclass(frozen=True)
class Gpu:
    index: int  # NVML index
    name: str
    memory_total_bytes: int
    uuid: str  # "GPU-8a1b...", as nvidia-smi -L shows it
    cpus: frozenset[int] = frozenset()  # the CPUs nearest it (its socket's); empty: NVML cannot say


def discover_gpus(
    visible: str | None | _FromEnvironment = FROM_ENVIRONMENT,
    requested: list[int] | None = None,
    nvml: Any = pynvml,
) -> list[Gpu]:
    """The GPUs to run instances on; [] when there is no NVML library or no driver.

    visible: a CUDA_VISIBLE_DEVICES value (None: unset, every GPU); by default the environment's.
    requested: NVML indices from --gpus, each of which must be visible.
    nvml: the pynvml module, or a stand-in with the same functions (the tests pass a fake).
    """
    if isinstance(visible, _FromEnvironment):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible_gpus(read_gpus(nvml), visible)
    if requested is None:
        return gpus
    return select_gpus(gpus, requested)


def read_gpus(nvml: Any = pynvml) -> list[Gpu]:
    """Every GPU NVML reports; [] when the NVML library or the driver is missing."""
    try:
        nvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        return [_read_gpu(nvml, index) for index in range(nvml.nvmlDeviceGetCount())]
    finally:
        nvml.nvmlShutdown()


def _read_gpu(nvml: Any, index: int) -> Gpu:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    return Gpu(
        index=index,
        name=_text(nvml.nvmlDeviceGetName(handle)),
        memory_total_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        cpus=_near_cpus(nvml, handle),
    )


def _near_cpus(nvml: Any, handle: Any) -> frozenset[int]:
    """The CPUs NVML says are nearest the GPU; empty, unknown, where it cannot say (old drivers,
    NOT_SUPPORTED): the launcher then splits every core as if there were one socket."""
    # One 64-bit word per 64 CPUs, counting those the kernel knows but has offline, whose numbers
    # can sit below an online CPU's (os.cpu_count() counts only the online ones).
    words = math.ceil(os.sysconf("SC_NPROCESSORS_CONF") / 64)
    try:
        mask = nvml.nvmlDeviceGetCpuAffinity(handle, words)
    except pynvml.NVMLError:
        return frozenset()
    return cpus_from_mask(mask)


def _text(value: str | bytes) -> str:
    # Older pynvml releases return bytes.
    return value.decode() if isinstance(value, bytes) else value


def visible_gpus(gpus: list[Gpu], visible: str | None) -> list[Gpu]:
    """The GPUs CUDA_VISIBLE_DEVICES lets a process see, in the order it names them.

    Entries are indices or GPU UUIDs (a unique prefix is enough). Like CUDA itself, the list ends at
    the first entry that names no GPU, so "" and the common "-1" hide every GPU.
    """
    if visible is None:
        return list(gpus)
    chosen: list[Gpu] = []
    for entry in visible.split(","):
        gpu = _match_entry(gpus, entry.strip())
        if gpu is None:
            break
        if gpu not in chosen:
            chosen.append(gpu)
    return chosen


def _match_entry(gpus: list[Gpu], entry: str) -> Gpu | None:
    if _is_index(entry):
        by_index = [gpu for gpu in gpus if gpu.index == int(entry)]
        return by_index[0] if by_index else None
    if not entry:
        return None
    by_uuid = [gpu for gpu in gpus if gpu.uuid.startswith(entry)]
    return by_uuid[0] if len(by_uuid) == 1 else None


def select_gpus(gpus: list[Gpu], requested: list[int]) -> list[Gpu]:
    """The requested GPUs (NVML indices), in the order requested; each must be among `gpus`."""
    by_index = {gpu.index: gpu for gpu in gpus}
    missing = [index for index in requested if index not in by_index]
    if missing:
        shown = ",".join(str(gpu.index) for gpu in gpus) or "none"
        raise ValueError(
            f"--gpus asks for {','.join(map(str, missing))}, but the visible GPUs are: {shown}"
            " (NVML indices, after CUDA_VISIBLE_DEVICES)"
        )
    return [by_index[index] for index in requested]


def parse_gpu_list(text: str) -> list[int]:
    """'0,2' -> [0, 2]: the value of --gpus."""
    entries = [entry.strip() for entry in text.split(",")]
    if not text.strip() or any(not entry for entry in entries):
        raise ValueError(f"--gpus {text!r}: expected GPU indices separated by commas, such as 0,2")
    bad = [entry for entry in entries if not _is_index(entry)]
    if bad:
        raise ValueError(f"--gpus {text!r}: not a GPU index: {', '.join(bad)}")
    indices = [int(entry) for entry in entries]
    if len(set(indices)) != len(indices):
        raise ValueError(f"--gpus {text!r}: a GPU is named twice")
    return indices


def _is_index(text: str) -> bool:
    # isdigit() alone accepts digits int() refuses, such as "²".
    return text.isascii() and text.isdigit()
