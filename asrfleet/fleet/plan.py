"""From what the user asked for and what the machine has, to a FleetSpec: pure, no side effects.

One instance per GPU by default, each pinned to it with CUDA_VISIBLE_DEVICES, on consecutive ports,
and to its GPU's block of the host's cores with `--cpus` (unless --no-pin-cpus). `--per-gpu K` puts
K on one card (they split its memory and its block of cores); a machine without GPUs gets CPU
instances that split its cores by their thread counts.

The blocks come from the CPUs nearest each GPU where NVML names them (`Gpu.cpus`: its socket's, on a
host of several sockets): the GPUs that share a near set split the cores inside it, so that no
instance reaches its GPU across the socket link (a single GPU's instance too, which otherwise has
the host to itself). Where the near sets tell nothing (unknown, every GPU
near every CPU as in a VM, or sets that overlap) or a set holds fewer cores than its GPU slots, every
core is split over the slots in GPU order.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from asrfleet.config import InstanceConfig
from asrfleet.cpus import Core, format_cpu_list, split_cores
from asrfleet.fleet.gpus import Gpu
from asrfleet.fleet.spec import DEFAULT_HOST, DEFAULT_LB_PORT, FleetSpec, InstanceSpec, make_instance

# What one Paraformer-large instance holds on its GPU, for the --per-gpu warning: the CUDA
# context, the weights (Paraformer-large 220 M parameters plus CT-Transformer punctuation), and the
# batch working memory per padded second of audio.
_CONTEXT_GIB = 0.5
_WEIGHTS_GIB = {False: 1.2, True: 0.7}  # fp32, fp16
_BATCH_GIB_PER_S = {False: 0.004, True: 0.002}


class PlanError(ValueError):
    """The fleet asked for cannot run on this machine; the message says what to change."""


@dataclass(frozen=True)
class FleetOptions:
    """Everything `python launcher.py up` was asked for."""

    instance: InstanceConfig = field(default_factory=InstanceConfig)
    instances: int | None = None  # None: one per GPU (times --per-gpu), or one on a CPU host
    gpus: tuple[int, ...] | None = None
    per_gpu: int = 1
    base_port: int = 6006
    lb_host: str = DEFAULT_HOST
    lb_port: int = DEFAULT_LB_PORT
    run_dir: Path = Path("run")
    nginx: str = "nginx"
    ready_timeout_s: float = 900.0
    pin_cpus: bool = True  # each GPU slot's instance on its own block of cores

    def slots(self, gpus: list[Gpu]) -> int:
        """Instances these GPUs can hold: `per_gpu` on each."""
        return len(gpus) * self.per_gpu


@dataclass(frozen=True)
class Plan:
    spec: FleetSpec
    configs: tuple[InstanceConfig, ...]
    warnings: tuple[str, ...]


def plan_fleet(
    opts: FleetOptions, gpus: list[Gpu], cores: list[Core], python: str, project_dir: Path
) -> Plan:
    """`cores`: the physical cores the launcher may use (`asrfleet.cpus.read_cores`)."""
    run_dir = opts.run_dir.resolve()
    if gpus and opts.instance.device != "cpu":
        configs, warnings = _gpu_configs(opts, gpus, cores)
    else:
        configs, warnings = _cpu_configs(opts, sum(len(core) for core in cores))
    instances = []
    for index, (config, gpu) in enumerate(configs):
        temp_dir = run_dir / "tmp" / f"asr-{index}"
        config = config.replace(name=f"asr-{index}", port=opts.base_port + index, temp_dir=temp_dir)
        command = (python, "-m", "asrfleet.instance", *config.to_argv())
        instances.append(make_instance(index, port=config.port, command=command, run_dir=run_dir, gpu=gpu))
        configs[index] = (config, gpu)
    spec = FleetSpec(
        run_dir=run_dir,
        project_dir=project_dir,
        instances=tuple(instances),
        max_body_bytes=opts.instance.max_file_size,
        lb_host=opts.lb_host,
        lb_port=opts.lb_port,
        nginx_binary=opts.nginx,
        nginx_user=_root_name(),
        python=python,
    )
    return Plan(spec, tuple(c for c, _ in configs), tuple(warnings))


def _gpu_configs(opts: FleetOptions, gpus: list[Gpu], cores: list[Core]) -> tuple[list, list[str]]:
    slots = opts.slots(gpus)
    count = opts.instances or slots
    if count > slots:
        raise PlanError(
            f"{count} instances need {math.ceil(count / opts.per_gpu)} GPUs at --per-gpu {opts.per_gpu}, "
            f"but {len(gpus)} {'is' if len(gpus) == 1 else 'are'} available "
            f"({', '.join(str(g.index) for g in gpus)}); use --per-gpu to run several on one GPU"
        )
    assigned = [gpus[i % len(gpus)] for i in range(count)]  # spread over the cards first
    per_card = Counter(g.index for g in assigned)
    shares, warnings = _cpu_shares(opts, gpus, cores)
    configs = []
    for index, gpu in enumerate(assigned):
        share = shares[_slot(index, len(gpus), opts.per_gpu)] if shares else None
        each = len(share) if share else _cpus_each(cores, count)
        config = opts.instance.replace(
            device="cuda",
            threads=opts.instance.threads or min(4, each),
            workers=opts.instance.workers or max(1, min(12, each - 1)),
            gpu_memory_share=opts.instance.gpu_memory_share / per_card[gpu.index],
            cpus=format_cpu_list(share) if share else "",
        )
        configs.append((config, str(gpu.index)))
    return configs, warnings + _sharing_warnings(opts.instance, assigned, per_card)


def _cpus_each(cores: list[Core], count: int) -> int:
    """The CPUs an instance without a block of its own counts on: its part of all of them."""
    return max(1, sum(len(core) for core in cores) // count)


def _cpu_shares(
    opts: FleetOptions, gpus: list[Gpu], cores: list[Core]
) -> tuple[list[frozenset[int]] | None, list[str]]:
    """Each GPU slot's block of cores (`asrfleet/cpus.py` says why), or None: every instance on
    every CPU. Per slot, not per instance, so that growing or shrinking a fleet leaves the
    instances that stay as they are (a changed command line would restart them)."""
    slots = opts.slots(gpus)
    if not opts.pin_cpus:
        return None, []
    near, warnings = _near_shares(gpus, cores, opts.per_gpu)
    if near is not None:
        return near, []
    # One slot has the host to itself where nothing keeps it to a socket.
    if slots == 1:
        return None, warnings
    shares = split_cores(cores, slots)
    if shares is None:
        warnings.append(f"{slots} GPU slots but {len(cores)} CPU cores: the instances share every CPU")
    return shares, warnings


def _near_shares(
    gpus: list[Gpu], cores: list[Core], per_gpu: int
) -> tuple[list[frozenset[int]] | None, list[str]]:
    """Each GPU slot's block from the cores near its GPU, or None where the near sets do not tell
    the sockets apart or one holds fewer cores than its slots (with a warning).

    Cores near none of these GPUs (the other socket's, under `--gpus 4,5,6,7`) stay unused by the
    pinned instances: isolation, each instance on its GPU's socket, over using them."""
    groups = _near_groups(gpus, cores)
    if groups is None:
        return None, []
    total = len(gpus) * per_gpu
    shares: dict[int, frozenset[int]] = {}
    for near, positions in groups.items():
        own = [core for core in cores if near.issuperset(core)]  # whole cores only
        slots = [position * per_gpu + k for position in positions for k in range(per_gpu)]
        blocks = split_cores(own, len(slots))
        if blocks is None:
            named = ",".join(str(gpus[position].index) for position in positions)
            fallback = (
                "it runs on every core"
                if total == 1
                else "the blocks are cut from every core, whichever socket it is on"
            )
            return None, [
                f"{_count(len(slots), 'GPU slot')} on GPU {named} but {_count(len(own), 'CPU core')} "
                f"near {'it' if len(positions) == 1 else 'them'} ({format_cpu_list(near)}): {fallback}"
            ]
        shares.update(zip(slots, blocks, strict=True))  # a card's slots: neighbouring blocks
    return [shares[slot] for slot in range(total)], []


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def _near_groups(gpus: list[Gpu], cores: list[Core]) -> dict[frozenset[int], list[int]] | None:
    """The GPUs' positions in `gpus`, grouped by their near CPUs; None where those sets tell
    nothing: a GPU's is unknown (empty), two overlap, or one set holds every core (a VM, or a
    single socket), where splitting every core is the same."""
    groups: dict[frozenset[int], list[int]] = {}
    for position, gpu in enumerate(gpus):
        groups.setdefault(gpu.cpus, []).append(position)
    near_sets = list(groups)
    unknown = frozenset() in groups
    overlap = sum(len(near) for near in near_sets) > len(frozenset().union(*near_sets))
    everywhere = len(groups) == 1 and all(near_sets[0].issuperset(core) for core in cores)
    return None if unknown or overlap or everywhere else groups


def _slot(index: int, gpus: int, per_gpu: int) -> int:
    """Instance `index`'s slot, GPU by GPU: a card's instances get neighbouring blocks of cores."""
    return (index % gpus) * per_gpu + index // gpus


def _sharing_warnings(config: InstanceConfig, assigned: list[Gpu], per_card: Counter) -> list[str]:
    warnings = []
    each = estimate_gpu_gib(config)
    for gpu in {g.index: g for g in assigned}.values():
        k = per_card[gpu.index]
        if k > 1:
            total = gpu.memory_total_bytes / 2**30
            warnings.append(
                f"GPU {gpu.index} ({gpu.name}, {total:.0f} GiB) runs {k} instances: each needs about "
                f"{each:.1f} GiB, {k * each:.1f} GiB in all, and they take turns on its compute"
            )
    return warnings


def estimate_gpu_gib(config: InstanceConfig) -> float:
    return _CONTEXT_GIB + _WEIGHTS_GIB[config.fp16] + _BATCH_GIB_PER_S[config.fp16] * config.batch_size_s


def _cpu_configs(opts: FleetOptions, cpus: int) -> tuple[list, list[str]]:
    count = opts.instances or 1
    threads = opts.instance.threads or max(1, cpus // count)
    config = opts.instance.replace(device="cpu", threads=threads, workers=opts.instance.workers or 1)
    warning = (
        f"no GPU found: running {count} CPU instance{'s' * (count > 1)} with {threads} thread"
        f"{'s' * (threads > 1)} each ({cpus} CPUs); transcription will be slow"
    )
    return [(config, None) for _ in range(count)], [warning]


def _root_name() -> str | None:
    import os
    import pwd

    return pwd.getpwuid(0).pw_name if os.geteuid() == 0 else None


def with_draining(spec: FleetSpec, names: set[str]) -> FleetSpec:
    """`names` take no new sessions; their own sessions still reach them."""
    return dataclasses.replace(spec, draining=frozenset(names), down=frozenset())


def with_down(spec: FleetSpec, names: set[str]) -> FleetSpec:
    """`names` get nothing: even their own sessions go to the other instances."""
    return dataclasses.replace(spec, draining=frozenset(), down=frozenset(names))


def instance_by_name(spec: FleetSpec, name: str) -> InstanceSpec:
    for instance in spec.instances:
        if instance.name == name:
            return instance
    known = ", ".join(i.name for i in spec.instances)
    raise PlanError(f"no instance {name!r} in this fleet ({known})")
