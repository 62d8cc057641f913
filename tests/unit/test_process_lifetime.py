"""Every process of an engine's tree dies with its parent, however the parent dies (SIGKILL
included), within seconds, also while it is busy or cannot run at all (lifetime.py).

Each test kills a real parent process, started here, and watches its children through /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import media
import procs
from asrfleet.config import InstanceConfig
from asrfleet.engines.base import TranscribeOptions
from asrfleet.engines.lifetime import EXIT_ORPHANED
from asrfleet.engines.process import EngineProcess
from asrfleet.processes import cpu_seconds, descendants, running

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="watches processes in /proc")

PATHS = [p for p in sys.path if p]
GONE_WITHIN_S = 5.0
ENGINE = "fake_engine:FakeEngine"

# A parent that starts `CHILD` (a child given the parent's pid), prints the child's pid once the
# child says it is armed, and then waits to be killed.
PARENT = """
import os, subprocess, sys
sys.path[:0] = {paths!r}
command = [sys.executable, "-c", {child!r}, str(os.getpid())]
child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
assert child.stdout.readline() == "armed\\n"
print("pids:", child.pid, flush=True)
sys.stdin.readline()
"""

ASKS_THE_KERNEL_THEN_STOPS = """
import os, signal, sys
from asrfleet.engines.lifetime import die_with_parent
die_with_parent(int(sys.argv[1]))
print("armed", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)  # no thread of ours can run from here on
"""

WATCHES_WHILE_BUSY = """
import sys
from asrfleet.engines.lifetime import watch_parent
watch_parent(int(sys.argv[1]), interval_s=0.2)
print("armed", flush=True)
while True:  # busy, reading nothing from the parent
    sum(range(10_000))
"""


@pytest.fixture
def start_parent():
    """`start_parent(code)`: `python -c code`, and the pids it prints on a line of its own after
    "pids:" (libraries in its children print too). Whatever a failed test leaves of it and of its
    children (`leftovers`, appended by the test) is killed afterwards."""
    parents: list[subprocess.Popen] = []
    leftovers: list[int] = []

    def start(code: str) -> tuple[subprocess.Popen, list[int]]:
        parent = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        parents.append(parent)
        for line in parent.stdout:
            if line.startswith("pids:"):
                return parent, [int(pid) for pid in line.split()[1:]]
        raise AssertionError(f"the parent exited with {parent.wait()} before it printed its children")

    start.leftovers = leftovers
    yield start
    for parent in parents:
        leftovers += descendants(parent.pid)
        parent.kill()
        parent.wait()
    for pid in leftovers:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


def kill(parent: subprocess.Popen) -> float:
    """SIGKILL `parent`; the time it was killed at."""
    parent.kill()
    parent.wait()
    return time.monotonic()


def seconds_until_gone(pids: list[int], since: float) -> float:
    """How long after `since` the last of `pids` was gone; fails past GONE_WITHIN_S."""
    while any(running(pid) for pid in pids):
        assert time.monotonic() - since < GONE_WITHIN_S, [pid for pid in pids if running(pid)]
        time.sleep(0.05)
    return time.monotonic() - since


def wait_state(pid: int, letter: str) -> None:
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != letter:
        assert time.monotonic() < deadline
        time.sleep(0.02)


# -- lifetime.py on its own ---------------------------------------------------------------------


def test_the_kernel_kills_a_child_that_cannot_run_when_its_parent_dies(start_parent):
    parent, [child] = start_parent(PARENT.format(paths=PATHS, child=ASKS_THE_KERNEL_THEN_STOPS))
    start_parent.leftovers.append(child)
    wait_state(child, "T")  # stopped: neither a thread nor a pipe can tell it anything
    assert seconds_until_gone([child], kill(parent)) < 1.0


def test_without_the_kernel_a_busy_child_exits_soon_after_its_parent_dies(start_parent):
    """The portable fallback alone (no prctl here): a thread that polls getppid()."""
    parent, [child] = start_parent(PARENT.format(paths=PATHS, child=WATCHES_WHILE_BUSY))
    start_parent.leftovers.append(child)
    time.sleep(0.5)
    assert running(child)  # the watcher leaves a child whose parent lives alone
    assert seconds_until_gone([child], kill(parent)) < 2.0


def test_a_child_whose_parent_died_before_it_asked_the_kernel_exits_at_once():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    code = f"from asrfleet.engines.lifetime import die_with_parent; die_with_parent({dead.pid}); print(1)"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (child.returncode, child.stdout) == (EXIT_ORPHANED, "")


# -- the engine process ---------------------------------------------------------------------------

ENGINE_PARENT = """
import sys
sys.path[:0] = {paths!r}
from asrfleet.config import InstanceConfig
from asrfleet.engines.process import EngineProcess
config = InstanceConfig(model="fake", vad_model=None, punc_model=None)
engine = EngineProcess(config, "fake_engine:FakeEngine")
engine.load()
print("pids:", engine.stats()["engine_pid"], flush=True)
sys.stdin.readline()
"""


def test_an_engine_that_cannot_run_dies_with_its_parent(start_parent):
    """Stopped, the engine reads nothing: not the pipe's end either, as when a C call holds its GIL."""
    parent, [engine] = start_parent(ENGINE_PARENT.format(paths=PATHS))
    start_parent.leftovers.append(engine)
    os.kill(engine, signal.SIGSTOP)
    assert seconds_until_gone([engine], kill(parent)) < 2.0


def test_an_engine_loaded_from_a_thread_that_ended_lives_on():
    """The kernel kills a child when the thread that started it ends: load() may run on any."""
    engine = EngineProcess(InstanceConfig(name="t", model="fake", vad_model=None, punc_model=None), ENGINE)
    loader = threading.Thread(target=engine.load)
    loader.start()
    loader.join()
    try:
        time.sleep(0.5)
        assert engine.transcribe(Path("/uploads/ok.wav"), TranscribeOptions()).text == "heard ok.wav"
        assert running(engine.stats()["engine_pid"])
    finally:
        engine.close()
    assert engine.wait_died() is None


# -- the audio workers ------------------------------------------------------------------------------

POOL_PARENT = """
import sys
sys.path[:0] = {paths!r}
from asrfleet.audio import AudioLimits
from asrfleet.engines.funasr.pool import PreparePool
from asrfleet.engines.funasr.prepare import PrepareSettings
settings = PrepareSettings(asr_dir={asr!r}, vad_dir={vad!r}, limits=AudioLimits(2**31, 36000.0))
pool = PreparePool(settings, 2, lambda job_id, message: print("got", type(message).__name__, flush=True))
pool.wait_ready()
print("pids:", *pool.pids(), flush=True)
pool.submit("long", sys.stdin.readline().strip())
sys.stdin.readline()
"""


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory) -> Path:
    """20 minutes of noise bursts: seconds of CPU time for a worker to decode and cut, most of
    it before the first message (the segments) goes back."""
    return media.write_audio(tmp_path_factory.mktemp("long") / "long.wav", media.noise_bursts(minutes=20))


def test_busy_audio_workers_die_with_their_engine(start_parent, model_dirs, vad_dir, long_recording):
    """Nothing tells a worker through its queues that the engine is gone: a busy one reads none,
    and an idle one blocks on its own. Here one is busy with a long file, the other idle."""
    code = POOL_PARENT.format(paths=PATHS, asr=str(model_dirs["asr"]), vad=str(vad_dir))
    parent, workers = start_parent(code)
    tree = descendants(parent.pid)  # the workers and multiprocessing's resource tracker
    start_parent.leftovers.extend(tree)
    assert len(workers) == 2 and set(workers) < set(tree)
    idle = {pid: cpu_seconds(pid) for pid in workers}
    parent.stdin.write(f"{long_recording}\n")
    parent.stdin.flush()
    procs.wait_busy(idle)
    assert seconds_until_gone(tree, kill(parent)) < 3.0
    assert "got" not in parent.stdout.read()  # killed in the middle of the file: nothing came back
