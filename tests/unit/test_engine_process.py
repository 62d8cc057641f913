"""The engine in a process of its own: results, errors and crashes cross the pipe intact."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fake_engine import FAIL_TO_LOAD

from asrfleet.config import InstanceConfig
from asrfleet.engines.base import TranscribeOptions
from asrfleet.engines.process import EngineProcess, EngineStopped, LoadFailed
from asrfleet.errors import AsrError, BadAudio, Busy, NotReady

ENGINE = "fake_engine:FakeEngine"
FUTURE_ENGINE = "fake_engine:FutureFakeEngine"  # has submit(): answered from callbacks
CONFIG = InstanceConfig(name="t", model="fake", vad_model=None, punc_model=None, max_queue=16)


@pytest.fixture(params=[ENGINE, FUTURE_ENGINE])
def engine(request):
    engine = EngineProcess(CONFIG, request.param)
    engine.load()
    yield engine
    engine.close()


def call(engine: EngineProcess, name: str, hotwords: str | None = None):
    return engine.transcribe(Path(f"/uploads/{name}.wav"), TranscribeOptions(hotwords=hotwords))


def test_transcribes_in_another_process(engine):
    assert engine.ready and engine.model_name == "fake-model"
    assert call(engine, "ok", "alpha beta").text == "heard ok.wav alpha beta"
    stats = engine.stats()
    assert stats["pid"] == stats["engine_pid"] != os.getpid()
    # loaded, it froze its objects (gc_pauses.py), and times the collections since
    assert stats["gc_frozen_objects"] > 0 and stats["gc_collections"] >= 0


def test_errors_keep_their_kind_and_message(engine):
    with pytest.raises(BadAudio, match="could not be decoded"):
        call(engine, "bad")
    with pytest.raises(Busy) as busy:
        call(engine, "busy")
    assert busy.value.retry_after_s == 7 and busy.value.status == 503
    with pytest.raises(AsrError) as bug:
        call(engine, "bug")
    assert type(bug.value) is AsrError and "internal detail" not in str(bug.value)
    assert call(engine, "ok").text == "heard ok.wav"  # and it goes on serving


def test_requests_run_together(engine):
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: call(engine, "meet-6"), range(6)))
    assert [r.text for r in results] == ["heard meet-6.wav"] * 6


def test_an_engine_with_futures_is_answered_without_a_thread_per_request():
    engine = EngineProcess(CONFIG, FUTURE_ENGINE)
    engine.load()
    try:
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda _: call(engine, "meet-6"), range(6)))
        assert [r.text for r in results] == ["heard meet-6.wav"] * 6
        with pytest.raises(Busy) as refused:
            call(engine, "refused")
        assert refused.value.retry_after_s == 3
        with pytest.raises(AsrError) as bug:
            call(engine, "bug")
        assert type(bug.value) is AsrError and "internal detail" not in str(bug.value)
        threads = engine.stats()["threads"]
        assert not [name for name in threads if name.startswith("request")], threads
    finally:
        engine.close()


def test_a_cancelled_call_leaves_the_others_and_the_pipe_alone(engine):
    """The web app awaits `submit()`'s future; a client that goes away cancels it."""
    futures = [engine.submit(Path("/uploads/meet-3.wav"), TranscribeOptions()) for _ in range(3)]
    assert futures[0].cancel()
    assert [f.result(timeout=30).text for f in futures[1:]] == ["heard meet-3.wav"] * 2
    assert call(engine, "ok").text == "heard ok.wav"  # the reader thread survived the cancelled answer


def test_load_failure_is_reported():
    engine = EngineProcess(CONFIG.replace(model=FAIL_TO_LOAD), ENGINE)
    with pytest.raises(NotReady):
        call(engine, "ok")  # before loading
    with pytest.raises(LoadFailed, match="not a model directory"):
        engine.load()
    assert not engine.ready


def test_a_crash_fails_requests_in_flight_and_is_reported(engine):
    with ThreadPoolExecutor(2) as pool:
        hanging = pool.submit(call, engine, "hang")
        time.sleep(0.5)
        with pytest.raises(EngineStopped):
            call(engine, "crash")
        with pytest.raises(EngineStopped):
            hanging.result(timeout=10)
    assert engine.wait_died() == 9
    assert not engine.ready
    with pytest.raises(EngineStopped):
        call(engine, "ok")
    assert "not answering" in str(engine.stats())


def test_close_is_not_a_death(engine):
    engine.close()
    assert engine.wait_died() is None
    assert engine._process.exitcode == 0


PARENT = """
import sys
sys.path[:0] = {paths!r}
from asrfleet.config import InstanceConfig
from asrfleet.engines.process import EngineProcess
config = InstanceConfig(model="fake", vad_model=None, punc_model=None)
engine = EngineProcess(config, "fake_engine:FakeEngine")
engine.load()
print(engine.stats()["engine_pid"], flush=True)
sys.stdin.readline()
"""


def test_the_engine_does_not_outlive_its_parent():
    code = PARENT.format(paths=[p for p in sys.path if p])
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.2)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
