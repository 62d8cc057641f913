"""How fast one CPU is while others are busy: the host's share of a fleet's scaling.

    python -m benchmarks.host_cpus [--seconds 3] [--counts 1,4,8,16,24,32,48,64]
    python -m benchmarks.host_cpus --pairs [--seconds 0.25]

Starts N processes that each count in a pure-Python loop for a few seconds, for each N, and
prints the mean (and the slowest) process's speed against one process alone. On a machine whose
CPUs are all real cores at a fixed clock every line reads about 1.0. A cloud VM's vCPUs can share
physical cores (hyper-threads the guest cannot see) and clocks drop as more cores are busy, so
each process slows down as others start: that is what a fleet of Python processes on one host
pays, whatever the fleet's own code does.

`--pairs` asks whether that has a pattern that pinning processes to CPUs could avoid: CPU 0
counting with CPU j counting too, for every j (a hidden hyper-thread sibling would slow CPU 0 to
about half, and only for its j), then half the CPUs busy, taken as the first half and as every
other one.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time


def _count(seconds: float, out: mp.Queue, cpu: int | None = None, start: mp.Event | None = None) -> None:
    """Count for `seconds` (on `cpu` only, and from `start`, where given); put (cpu, counts a second)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    if start is not None:
        start.wait()
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        for _ in range(10_000):
            n += 1
    out.put((cpu, n / seconds))


def pinned(cpus: list[int], seconds: float) -> dict[int, float]:
    """Counts per second of one process on each of `cpus`, all starting together."""
    out: mp.Queue = mp.Queue()
    start = mp.Event()
    workers = [mp.Process(target=_count, args=(seconds, out, cpu, start)) for cpu in cpus]
    for w in workers:
        w.start()
    time.sleep(0.05)  # let them all reach the start line
    start.set()
    rates = dict(out.get() for _ in workers)
    for w in workers:
        w.join()
    return rates


def pairs(seconds: float) -> None:
    """Print how CPU 0 slows with each other CPU busy, and half the CPUs busy two ways."""
    cpus = sorted(os.sched_getaffinity(0))
    first, others = cpus[0], cpus[1:]
    alone = max(pinned([first], seconds)[first] for _ in range(3))
    found = sorted((pinned([first, j], seconds)[first] / alone, j) for j in others)
    if found:
        slowest = ", ".join(f"{j} ({speed:.2f})" for speed, j in found[:8])
        median = found[len(found) // 2][0]
        print(f"CPU {first} with one other busy: median speed {median:.2f}; slowest with {slowest}")
    half = len(cpus) // 2
    for name, chosen in (("the first half", cpus[:half]), ("every other one", cpus[::2]), ("all", cpus)):
        rates = [r / alone for r in pinned(chosen, 4 * seconds).values()]
        print(
            f"{len(rates):3d} busy ({name}): mean speed {sum(rates) / len(rates):.3f} (min {min(rates):.3f})"
        )


def speeds(processes: int, seconds: float) -> list[float]:
    """Counts per second of each of `processes` processes running at once."""
    out: mp.Queue = mp.Queue()
    workers = [mp.Process(target=_count, args=(seconds, out)) for _ in range(processes)]
    for w in workers:
        w.start()
    rates = [out.get()[1] for _ in workers]
    for w in workers:
        w.join()
    return rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.host_cpus")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--counts", default=None, help="process counts (default 1,4,8,16,24,32,48,all CPUs)")
    p.add_argument("--pairs", action="store_true", help="CPU 0 with each other CPU busy (see above)")
    args = p.parse_args(argv)
    if args.pairs:
        pairs(args.seconds)
        return 0
    cpus = os.cpu_count() or 1
    counts = [int(c) for c in args.counts.split(",")] if args.counts else [1, 4, 8, 16, 24, 32, 48, cpus]
    alone = None
    for n in (c for c in counts if c <= cpus):
        rates = speeds(n, args.seconds)
        mean = sum(rates) / n
        alone = alone or mean
        slowest = min(rates) / alone
        print(f"{n:3d} busy: per-process speed {mean / alone:5.3f} (min {slowest:5.3f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
