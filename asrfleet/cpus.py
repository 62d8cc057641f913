"""The host's CPUs: Linux CPU lists ("0-15,32-47"), its physical cores, and shares of them.

The launcher gives each GPU slot of a fleet its own block of whole cores (`split_cores`) and each
instance runs on its slot's block (`python -m asrfleet.instance --cpus`), as it runs on its GPU.
It is there for isolation, not speed: one instance's audio workers, web server and engine never
run on another instance's CPUs, so a burst of decoding for one GPU cannot take the CPUs that
another GPU's engine needs. Where NVML names each GPU's nearest CPUs
(`cpus_from_mask`; its socket's, on a host of several), the blocks come from those
(`asrfleet/fleet/plan.py`), so an instance's memory and PCIe traffic stay on its GPU's socket.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

SYSFS_CPUS = Path("/sys/devices/system/cpu")

_RANGE = re.compile(r"(\d+)(?:-(\d+))?", re.ASCII)

Core = tuple[int, ...]  # the logical CPUs (hyperthreads) of one physical core


def parse_cpu_list(text: str) -> frozenset[int]:
    """'0-3,8,10-11' -> {0, 1, 2, 3, 8, 10, 11}; ValueError with the reason for anything else."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        # ASCII digits only: str.isdigit() also takes digits int() refuses, such as "²".
        match = _RANGE.fullmatch(part)
        if match is None:
            raise ValueError(f"{text!r} is not a CPU list (like 0-7,16-23)")
        low = int(match[1])
        high = int(match[2]) if match[2] else low
        if high < low:
            raise ValueError(f"{text!r} is not a CPU list: the range {part} runs backwards")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: set[int] | frozenset[int] | tuple[int, ...]) -> str:
    """{0, 1, 2, 3, 8} -> '0-3,8': the shortest list, as Linux writes it (Cpus_allowed_list)."""
    ranges: list[str] = []
    ordered = sorted(cpus)
    start = previous = ordered[0]
    for cpu in [*ordered[1:], None]:
        if cpu is not None and cpu == previous + 1:
            previous = cpu
            continue
        ranges.append(str(start) if start == previous else f"{start}-{previous}")
        if cpu is not None:
            start = previous = cpu
    return ",".join(ranges)


def cpus_from_mask(words: Iterable[int]) -> frozenset[int]:
    """A CPU bitmask of 64-bit words, as NVML's nvmlDeviceGetCpuAffinity returns it, to its CPUs:
    bit b of word i is CPU 64 * i + b. [0b101, 1] -> {0, 2, 64}."""
    return frozenset(
        64 * index + bit for index, word in enumerate(words) for bit in range(64) if int(word) >> bit & 1
    )


def read_cores(allowed: set[int] | None = None, sysfs: Path = SYSFS_CPUS) -> list[Core]:
    """The physical cores among the CPUs this process may use, ordered by socket, then core.

    Hyperthreads of one core share its execution units, so they stay together in one share. Where
    sysfs has no topology (some containers), every CPU counts as a core of its own.
    """
    allowed = set(os.sched_getaffinity(0)) if allowed is None else allowed
    by_core: dict[tuple[int, int], list[int]] = {}
    for cpu in sorted(allowed):
        by_core.setdefault(_core_key(cpu, sysfs), []).append(cpu)
    return [tuple(cpus) for _, cpus in sorted(by_core.items(), key=lambda item: (item[0][0], item[1][0]))]


def _core_key(cpu: int, sysfs: Path) -> tuple[int, int]:
    """(socket, core) of a CPU; (0, -1 - cpu), a core of its own, where sysfs does not say."""
    topology = sysfs / f"cpu{cpu}" / "topology"
    try:
        socket = int((topology / "physical_package_id").read_text())
        core = int((topology / "core_id").read_text())
    except (OSError, ValueError):
        return (0, -1 - cpu)
    return (socket, core)


def split_cores(cores: list[Core], shares: int) -> list[frozenset[int]] | None:
    """`shares` blocks of consecutive whole cores, as equal as they can be (the first ones get the
    cores left over); None when there are fewer cores than shares."""
    if shares < 1 or len(cores) < shares:
        return None
    size, extra = divmod(len(cores), shares)
    blocks = []
    start = 0
    for index in range(shares):
        end = start + size + (1 if index < extra else 0)
        blocks.append(frozenset(cpu for core in cores[start:end] for cpu in core))
        start = end
    return blocks


def check_available(cpus: frozenset[int], option: str = "--cpus") -> None:
    """ValueError naming the CPUs, and `option`, when some are not this process's to use (another
    cgroup, or a smaller machine than the launcher planned for)."""
    available = os.sched_getaffinity(0)
    missing = cpus - available
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ValueError(
            f"{option} {format_cpu_list(cpus)}: CPU {format_cpu_list(missing)} {verb} not available here "
            f"(available: {format_cpu_list(available)})"
        )


def pin_process(cpus: frozenset[int]) -> None:
    """Run this process, and every process and thread it starts from now on, on these CPUs
    (`check_available` first)."""
    check_available(cpus)
    for thread in _threads():  # a thread's affinity is its own: set every one that already runs
        os.sched_setaffinity(thread, cpus)


def _threads() -> list[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: the calling thread, which the next ones inherit from
        return [0]
