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
from asrfleet.errors import AsrError

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


@pytest.mark.parametrize("place", ["engine", "process"])
def test_the_vad_network_outside_the_workers_changes_no_transcript(
    model_dirs, vad_dir, reference_pipeline, recordings, place
):
    """`--vad-scores engine` and `process`: the workers ask the engine, or a scorer process of
    its own, for the VAD network's output, batched across requests (`vad_scores.py`,
    `vad_scorer.py`). The same transcripts."""
    transcriber = make(model_dirs, vad_dir, vad_scores=place)
    try:
        with ThreadPoolExecutor(16) as pool:
            transcripts = list(pool.map(lambda p: transcriber.transcribe(p, TranscribeOptions()), recordings))
        scored = transcriber.stats()["vad_scores"]
        assert scored["chunks"] >= len(recordings) and scored["batches"] <= scored["chunks"]
        for path, transcript in zip(recordings, transcripts, strict=True):
            assert as_funasr(transcript) == expected(funasr_result(reference_pipeline, path)), path.name
    finally:
        transcriber.close()


def test_the_vad_network_failing_in_the_engine_fails_the_request_not_the_instance(
    model_dirs, vad_dir, recordings, monkeypatch
):
    transcriber = make(model_dirs, vad_dir, punc=False, vad_scores="engine")
    try:
        with monkeypatch.context() as patch:
            patch.setattr(transcriber._scores, "score", lambda requests: 1 / 0)
            with pytest.raises(AsrError, match="voice activity detection failed on the server"):
                transcriber.transcribe(recordings[0], TranscribeOptions())
        assert transcriber.transcribe(recordings[0], TranscribeOptions()).text
    finally:
        transcriber.close()


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


def test_audio_workers_leave_the_engine_cores_free(model_dirs, vad_dir, recordings, monkeypatch):
    import os

    from asrfleet.cpus import read_cores
    from asrfleet.engines.funasr import transcriber as module

    cores = read_cores()
    if len(cores) < 2:
        pytest.skip("one core: nothing to leave free")
    monkeypatch.setattr(module, "MIN_WORKER_CORES", 1)  # this machine's few cores
    transcriber = make(model_dirs, vad_dir, engine_cores=1)
    try:
        expected = {cpu for core in cores[1:] for cpu in core}
        pids = transcriber._pool.pids()
        assert pids and all(os.sched_getaffinity(pid) == expected for pid in pids)
        assert transcriber.transcribe(recordings[0], TranscribeOptions()).text  # they still work
    finally:
        transcriber.close()


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
