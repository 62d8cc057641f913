"""Planning a fleet from what was asked and what the machine has: pure, no processes."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

from asrfleet.config import InstanceConfig
from asrfleet.fleet.gpus import Gpu
from asrfleet.fleet.plan import FleetOptions, PlanError, plan_fleet

GPUS = [Gpu(index=i, name="NVIDIA H200", memory_total_bytes=141 * 2**30, uuid=f"GPU-{i}") for i in range(4)]

# A host of two sockets of 16 cores, two hyperthreads each, as read_cores orders them: socket 0's
# (CPUs 0-15, their siblings 32-47), then socket 1's (16-31, siblings 48-63).
TWO_SOCKETS = [(cpu, cpu + 32) for cpu in range(32)]
SOCKET_CPUS = [
    frozenset(range(0, 16)) | frozenset(range(32, 48)),
    frozenset(range(16, 32)) | frozenset(range(48, 64)),
]
EVERY_CORE_SPLIT = ["0-7,32-39", "8-15,40-47", "16-23,48-55", "24-31,56-63"]  # every core over 4 slots


def eight_gpus(near: list[frozenset[int]]) -> list[Gpu]:
    """Eight H200s, GPU i nearest the CPUs near[i]."""
    return [
        Gpu(index=i, name="NVIDIA H200", memory_total_bytes=141 * 2**30, uuid=f"GPU-{i}", cpus=cpus)
        for i, cpus in enumerate(near)
    ]


# GPUs 0-3 on socket 0, 4-7 on socket 1, as NVML reports them.
EIGHT = eight_gpus([SOCKET_CPUS[i // 4] for i in range(8)])


def pick(gpus: list[Gpu], indices: list[int]) -> list[Gpu]:
    """`--gpus` with these indices."""
    return [gpus[i] for i in indices]


def blocks(p) -> list[tuple[str, str]]:
    """Each instance's GPU and --cpus, in instance order."""
    return [(i.gpu, c.cpus) for i, c in zip(p.spec.instances, p.configs, strict=True)]


def block(first_core: int) -> str:
    """Four cores of TWO_SOCKETS from `first_core` on, with their hyperthreads."""
    return f"{first_core}-{first_core + 3},{first_core + 32}-{first_core + 35}"


def plan(gpus=GPUS, cpus=64, cores=None, **options):
    """`cpus` cores of one CPU each, unless `cores` says otherwise."""
    opts = FleetOptions(run_dir=Path("/srv/run"), **options)
    cores = cores if cores is not None else [(cpu,) for cpu in range(cpus)]
    return plan_fleet(opts, gpus, cores, "/venv/bin/python", Path("/srv/repo"))


def test_one_instance_per_gpu_on_consecutive_ports():
    p = plan()
    assert [(i.name, i.gpu, i.port) for i in p.spec.instances] == [
        ("asr-0", "0", 6006),
        ("asr-1", "1", 6007),
        ("asr-2", "2", 6008),
        ("asr-3", "3", 6009),
    ]
    for instance, config in zip(p.spec.instances, p.configs, strict=True):
        assert instance.environment["CUDA_VISIBLE_DEVICES"] == instance.gpu
        assert config.device == "cuda" and config.temp_dir == instance.temp_dir
        assert InstanceConfig.from_argv(list(instance.command[3:])) == config
    assert len({i.temp_dir for i in p.spec.instances}) == 4
    assert p.warnings == ()


def test_chosen_gpus_and_base_port():
    p = plan(gpus=[GPUS[0], GPUS[2]], base_port=7000)
    assert [(i.gpu, i.port) for i in p.spec.instances] == [("0", 7000), ("2", 7001)]


def test_more_instances_than_gpus_is_an_error():
    with pytest.raises(PlanError, match="3 instances need 3 GPUs.*2 are available.*--per-gpu"):
        plan(gpus=GPUS[:2], instances=3)


def test_per_gpu_shares_a_card_with_a_memory_warning():
    p = plan(gpus=GPUS[:2], instances=3, per_gpu=2)
    assert [i.gpu for i in p.spec.instances] == ["0", "1", "0"]
    assert p.configs[0].gpu_memory_share == pytest.approx(0.25)  # two on GPU 0 split its share
    assert p.configs[1].gpu_memory_share == pytest.approx(0.5)
    (warning,) = p.warnings
    assert "GPU 0" in warning and "2 instances" in warning and "GiB" in warning


def test_cpu_host_splits_the_cores_with_a_warning():
    p = plan(gpus=[], cpus=16, instances=4)
    assert all(c.device == "cpu" and c.threads == 4 for c in p.configs)
    assert all(i.environment["CUDA_VISIBLE_DEVICES"] == "" for i in p.spec.instances)
    assert "no GPU found" in p.warnings[0] and "4 threads each" in p.warnings[0]


def test_gpu_instances_split_the_cpus_for_decoding_workers():
    p = plan(cpus=32)
    assert all(c.workers == 7 and c.threads == 4 for c in p.configs)  # 32 / 4 - 1 decoding processes


def test_each_gpu_instance_runs_on_its_own_block_of_cores():
    p = plan(cpus=64)
    assert [c.cpus for c in p.configs] == ["0-15", "16-31", "32-47", "48-63"]
    assert [i.cpus for i in p.spec.instances] == ["0-15", "16-31", "32-47", "48-63"]  # as `status` shows them
    for instance, config in zip(p.spec.instances, p.configs, strict=True):
        assert ("--cpus", config.cpus) in pairwise(instance.command)


def test_hyperthreads_of_a_core_go_to_the_same_instance():
    cores = [(cpu, cpu + 16) for cpu in range(16)]  # 16 cores, their siblings numbered 16-31
    p = plan(gpus=GPUS[:2], cores=cores)
    assert [c.cpus for c in p.configs] == ["0-7,16-23", "8-15,24-31"]
    assert all(c.workers == 12 for c in p.configs)  # 16 CPUs each


def test_instances_of_one_gpu_get_neighbouring_blocks():
    p = plan(gpus=GPUS[:2], per_gpu=2, cpus=64)
    assert [(i.gpu, c.cpus) for i, c in zip(p.spec.instances, p.configs, strict=True)] == [
        ("0", "0-15"),
        ("1", "32-47"),
        ("0", "16-31"),
        ("1", "48-63"),
    ]


def test_blocks_follow_the_gpu_slots_so_resizing_leaves_the_others_alone():
    everyone = plan(cpus=64).spec.instances
    assert plan(cpus=64, instances=2).spec.instances == everyone[:2]
    assert plan(cpus=64, instances=1).spec.instances == everyone[:1]


def test_workers_follow_the_block_of_cores():
    p = plan(cpus=16)
    assert [(c.cpus, c.workers, c.threads) for c in p.configs] == [
        ("0-3", 3, 4),
        ("4-7", 3, 4),
        ("8-11", 3, 4),
        ("12-15", 3, 4),
    ]


def test_no_pin_cpus_lets_every_instance_run_anywhere():
    p = plan(cpus=64, pin_cpus=False)
    assert all(
        c.cpus == "" and "--cpus" not in i.command for i, c in zip(p.spec.instances, p.configs, strict=True)
    )
    assert all(c.workers == 12 for c in p.configs)  # 64 / 4 - 1, at most 12


def test_one_gpu_needs_no_pinning():
    p = plan(gpus=GPUS[:1], cpus=64)
    assert p.configs[0].cpus == "" and p.warnings == ()


def test_one_gpu_runs_on_its_sockets_cores():
    p = plan(gpus=pick(EIGHT, [4]), cores=TWO_SOCKETS)
    assert blocks(p) == [("4", "16-31,48-63")] and p.warnings == ()
    assert plan(gpus=pick(EIGHT, [4]), cores=TWO_SOCKETS, pin_cpus=False).configs[0].cpus == ""


def test_one_gpu_near_every_cpu_has_the_host_to_itself():
    vm = eight_gpus([frozenset(range(64))] * 8)
    assert plan(gpus=vm[:1], cores=TWO_SOCKETS).configs[0].cpus == ""


def test_one_gpu_whose_socket_the_launcher_may_not_use_runs_where_it_may_with_a_warning():
    p = plan(gpus=pick(EIGHT, [4]), cores=TWO_SOCKETS[:16])  # under `taskset -c 0-15,32-47`
    assert p.configs[0].cpus == ""
    assert p.warnings == ("1 GPU slot on GPU 4 but 0 CPU cores near it (16-31,48-63): it runs on every core",)


def test_fewer_cores_than_gpu_slots_shares_every_cpu_with_a_warning():
    p = plan(cpus=3)
    assert all(c.cpus == "" for c in p.configs)
    assert p.warnings == ("4 GPU slots but 3 CPU cores: the instances share every CPU",)


def test_cpu_instances_are_not_pinned():
    p = plan(gpus=[], cpus=16, instances=4)
    assert all(c.cpus == "" for c in p.configs)


def test_nginx_takes_the_upload_limit_of_the_instances():
    p = plan(instance=InstanceConfig(max_file_size=123 * 2**20))
    assert p.spec.max_body_bytes == 123 * 2**20


def test_gpus_of_one_socket_run_on_its_cores_only():
    p = plan(gpus=pick(EIGHT, [4, 5, 6, 7]), cores=TWO_SOCKETS)
    assert blocks(p) == [("4", block(16)), ("5", block(20)), ("6", block(24)), ("7", block(28))]
    assert p.warnings == ()  # socket 0's cores stay unused: isolation over using them
    assert (
        plan(gpus=pick(EIGHT, [4, 5, 6, 7]), cores=TWO_SOCKETS, instances=2).spec.instances
        == (p.spec.instances[:2])
    )


@pytest.mark.parametrize(
    ("socket_of", "first_cores"),
    [
        (lambda gpu: gpu // 4, [0, 4, 8, 12, 16, 20, 24, 28]),  # GPUs 0-3 on socket 0
        (lambda gpu: gpu % 2, [0, 16, 4, 20, 8, 24, 12, 28]),  # even GPUs on socket 0, odd on socket 1
    ],
    ids=["0-3 and 4-7", "even and odd"],
)
def test_every_gpu_gets_its_own_sockets_cores(socket_of, first_cores):
    gpus = eight_gpus([SOCKET_CPUS[socket_of(i)] for i in range(8)])
    p = plan(gpus=gpus, cores=TWO_SOCKETS)
    assert blocks(p) == [(str(i), block(first)) for i, first in enumerate(first_cores)]
    assert p.warnings == ()


def test_per_gpu_instances_share_their_gpus_socket():
    p = plan(gpus=pick(EIGHT, [0, 4, 5]), per_gpu=2, cores=TWO_SOCKETS)
    # Socket 0's 16 cores over GPU 0's two slots; socket 1's over the four of GPUs 4 and 5.
    assert blocks(p) == [
        ("0", "0-7,32-39"),
        ("4", block(16)),
        ("5", block(24)),
        ("0", "8-15,40-47"),
        ("4", block(20)),
        ("5", block(28)),
    ]
    assert all("runs 2 instances" in warning for warning in p.warnings)  # --per-gpu's, none on CPUs


@pytest.mark.parametrize(
    "near",
    [
        [frozenset()] * 4,  # an old driver: NVML cannot say
        [frozenset(), *SOCKET_CPUS[1:] * 3],  # one GPU it cannot say for
        [*SOCKET_CPUS[1:] * 2, *[frozenset(range(0, 24)) | frozenset(range(32, 56))] * 2],  # overlapping
    ],
    ids=["unknown", "one unknown", "overlapping"],
)
def test_near_sets_that_tell_nothing_split_every_core(near):
    p = plan(gpus=eight_gpus(near)[:4], cores=TWO_SOCKETS)
    assert [c.cpus for c in p.configs] == EVERY_CORE_SPLIT
    assert p.warnings == ()


@pytest.mark.parametrize(
    ("cores", "cpus", "warnings"),
    [
        (TWO_SOCKETS, EVERY_CORE_SPLIT, ()),
        ([(0,), (1,), (2,)], [""] * 4, ("4 GPU slots but 3 CPU cores: the instances share every CPU",)),
    ],
    ids=["enough cores", "too few cores: no word on sockets"],
)
def test_every_gpu_near_every_cpu_splits_every_core(cores, cpus, warnings):
    vm = eight_gpus([frozenset(range(64))] * 8)  # a VM: NVML puts each GPU near every CPU
    p = plan(gpus=pick(vm, [4, 5, 6, 7]), cores=cores)
    assert [c.cpus for c in p.configs] == cpus
    assert p.warnings == warnings


def test_a_socket_with_fewer_cores_than_its_slots_splits_every_core_with_a_warning():
    cores = TWO_SOCKETS[:18]  # the launcher may use socket 0 and two cores of socket 1
    p = plan(gpus=pick(EIGHT, [0, 4, 5, 6]), cores=cores)
    assert [c.cpus for c in p.configs] == ["0-4,32-36", "5-9,37-41", "10-13,42-45", "14-17,46-49"]
    assert p.warnings == (
        "3 GPU slots on GPU 4,5,6 but 2 CPU cores near them (16-31,48-63): "
        "the blocks are cut from every core, whichever socket it is on",
    )
