"""`vad_scorer`: the VAD's network in a process of its own, asked by the workers over a socket
(the real fsmn-vad, on the CPU). What a worker gets from it is what FunASR's own network gives."""

from __future__ import annotations

import os
import signal
import threading
import time
from multiprocessing.connection import Listener
from pathlib import Path

import numpy as np
import pytest
import torch

import media
from asrfleet.engines.funasr import vad_scores
from asrfleet.engines.funasr.vad_scorer import ScorerAddress, ScorerClient, ScorerProcess
from asrfleet.engines.funasr.vad_scores import ScoreError, ScoreRequest
from asrfleet.errors import AsrError

QUIET = {"disable_update": True, "disable_pbar": True, "disable_log": True}


@pytest.fixture(scope="module")
def scorer(vad_dir):
    scorer = ScorerProcess(str(vad_dir), "cpu")
    yield scorer
    scorer.close()


def funasr_scores(encoder, feats: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return encoder(torch.from_numpy(feats)[None], {})[0]


def test_a_worker_gets_the_scores_funasr_s_network_gives(vad_encoder, scorer):
    rng = np.random.default_rng(3)
    client = ScorerClient(scorer.address)
    before = scorer.stats()["chunks"]
    for frames, columns in ((120, 1), (7, 3)):
        feats = rng.standard_normal((frames, 400)).astype(np.float32)
        answer = client(ScoreRequest(feats, None, columns))
        expected = funasr_scores(vad_encoder, feats)[:, :columns]
        assert answer.scores.shape == (frames, columns)
        torch.testing.assert_close(torch.from_numpy(answer.scores), expected, rtol=1e-5, atol=1e-5)
    assert scorer.stats()["chunks"] - before == 2


def test_the_vad_asking_the_scorer_finds_funasr_s_segments(vad_dir, scorer):
    from funasr import AutoModel

    samples = media.conversation(media.ZH_SENTENCES[:4], pause_s=1.5)
    own = AutoModel(model=str(vad_dir), device="cpu", **QUIET)
    remote = AutoModel(model=str(vad_dir), device="cpu", **QUIET)
    assert vad_scores.install_remote(remote.model, ScorerClient(scorer.address))
    for chunk_ms in (60000, 700):  # the whole recording at once, and in chunks with memory carried
        expected = own.generate(input=samples, chunk_size=chunk_ms)[0]["value"]
        assert len(expected) >= 3
        assert remote.generate(input=samples, chunk_size=chunk_ms)[0]["value"] == expected


def test_a_killed_scorer_is_started_again_and_workers_reconnect(vad_dir):
    scorer = ScorerProcess(str(vad_dir), "cpu")
    try:
        client = ScorerClient(scorer.address)
        request = ScoreRequest(np.zeros((10, 400), np.float32), None, 1)
        first = client(request)
        old = scorer.pid
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while (scorer.restarts == 0 or scorer.pid == old) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert scorer.restarts == 1 and scorer.pid != old
        again = client(request)  # its connection died with the old scorer: it connects anew
        np.testing.assert_array_equal(again.scores, first.scores)
    finally:
        scorer.close()
    assert not Path(scorer.address.path).exists()


def test_a_signal_to_the_instance_s_process_group_does_not_reach_the_scorer(scorer):
    """supervisord stops an instance with SIGTERM to its group: the engine stops the scorer after
    the requests in flight, not the signal."""
    assert os.getpgid(scorer.pid) not in (os.getpgid(0), os.getpgid(os.getppid()))


def test_no_scorer_is_a_clear_error_not_a_hang(tmp_path):
    client = ScorerClient(ScorerAddress(str(tmp_path / "none.sock"), b"key"), reconnect_s=0.5)
    started = time.monotonic()
    with pytest.raises(AsrError, match="voice activity detection is not available"):
        client(ScoreRequest(np.zeros((3, 400), np.float32), None, 1))
    assert time.monotonic() - started < 5


def test_the_scorer_names_itself_for_ps_and_the_benchmarks(scorer):
    from asrfleet.engines.funasr.vad_scorer import PROCESS_NAME

    assert Path(f"/proc/{scorer.pid}/comm").read_text().strip() == PROCESS_NAME


def _fake_scorer(address: ScorerAddress, answer) -> threading.Thread:
    """A listener at `address` that answers one request with `answer` (None: never answers)."""
    listener = Listener(address.path, family="AF_UNIX", authkey=address.authkey)

    def serve() -> None:
        with listener, listener.accept() as conn:
            conn.recv()
            if answer is not None:
                conn.send(answer)
            time.sleep(2)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_the_scorer_s_failure_is_the_request_s_clear_error(tmp_path):
    address = ScorerAddress(str(tmp_path / "s.sock"), b"key")
    _fake_scorer(address, ScoreError("voice activity detection failed on the server; the error is logged"))
    with pytest.raises(AsrError, match="voice activity detection failed on the server"):
        ScorerClient(address)(ScoreRequest(np.zeros((3, 400), np.float32), None, 1))


def test_a_scorer_that_does_not_answer_fails_the_request_in_time(tmp_path):
    address = ScorerAddress(str(tmp_path / "s.sock"), b"key")
    _fake_scorer(address, None)
    client = ScorerClient(address, timeout_s=0.5)
    with pytest.raises(AsrError, match="did not answer in time"):
        client(ScoreRequest(np.zeros((3, 400), np.float32), None, 1))
    assert client._conn is None  # a late answer cannot be read as the next request's
