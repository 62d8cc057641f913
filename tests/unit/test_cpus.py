"""CPU lists, the host's cores, and shares of them (asrfleet/cpus.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from asrfleet.cpus import (
    cpus_from_mask,
    format_cpu_list,
    parse_cpu_list,
    read_cores,
    split_cores,
)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0-3,8,10-11", {0, 1, 2, 3, 8, 10, 11}), ("5", {5}), (" 0 - 1", None), ("2, 4", {2, 4}), ("7-7", {7})],
)
def test_parse_cpu_list(text, cpus):
    if cpus is None:
        with pytest.raises(ValueError, match="is not a CPU list"):
            parse_cpu_list(text)
    else:
        assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize("text", ["", "a", "1-", "-1", "1,,2", "0-3x", "1.5", "²", "1-²"])
def test_parse_cpu_list_rejects_what_is_not_one(text):
    with pytest.raises(ValueError, match="is not a CPU list"):
        parse_cpu_list(text)


def test_parse_cpu_list_rejects_a_backward_range():
    with pytest.raises(ValueError, match="the range 3-1 runs backwards"):
        parse_cpu_list("0,3-1")


@pytest.mark.parametrize(
    ("cpus", "text"),
    [({0, 1, 2, 3, 8}, "0-3,8"), ({5}, "5"), ((9, 1, 0, 2), "0-2,9"), ({0, 2, 4}, "0,2,4"), ({3, 4}, "3-4")],
)
def test_format_cpu_list_is_the_shortest_list(cpus, text):
    assert format_cpu_list(cpus) == text
    assert parse_cpu_list(text) == set(cpus)


@pytest.mark.parametrize(
    ("words", "cpus"),
    [
        ([], set()),
        ([0, 0], set()),
        ([0b1011], {0, 1, 3}),
        ([1 << 63, 0, 1], {63, 128}),  # word i covers CPUs 64 * i to 64 * i + 63
        ([0, 2**64 - 1], set(range(64, 128))),
    ],
)
def test_cpus_from_mask_reads_64_cpus_a_word(words, cpus):
    assert cpus_from_mask(words) == cpus


def fake_sysfs(root: Path, topology: dict[int, tuple[int, int]]) -> Path:
    """A /sys/devices/system/cpu with each CPU's (socket, core)."""
    for cpu, (socket, core) in topology.items():
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "physical_package_id").write_text(f"{socket}\n")
        (folder / "core_id").write_text(f"{core}\n")
    return root


# Two sockets of two cores, two hyperthreads each, numbered as Linux numbers them: the first
# thread of every core, then their siblings.
TWO_SOCKETS = {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (1, 1), 4: (0, 0), 5: (0, 1), 6: (1, 0), 7: (1, 1)}


def test_read_cores_keeps_hyperthreads_together_socket_by_socket(tmp_path):
    sysfs = fake_sysfs(tmp_path, TWO_SOCKETS)
    assert read_cores(set(range(8)), sysfs) == [(0, 4), (1, 5), (2, 6), (3, 7)]


def test_read_cores_only_counts_the_allowed_cpus(tmp_path):
    sysfs = fake_sysfs(tmp_path, TWO_SOCKETS)
    assert read_cores({1, 2, 5}, sysfs) == [(1, 5), (2,)]


def test_read_cores_without_topology_counts_every_cpu_as_a_core(tmp_path):
    assert read_cores({3, 0, 1}, tmp_path) == [(0,), (1,), (3,)]


def test_read_cores_of_this_machine_covers_its_cpus():
    cores = read_cores()
    assert sorted(cpu for core in cores for cpu in core) == sorted(os.sched_getaffinity(0))


def test_read_cores_keeps_to_the_cpus_the_launcher_was_started_on():
    # `taskset -c 0 python launcher.py` (the README's way to keep two fleets apart) narrows what
    # this process may use; read_cores must not reach past it.
    everything = os.sched_getaffinity(0)
    first = min(everything)
    os.sched_setaffinity(0, {first})
    try:
        assert [cpu for core in read_cores() for cpu in core] == [first]
    finally:
        os.sched_setaffinity(0, everything)


def test_split_cores_gives_consecutive_blocks_of_whole_cores():
    cores = [(0, 4), (1, 5), (2, 6), (3, 7)]
    assert split_cores(cores, 2) == [{0, 4, 1, 5}, {2, 6, 3, 7}]
    assert split_cores(cores, 1) == [set(range(8))]


def test_split_cores_gives_the_cores_left_over_to_the_first_blocks():
    blocks = split_cores([(cpu,) for cpu in range(7)], 3)
    assert blocks == [{0, 1, 2}, {3, 4}, {5, 6}]


def test_split_cores_needs_a_core_per_share():
    assert split_cores([(0,), (1,)], 3) is None
    assert split_cores([(0,)], 0) is None


PIN = textwrap.dedent(
    """
    import os, sys, threading
    from asrfleet.cpus import pin_process
    started = threading.Event()
    stop = threading.Event()
    def wait():
        started.set()
        stop.wait()
    before = threading.Thread(target=wait)
    before.start()
    started.wait()
    target = frozenset({int(sys.argv[1])})
    try:
        pin_process(frozenset({int(sys.argv[2])}))
    except ValueError as err:
        print("error:", err)
    pin_process(target)
    after = threading.Thread(target=stop.wait)
    after.start()
    print(sorted(os.sched_getaffinity(0)), sorted(os.sched_getaffinity(before.native_id)),
          sorted(os.sched_getaffinity(after.native_id)))
    stop.set()
    """
)


def test_pin_process_pins_the_threads_that_run_and_those_to_come():
    cpu = max(os.sched_getaffinity(0))
    missing = max(os.sched_getaffinity(0)) + 1000
    out = subprocess.run(
        [sys.executable, "-c", PIN, str(cpu), str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    available = format_cpu_list(os.sched_getaffinity(0))
    assert out[0] == f"error: --cpus {missing}: CPU {missing} is not available here (available: {available})"
    assert out[1] == f"[{cpu}] [{cpu}] [{cpu}]"
