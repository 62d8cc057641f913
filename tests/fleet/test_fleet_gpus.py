"""GPU discovery against a fake NVML."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import pynvml
import pytest

from asrfleet.fleet.gpus import Gpu, discover_gpus, parse_gpu_list, read_gpus, visible_gpus

GIB = 1024**3
UUIDS = [
    "GPU-8a1b2c3d-0000-1111-2222-333344445555",
    "GPU-8a1b9999-0000-1111-2222-333344445555",
    "GPU-f00dcafe-0000-1111-2222-333344445555",
]
# The CPUs nearest each GPU: two on the first socket, one on the second.
NEAR = [frozenset(range(8)), frozenset(range(8)), frozenset(range(8, 16))]


@dataclass
class Memory:
    total: int


def mask(cpus: frozenset[int], words: int) -> ctypes.Array:
    """A CPU set as NVML writes it: `words` 64-bit words (a ctypes array, as pynvml returns it)."""
    return (ctypes.c_ulonglong * words)(
        *(sum(1 << cpu % 64 for cpu in cpus if cpu // 64 == word) for word in range(words))
    )


class FakeNvml:
    """The few pynvml functions discovery uses, over three H200s."""

    def __init__(
        self,
        init_error: int | None = None,
        as_bytes: bool = False,
        near: list[frozenset[int]] = NEAR,
        affinity_error: int | None = None,
    ) -> None:
        self.init_error = init_error
        self.as_bytes = as_bytes
        self.near = near
        self.affinity_error = affinity_error
        self.initialized = False
        self.shutdowns = 0
        self.cpu_set_sizes: list[int] = []

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        assert self.initialized
        return len(UUIDS)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        name = "NVIDIA H200"
        return name.encode() if self.as_bytes else name

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Memory:
        return Memory(total=141 * GIB)

    def nvmlDeviceGetUUID(self, handle: int) -> str | bytes:
        return UUIDS[handle].encode() if self.as_bytes else UUIDS[handle]

    def nvmlDeviceGetCpuAffinity(self, handle: int, cpuSetSize: int) -> ctypes.Array:
        if self.affinity_error is not None:
            raise pynvml.NVMLError(self.affinity_error)
        self.cpu_set_sizes.append(cpuSetSize)
        return mask(self.near[handle], cpuSetSize)  # like NVML, no more words than asked for


def indices(gpus: list[Gpu]) -> list[int]:
    return [gpu.index for gpu in gpus]


def test_reads_every_gpu() -> None:
    nvml = FakeNvml()
    gpus = read_gpus(nvml)
    assert gpus[2] == Gpu(
        index=2, name="NVIDIA H200", memory_total_bytes=141 * GIB, uuid=UUIDS[2], cpus=NEAR[2]
    )
    assert indices(gpus) == [0, 1, 2]
    assert nvml.shutdowns == 1


def test_reads_the_cpus_near_each_gpu_word_by_word(monkeypatch: pytest.MonkeyPatch) -> None:
    configured = {"SC_NPROCESSORS_CONF": 130}  # three words: CPUs 0-63, 64-127, 128-129
    monkeypatch.setattr(os, "sysconf", lambda name: configured[name])
    near = [frozenset({0, 63}), frozenset({64, 100, 127}), frozenset({1, 128, 129})]
    nvml = FakeNvml(near=near)
    assert [gpu.cpus for gpu in read_gpus(nvml)] == near
    assert nvml.cpu_set_sizes == [3, 3, 3]


@pytest.mark.parametrize("error", [pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND])
def test_affinity_nvml_cannot_tell_is_unknown(error: int) -> None:
    gpus = read_gpus(FakeNvml(affinity_error=error))
    assert [gpu.cpus for gpu in gpus] == [frozenset()] * 3
    assert [gpu.uuid for gpu in gpus] == UUIDS  # the rest is read as ever


def test_decodes_bytes_from_old_pynvml() -> None:
    gpu = read_gpus(FakeNvml(as_bytes=True))[0]
    assert (gpu.name, gpu.uuid) == ("NVIDIA H200", UUIDS[0])


@pytest.mark.parametrize("error", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED])
def test_no_nvml_means_no_gpus(error: int) -> None:
    assert discover_gpus(visible=None, nvml=FakeNvml(init_error=error)) == []


def test_no_nvml_with_a_request_says_none_is_visible() -> None:
    nvml = FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with pytest.raises(ValueError, match="visible GPUs are: none"):
        discover_gpus(visible=None, requested=[0], nvml=nvml)


@pytest.mark.parametrize(
    "visible, expected",
    [
        (None, [0, 1, 2]),
        ("", []),
        ("-1", []),
        ("1", [1]),
        ("2,0", [2, 0]),  # CUDA's order is the order named
        (" 0 , 2 ", [0, 2]),
        ("0,0,1", [0, 1]),
        ("0,7,1", [0]),  # CUDA ignores everything from the first entry that names no device
        (UUIDS[2], [2]),
        ("GPU-f00d", [2]),  # a unique prefix is enough
        ("GPU-8a1b,2", []),  # an ambiguous prefix names no device
        (f"{UUIDS[1]},0", [1, 0]),
        ("MIG-1234", []),
    ],
)
def test_visible_devices(visible: str | None, expected: list[int]) -> None:
    assert indices(discover_gpus(visible=visible, nvml=FakeNvml())) == expected


def test_visible_reads_the_environment_when_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert indices(discover_gpus(nvml=FakeNvml())) == [2]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert indices(discover_gpus(nvml=FakeNvml())) == [0, 1, 2]


def test_requested_subset() -> None:
    assert indices(discover_gpus(visible="0,2", requested=[2, 0], nvml=FakeNvml())) == [2, 0]
    assert indices(discover_gpus(visible=None, requested=[1], nvml=FakeNvml())) == [1]


def test_requesting_a_hidden_gpu_names_the_visible_ones() -> None:
    with pytest.raises(ValueError, match=r"asks for 1, but the visible GPUs are: 0,2"):
        discover_gpus(visible="0,2", requested=[1], nvml=FakeNvml())


def test_visible_gpus_keeps_gpu_objects() -> None:
    gpus = read_gpus(FakeNvml())
    assert visible_gpus(gpus, "1") == [gpus[1]]


@pytest.mark.parametrize("text, expected", [("0,2", [0, 2]), (" 1 ", [1]), ("3, 1", [3, 1]), ("10", [10])])
def test_parse_gpu_list(text: str, expected: list[int]) -> None:
    assert parse_gpu_list(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "separated by commas"),
        ("0,,1", "separated by commas"),
        ("0,", "separated by commas"),
        ("a", "not a GPU index: a"),
        ("-1", "not a GPU index: -1"),
        ("1.5", "not a GPU index: 1.5"),
        ("²", "not a GPU index"),
        ("0,0", "named twice"),
    ],
)
def test_parse_gpu_list_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_gpu_list(text)
