"""The batch: pull recordings from one shared queue, largest first, as many in flight as asked,
write each file's outputs, journal it, show progress, and sum up at the end."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import httpx

from asrfleet.batch.client import FileFailed, Fleets, ServerUnavailable
from asrfleet.batch.inputs import Item, items
from asrfleet.batch.journal import Journal, write_atomically
from asrfleet.transcript import FORMATS, render


class Interrupted(Exception):
    """Ctrl-C stopped the batch; every file finished before it is journaled."""


@dataclass(frozen=True)
class BatchOptions:
    inputs: list[str]
    out_dir: Path
    urls: list[str]
    formats: tuple[str, ...] = ("txt", "srt", "vtt", "json")
    concurrency: int = 16  # requests in flight per URL
    attempts: int = 6


@dataclass
class Summary:
    files: int = 0
    skipped: int = 0
    done: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    by_url: dict[str, int] = field(default_factory=dict)

    @property
    def rtfx(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0


class Progress:
    """One line: files and audio hours done, speed, ETA; redrawn in place on a terminal."""

    def __init__(self, total_files: int, total_audio_s: float, out: TextIO = sys.stderr) -> None:
        self.total_files = total_files
        self.total_audio_s = total_audio_s
        self.out = out
        self.started = time.monotonic()
        self.tty = out.isatty()
        self._last_print = 0.0

    def update(self, summary: Summary, final: bool = False) -> None:
        now = time.monotonic()
        if not final and not self.tty and now - self._last_print < 10:
            return
        self._last_print = now
        elapsed = now - self.started
        rtfx = summary.audio_s / elapsed if elapsed > 0 else 0.0
        left = max(self.total_audio_s - summary.audio_s, 0.0)
        eta = _clock(left / rtfx) if rtfx > 0 and left else "--:--:--"
        finished = summary.done + len(summary.failures)
        hours = f"{summary.audio_s / 3600:.2f}/{self.total_audio_s / 3600:.2f} h of audio"
        line = (
            f"{finished}/{self.total_files} files, {hours}, {rtfx:.0f}x real time, ETA {eta}, "
            f"{len(summary.failures)} failed"
        )
        self.out.write(("\r" + line + " " * 4) if self.tty else line + "\n")
        if final and self.tty:
            self.out.write("\n")
        self.out.flush()


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run_batch(options: BatchOptions) -> Summary:
    for fmt in options.formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    options.out_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(options.out_dir)
    try:
        return asyncio.run(_run(options, journal))
    finally:
        journal.close()


async def _run(options: BatchOptions, journal: Journal) -> Summary:
    every = items(options.inputs)
    todo = [i for i in every if not journal.is_done(i)]
    summary = Summary(files=len(every), skipped=len(every) - len(todo))
    progress = Progress(len(todo), sum(i.duration_s or 0.0 for i in todo))
    queue: asyncio.Queue[Item] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    fleets = Fleets.from_urls(options.urls, options.attempts)
    started = time.monotonic()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits) as client:
        workers = [
            asyncio.create_task(_worker(queue, client, fleets, journal, options, summary, progress))
            for _ in range(options.concurrency * len(options.urls))
        ]
        try:
            await until_done_or_interrupted(workers)
        finally:
            for w in workers:
                w.cancel()
            summary.wall_s = time.monotonic() - started
            summary.by_url = dict(fleets.stats)
            progress.update(summary, final=True)
    return summary


async def until_done_or_interrupted(workers: list[asyncio.Task]) -> None:
    """Wait for the workers; on Ctrl-C (SIGINT), cancel them and raise `Interrupted`.

    The signal handler only sets an event. asyncio's own handling cancels the main task and counts
    on every library under it to pass the cancellation on: one that swallows it lets the batch run
    to its end and exit 0. A second Ctrl-C gets Python's default: KeyboardInterrupt at once.
    """
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()

    def on_sigint() -> None:
        interrupted.set()
        loop.remove_signal_handler(signal.SIGINT)

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (NotImplementedError, RuntimeError, ValueError):  # not Unix, or not the main thread
        pass
    everything = asyncio.gather(*workers)
    waiter = asyncio.ensure_future(interrupted.wait())
    try:
        await asyncio.wait({everything, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGINT)  # Python's default again
        waiter.cancel()
    if not everything.done():
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise Interrupted
    everything.result()  # a worker's own failure, raised here


async def _worker(
    queue: asyncio.Queue[Item],
    client: httpx.AsyncClient,
    fleets: Fleets,
    journal: Journal,
    options: BatchOptions,
    summary: Summary,
    progress: Progress,
) -> None:
    while True:
        try:
            item: Item = queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        timeout = 600.0 + (item.duration_s or 3600.0) * 0.5
        try:
            transcript = await fleets.transcribe(client, item.path, timeout)
        except (FileFailed, ServerUnavailable) as err:
            summary.failures.append((str(item.relative), str(err)))
            journal.record(item, "failed", reason=str(err))
        else:
            for fmt in options.formats:
                target = options.out_dir / item.relative.with_name(f"{item.relative.name}.{fmt}")
                write_atomically(target, render(transcript, fmt))
            journal.record(item, "done", duration_s=transcript.duration)
            summary.done += 1
            summary.audio_s += transcript.duration
        progress.update(summary)


def print_summary(summary: Summary, out: TextIO = sys.stdout) -> None:
    out.write(
        f"\n{summary.done} transcribed, {len(summary.failures)} failed, {summary.skipped} already done "
        f"(of {summary.files}); {summary.audio_s / 3600:.2f} h of audio in {summary.wall_s:.1f} s, "
        f"{summary.rtfx:.0f}x real time\n"
    )
    for url, count in sorted(summary.by_url.items()):
        out.write(f"  {url}: {count} files\n")
    for name, reason in summary.failures:
        out.write(f"  FAILED {name}: {reason}\n")
    if summary.failures:
        out.write("Run the same command again to retry the failed files; finished ones are skipped.\n")
