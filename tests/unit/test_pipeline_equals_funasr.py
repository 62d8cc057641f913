"""Our batched pipeline gives exactly the transcript of FunASR's own `AutoModel.generate`.

The same model directory (a small BiCifParaformer with random weights, FunASR's real fsmn-vad, a
small CT-Transformer), the same files, on the CPU: requests one at a time and 16 at a time, where
the segments of different requests share batches. FunASR runs with its own integrate-and-fire
loops (loading our engine puts one of ours in FunASR's timestamp code: `asrfleet.engines.funasr.cif`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import media
from asrfleet.audio import AudioLimits, decode_audio
from asrfleet.config import InstanceConfig
from asrfleet.engines.base import TranscribeOptions
from asrfleet.engines.funasr import cif
from asrfleet.engines.funasr.transcriber import FunasrTranscriber

FORMATS = ["wav", "mp3", "flac", "m4a"]


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> list[Path]:
    """16 recordings of 1 to 4 sentences, in several formats."""
    folder = tmp_path_factory.mktemp("recordings")
    n = len(media.ZH_SENTENCES)
    paths = []
    for i in range(16):
        sentences = [media.ZH_SENTENCES[(i + k) % n] for k in range(1 + i % 4)]
        paths.append(media.write_format(folder, media.conversation(sentences), FORMATS[i % 4], f"rec{i:02d}"))
    return paths


def make(model_dirs, vad_dir, punc: bool = True, **changes) -> FunasrTranscriber:
    config = InstanceConfig(
        model=str(model_dirs["asr"]),
        vad_model=str(vad_dir),
        punc_model=str(model_dirs["punc"]) if punc else None,
        device="cpu",
        threads=1,
        workers=2,
    ).replace(**changes)
    transcriber = FunasrTranscriber(config)
    transcriber.load()
    return transcriber


@pytest.fixture(scope="module")
def ours(model_dirs, vad_dir):
    transcriber = make(model_dirs, vad_dir)
    yield transcriber
    transcriber.close()


def funasr_result(pipeline, path: Path) -> dict:
    import funasr.utils.timestamp_tools as timestamp_tools

    samples = decode_audio(path, AudioLimits(2**30, 36000))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(timestamp_tools, "cif_wo_hidden", cif.FUNASR_CIF_WO_HIDDEN)
        return pipeline.generate(input=samples, batch_size_s=300, sentence_timestamp=True)[0]


def as_funasr(transcript) -> tuple[str, list[tuple[int, int, str]]]:
    return transcript.text, [
        (round(s.start * 1000), round(s.end * 1000), s.text) for s in transcript.sentences
    ]


def expected(result: dict) -> tuple[str, list[tuple[int, int, str]]]:
    return result["text"], [(s["start"], s["end"], s["text"]) for s in result["sentence_info"]]


def test_one_at_a_time(ours, reference_pipeline, recordings):
    for path in recordings[:6]:
        assert as_funasr(ours.transcribe(path, TranscribeOptions())) == expected(
            funasr_result(reference_pipeline, path)
        ), path.name


def test_sixteen_at_a_time(ours, reference_pipeline, recordings):
    before = ours.stats()["batches"]
    with ThreadPoolExecutor(16) as pool:
        transcripts = list(pool.map(lambda p: ours.transcribe(p, TranscribeOptions()), recordings))
    stats = ours.stats()
    segments = sum(len(t.sentences) for t in transcripts)
    assert stats["batches"] - before < segments, "requests were not batched together"
    for path, transcript in zip(recordings, transcripts, strict=True):
        assert as_funasr(transcript) == expected(funasr_result(reference_pipeline, path)), path.name


def test_stage_times_add_up_to_each_request_s_time(ours, recordings):
    """prepare + recognize + assemble is each request's whole time in the engine."""
    before = ours.stats()["stage_s"]
    transcripts = [ours.transcribe(path, TranscribeOptions()) for path in recordings[:3]]
    after = ours.stats()["stage_s"]
    spent = {stage: after[stage] - before[stage] for stage in ("prepare", "recognize", "assemble")}
    assert after["requests"] - before["requests"] == 3
    assert spent["prepare"] > 0 and spent["recognize"] > 0 and spent["assemble"] >= 0
    total = sum(t.timings["total_s"] for t in transcripts)
    assert sum(spent.values()) == pytest.approx(total, abs=1e-3)


def test_a_cancelled_request_is_let_go_and_the_next_ones_are_served(ours, recordings):
    """A client that goes away cancels its future (the web app does, with the engine in its
    process): the job is forgotten and gives its place back, and the next requests are served."""
    cancelled = ours.submit(recordings[0], TranscribeOptions())
    assert cancelled.cancel()
    served = [ours.submit(path, TranscribeOptions()) for path in recordings[:3]]
    assert all(f.result(timeout=120).text for f in served)
    assert ours._admission.in_flight == 0 and not ours._jobs


def test_a_job_cancelled_while_it_finishes_is_left_alone():
    """The punctuation thread may finish a job whose client has just cancelled it."""
    from concurrent.futures import Future

    from asrfleet.engines.funasr.transcriber import _settle

    future: Future = Future()
    future.cancel()
    _settle(future, "a transcript")  # no InvalidStateError
    _settle(future, ValueError("late"))
    assert future.cancelled()


def test_audio_workers_yield_the_cpu_to_the_rest(ours):
    """Workers run below the process that serves requests and drives the GPU."""
    import os

    from asrfleet.engines.funasr.pool import WORKER_NICENESS

    expected = min(os.getpriority(os.PRIO_PROCESS, 0) + WORKER_NICENESS, 19)  # 19: the lowest there is
    pids = ours._pool.pids()
    assert pids and all(os.getpriority(os.PRIO_PROCESS, pid) == expected for pid in pids)


def test_a_job_whose_worker_dies_starts_over_as_its_next_attempt(monkeypatch, tmp_path):
    """The pool without processes: the dead worker's messages are dropped, the job's next
    attempt runs on another worker, and a job that loses two workers fails."""
    import queue
    import time

    from asrfleet.engines.funasr.pool import Failed, PreparePool, Retrying
    from asrfleet.engines.funasr.prepare import PrepareSettings
    from asrfleet.engines.funasr.segments import Attempt, Segmented

    class Worker:  # a worker process, as the pool sees one
        pid, exitcode = None, -9

        def join(self, timeout=None):
            pass

        def is_alive(self):
            return False

    def spawn(pool):
        pool._procs[pool._next_id] = Worker()
        pool._task_queues[pool._next_id] = queue.Queue()
        pool._next_id += 1

    monkeypatch.setattr(PreparePool, "_spawn", spawn)
    monkeypatch.setattr(PreparePool, "_watch_workers", lambda pool: None)  # deaths come from the test
    got = []
    settings = PrepareSettings(asr_dir="asr", vad_dir="vad", limits=AudioLimits(2**20, 60.0))
    pool = PreparePool(settings, 2, lambda job_id, message: got.append((job_id, message)))

    def until(condition):
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.01)

    try:
        for worker_id in (0, 1):
            pool._results.put(("ready", worker_id, None, None))
        until(lambda: len(pool._idle) == 2)
        pool.submit("job", tmp_path / "a.wav")
        assert pool._task_queues[0].get(timeout=10) == (Attempt("job", 0), str(tmp_path / "a.wav"))
        pool._replace(0)  # worker 0 died holding the job: worker 1 takes its next attempt
        assert pool._task_queues[1].get(timeout=10) == (Attempt("job", 1), str(tmp_path / "a.wav"))
        assert got == [("job", Retrying())]
        segmented = Segmented(duration=1.0, segments=[(0, 1000)])
        pool._results.put(("message", 0, Attempt("job", 0), Segmented(duration=9.0, segments=[])))
        pool._results.put(("message", 1, Attempt("job", 1), segmented))
        until(lambda: len(got) == 2)
        assert got[1] == ("job", segmented)  # and not the dead worker's, sent first
        pool._replace(1)
        assert got[2][0] == "job" and isinstance(got[2][1], Failed)
        assert "crashed the audio decoder twice" in str(got[2][1].error)
    finally:
        pool.close()


def test_without_punctuation(model_dirs, vad_dir, recordings):
    from funasr import AutoModel

    reference = AutoModel(
        model=str(model_dirs["asr"]),
        vad_model=str(vad_dir),
        device="cpu",
        disable_update=True,
        disable_pbar=True,
        disable_log=True,
        ncpu=1,
    )
    transcriber = make(model_dirs, vad_dir, punc=False)
    try:
        for path in recordings[:3]:
            transcript = transcriber.transcribe(path, TranscribeOptions())
            assert transcript.text == funasr_result(reference, path)["text"]
            assert transcript.sentences, "without punctuation the VAD segments are the sentences"
    finally:
        transcriber.close()
