"""Load generator: drive any instance or fleet URL with real recordings, report what it measured.

    python -m benchmarks.load --url http://127.0.0.1:8000 --audio DIR --concurrency 1,8,32 --out result.json

Each concurrency level is a closed loop: that many virtual users, each sending its next recording
as soon as its last one is answered, until the workload is done. Reported per level: audio seconds
per wall second (RTFx), latency percentiles per request and per audio second, errors, and the peak
GPU memory of every process on the machine's GPUs (NVML), which is each instance's peak.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import platform
import ssl
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from benchmarks.gradio_protocol import GradioEvent, file_form, new_session
from benchmarks.workload import Recording, collect, total_s

_START_TIMEOUT_S = 120.0  # for every client process to start and import


@dataclass
class Sample:
    duration_s: float
    latency_s: float
    error: str | None = None


@dataclass
class LevelRun:
    """What one concurrency level's client processes measured (`run_level`)."""

    samples: list[Sample]
    wall_s: float
    client_cpu_s: float  # the clients' CPU from their start to their end, without their imports


# -- one process of virtual users ----------------------------------------------------------------


async def _user(
    url: str, api: str, queue: asyncio.Queue, samples: list[Sample], timeout: float, tls: ssl.SSLContext
) -> None:
    async with new_session(url, timeout, tls) as session:
        event = GradioEvent(session) if api == "gradio" else None
        while True:
            try:
                recording: Recording = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.perf_counter()
            try:
                if event is not None:
                    await event.call(recording.path, "")
                else:
                    await _openai_call(session, recording.path)
                samples.append(Sample(recording.duration_s, time.perf_counter() - started))
            except Exception as err:  # every failure is counted and reported, none stops the run
                samples.append(Sample(recording.duration_s, time.perf_counter() - started, repr(err)[:300]))


async def _openai_call(session: aiohttp.ClientSession, path: Path) -> dict:
    form = file_form("file", path, model="default")
    async with session.post("/v1/audio/transcriptions", data=form) as response:
        response.raise_for_status()
        return await response.json()


async def _run_users(
    url: str, api: str, recordings: list[Recording], users: int, timeout: float
) -> list[Sample]:
    queue: asyncio.Queue = asyncio.Queue()
    for r in recordings:
        queue.put_nowait(r)
    samples: list[Sample] = []
    # One TLS context for all users: each would otherwise load the CA store (~20 ms of CPU).
    tls = ssl.create_default_context()
    await asyncio.gather(*(_user(url, api, queue, samples, timeout, tls) for _ in range(users)))
    return samples


def _process_main(url, api, recordings, users, timeout, ready, go, out_queue) -> None:
    ready.wait()  # every process has imported
    go.wait()  # and the caller has read its counters: every process starts together
    cpu = time.process_time()
    samples = asyncio.run(_run_users(url, api, recordings, users, timeout))
    out_queue.put(([asdict(s) for s in samples], time.process_time() - cpu))


def run_level(
    url: str | list[str],
    api: str,
    recordings: list[Recording],
    concurrency: int,
    procs: int,
    timeout: float,
    on_start: Callable[[], None] | None = None,
) -> LevelRun:
    """One concurrency level, its users spread over `procs` processes.

    The clock starts when every process has started and imported (a barrier), not after a fixed
    delay: on a busy host the imports of 16 processes can take seconds, and a process still
    importing would both start its users late and take CPU from what is measured. `on_start` is
    called just before, with every process ready and none sending yet, for the caller's own
    counters (CPU seconds, the engines' stats), however long reading them takes.

    Several URLs: process p sends to urls[p % len(urls)], so with `procs` a multiple of their
    number every URL gets the same users (the fleet benchmark's instances without nginx)."""
    urls = _as_list(url)
    procs = max(1, min(procs, concurrency))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    ready = ctx.Barrier(procs + 1)
    go = ctx.Event()
    workers = []
    for p in range(procs):
        share = recordings[p::procs]
        users = concurrency // procs + (1 if p < concurrency % procs else 0)
        target = urls[p % len(urls)]
        workers.append(
            ctx.Process(target=_process_main, args=(target, api, share, users, timeout, ready, go, out))
        )
    for w in workers:
        w.start()
    try:
        ready.wait(timeout=_START_TIMEOUT_S)
    except threading.BrokenBarrierError:
        for w in workers:
            w.kill()
        late = f"the load generator's processes did not start within {_START_TIMEOUT_S:.0f} s"
        raise RuntimeError(late) from None
    if on_start is not None:
        on_start()
    started = time.perf_counter()
    go.set()
    samples: list[Sample] = []
    client_cpu = 0.0
    for _ in workers:
        done, cpu = out.get()
        samples += [Sample(**s) for s in done]
        client_cpu += cpu
    wall = time.perf_counter() - started
    for w in workers:
        w.join()
    return LevelRun(samples, wall, client_cpu)


def _as_list(url: str | list[str]) -> list[str]:
    return [url] if isinstance(url, str) else url


# -- GPU memory ------------------------------------------------------------------------------------


class GpuMemory:
    """Samples NVML every 0.2 s: the peak memory of each process using a GPU."""

    def __init__(self) -> None:
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # no NVML here: no GPU numbers, the rest of the run is unaffected
            self._nvml = None
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> GpuMemory:
        if self._nvml is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            for handle in self._handles:
                for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    used = proc.usedGpuMemory or 0
                    self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), used)
            self._stop.wait(0.2)

    def by_process(self) -> dict[str, int]:
        return {_process_label(pid): peak for pid, peak in sorted(self.peaks.items())}


def _process_label(pid: int) -> str:
    """An instance's --name, or its parent's for an engine process; else the command line's start."""
    try:
        words = _argv(pid)
        if "--name" not in words and "multiprocessing" in " ".join(words):
            parent = _argv(int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]))
            if "--name" in parent:
                return f"{parent[parent.index('--name') + 1]} engine (pid {pid})"
        name = words[words.index("--name") + 1] if "--name" in words else " ".join(words[1:4])
        return f"{name} (pid {pid})"
    except (OSError, ValueError, IndexError):
        return f"pid {pid}"


def _argv(pid: int) -> list[str]:
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


# -- reporting -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summarize(samples: list[Sample], wall: float, concurrency: int, gpu: dict[str, int]) -> dict:
    ok = [s for s in samples if s.error is None]
    audio = sum(s.duration_s for s in ok)
    latency = [s.latency_s for s in ok]
    per_audio = [s.latency_s / s.duration_s for s in ok if s.duration_s > 0]
    errors = [s.error for s in samples if s.error is not None]
    return {
        "concurrency": concurrency,
        "requests": len(samples),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "audio_s": round(audio, 2),
        "wall_s": round(wall, 3),
        "rtfx": round(audio / wall, 1) if wall > 0 else 0.0,
        "latency_s": {
            "p50": round(percentile(latency, 0.5), 3),
            "p95": round(percentile(latency, 0.95), 3),
            "mean": round(statistics.fmean(latency), 3) if latency else None,
        },
        "latency_per_audio_s": {
            "p50": round(percentile(per_audio, 0.5), 4),
            "p95": round(percentile(per_audio, 0.95), 4),
        },
        "gpu_peak_bytes_by_process": gpu,
    }


def hardware() -> dict:
    info = {"host": platform.node(), "cpus": mp.cpu_count(), "python": platform.python_version()}
    try:
        import pynvml

        pynvml.nvmlInit()
        info["gpus"] = [
            pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            for i in range(pynvml.nvmlDeviceGetCount())
        ]
    except Exception:
        info["gpus"] = []
    return info


def code_version(repo: Path) -> str | None:
    """The commit `repo` is at, with "-dirty" where its tracked files differ from it (a copy of an
    edited working tree on a GPU machine); None outside git."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if described.returncode != 0:
        return None
    return described.stdout.strip() or None


def run(
    url: str | list[str],
    recordings: list[Recording],
    levels: list[int],
    api: str = "gradio",
    procs: int = 1,
    timeout: float = 3600.0,
    label: str = "",
    on_start: Callable[[], None] | None = None,
) -> dict:
    """Every level in turn; `on_start` is called as each level's clients start (see run_level)."""
    results = []
    for concurrency in levels:
        with GpuMemory() as gpu:
            measured = run_level(url, api, recordings, concurrency, procs, timeout, on_start)
        level = summarize(measured.samples, measured.wall_s, concurrency, gpu.by_process())
        level["client_cpu_s"] = round(measured.client_cpu_s, 2)
        print(
            f"{label or ' '.join(_as_list(url))} c={concurrency:>3}: {level['rtfx']:>8.1f}x real time, "
            f"p50 {level['latency_s']['p50']:.2f} s, p95 {level['latency_s']['p95']:.2f} s, "
            f"errors {level['errors']}/{level['requests']}",
            flush=True,
        )
        results.append(level)
    return {
        "url": url,
        "api": api,
        "label": label,
        "files": len(recordings),
        "audio_s": round(total_s(recordings), 2),
        "levels": results,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="an instance or the nginx URL")
    p.add_argument("--audio", action="append", required=True, type=Path, help="a folder or file (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="at most this many files from each --audio")
    p.add_argument("--repeat", type=int, default=1, help="send the workload this many times")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--api", choices=("gradio", "openai"), default="gradio")
    p.add_argument("--procs", type=int, default=1, help="client processes (for hundreds of users)")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    recordings = collect(args.audio, args.limit) * args.repeat
    levels = [int(c) for c in args.concurrency.split(",")]
    print(f"{len(recordings)} recordings, {total_s(recordings):.0f} s of audio; {hardware()}", flush=True)
    measured = run(args.url, recordings, levels, args.api, args.procs, args.timeout)
    result = {"hardware": hardware(), **measured}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0 if all(level["errors"] == 0 for level in result["levels"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
