"""A Paraformer instance whose engine process is killed leaves no process behind: the audio workers
die with the engine, even one busy with a long file, and the instance exits for supervisord to
restart it. Left behind, a worker ignores SIGTERM and holds hundreds of megabytes."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

import media
import procs
from asrfleet.processes import cpu_seconds, descendants, running

pytestmark = pytest.mark.e2e


def test_a_killed_engine_takes_its_busy_audio_workers_with_it(paraformer_args, tmp_path):
    long = media.write_audio(tmp_path / "long.wav", media.noise_bursts(minutes=10))
    with procs.instance(paraformer_args, tmp_path) as instance:
        engine = httpx.get(instance.url + "/stats", timeout=10).json()["engine"]["engine_pid"]
        workers = descendants(engine)
        tree = descendants(instance.proc.pid)  # engine, workers, multiprocessing's resource tracker
        try:
            assert workers and set(workers) < set(tree)
            idle = {pid: cpu_seconds(pid) for pid in workers}
            threading.Thread(target=post, args=(instance.url, long), daemon=True).start()
            procs.wait_busy(idle)
            os.kill(engine, signal.SIGKILL)
            killed = time.monotonic()
            wait_gone(workers, killed + 5)
            assert instance.proc.wait(timeout=60) == 4
            wait_gone(tree, killed + 10)
        finally:  # the instance's group is stopped only while the instance runs (procs.kill_tree)
            for pid in filter(running, tree):
                os.kill(pid, signal.SIGKILL)


def wait_gone(pids: list[int], deadline: float) -> None:
    while any(running(pid) for pid in pids):
        assert time.monotonic() < deadline, f"outlived the engine: {[p for p in pids if running(p)]}"
        time.sleep(0.05)


def post(url: str, path) -> None:
    """Upload `path` for transcription; the engine is killed under it, so any answer will do."""
    try:
        with open(path, "rb") as f:
            httpx.post(url + "/v1/audio/transcriptions", files={"file": f}, data={"model": "x"}, timeout=120)
    except httpx.HTTPError:
        pass
