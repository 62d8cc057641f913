"""How fast one CPU is while others are busy: the host's share of a fleet's scaling.

    python -m benchmarks.host_cpus [--seconds 3] [--counts 1,4,8,16,24,32,48,64]

Starts N processes that each count in a pure-Python loop for a few seconds, for each N, and
prints the mean (and the slowest) process's speed against one process alone. On a machine whose
CPUs are all real cores at a fixed clock every line reads about 1.0. A cloud VM's vCPUs can share
physical cores (hyper-threads the guest cannot see) and clocks drop as more cores are busy, so
each process slows down as others start: that is what a fleet of Python processes on one host
pays, whatever the fleet's own code does.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time


def _count(seconds: float, out: mp.Queue) -> None:
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        for _ in range(10_000):
            n += 1
    out.put(n / seconds)


def speeds(processes: int, seconds: float) -> list[float]:
    """Counts per second of each of `processes` processes running at once."""
    out: mp.Queue = mp.Queue()
    workers = [mp.Process(target=_count, args=(seconds, out)) for _ in range(processes)]
    for w in workers:
        w.start()
    rates = [out.get() for _ in workers]
    for w in workers:
        w.join()
    return rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.host_cpus")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--counts", default=None, help="process counts (default 1,4,8,16,24,32,48,all CPUs)")
    args = p.parse_args(argv)
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
