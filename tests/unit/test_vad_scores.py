"""`vad_scores`: FSMN-VAD's network batched in the engine gives the workers what FunASR's own
network gives them (the real fsmn-vad, on the CPU).

Scores and memory are compared to within 1e-5: a matrix product over a padded batch may round
differently from one over a single row (the BLAS library picks its kernel by shape; a one-frame
chunk differed by 1e-7 here). What the VAD decides from them, its segments, must be the same.
"""

from __future__ import annotations

import threading
from functools import partial

import numpy as np
import pytest
import torch

import media
from asrfleet.engines.funasr import vad_scores
from asrfleet.engines.funasr.vad_scores import ScoreError, ScoreRequest, ScoreServer

QUIET = {"disable_update": True, "disable_pbar": True, "disable_log": True}


@pytest.fixture(scope="module")
def encoder(vad_encoder):
    return vad_encoder


@pytest.fixture(scope="module")
def server(encoder):
    server = ScoreServer(encoder, "cpu")
    yield server
    server.stop()


def close(ours, expected) -> None:
    torch.testing.assert_close(torch.as_tensor(ours), torch.as_tensor(expected), rtol=1e-5, atol=1e-5)


def funasr_chunks(encoder, feats: np.ndarray, cuts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """FunASR's own network over one recording's chunks, its cache carried: all scores, last memory."""
    cache: dict = {}
    scores = []
    with torch.inference_mode():
        for start, end in zip([0, *cuts], [*cuts, len(feats)], strict=True):
            scores.append(encoder(torch.from_numpy(feats[start:end])[None], cache)[0])
    memory = torch.stack([cache[f"cache_layer_{i}"][0] for i in range(len(encoder.fsmn))])
    return torch.cat(scores), memory


def test_a_padded_batch_gives_every_row_what_funasr_gives_it_alone_chunk_after_chunk(encoder):
    rng = np.random.default_rng(0)
    lengths = [[37, 120], [5, 64], [90, 1]]  # each recording's two chunks: rows of unequal length
    recordings = [rng.standard_normal((sum(n), 400)).astype(np.float32) for n in lengths]
    blocks, proj, keep = vad_scores.memory_shape(encoder)
    memory = torch.zeros(blocks, 3, proj, keep, 1)
    ours = [[] for _ in recordings]
    with torch.inference_mode():
        for chunk in range(2):
            rows = [r[sum(n[:chunk]) : sum(n[: chunk + 1])] for r, n in zip(recordings, lengths, strict=True)]
            batch = torch.zeros(3, max(len(r) for r in rows), 400)
            for b, row in enumerate(rows):
                batch[b, : len(row)] = torch.from_numpy(row)
            lengths_now = torch.tensor([len(r) for r in rows])
            scores, memory = vad_scores.fsmn_forward(encoder, batch, lengths_now, memory)
            for b, row in enumerate(rows):
                ours[b].append(scores[b, : len(row)])
    for b, (recording, n) in enumerate(zip(recordings, lengths, strict=True)):
        expected, expected_memory = funasr_chunks(encoder, recording, [n[0]])
        close(torch.cat(ours[b]), expected)
        close(memory[:, b], expected_memory)


def test_the_traced_network_is_the_network_at_other_shapes(encoder):
    rng = np.random.default_rng(2)
    network = vad_scores.traced(encoder, torch.device("cpu"))
    assert isinstance(network, torch.jit.ScriptModule)
    for rows, frames in ((1, 1), (3, 50), (5, 301)):
        feats = torch.from_numpy(rng.standard_normal((rows, frames, 400)).astype(np.float32))
        lengths = torch.from_numpy(rng.integers(1, frames + 1, rows))
        memory = torch.from_numpy(rng.standard_normal((4, rows, 128, 19, 1)).astype(np.float32))
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            ours, expected = (
                network(feats, lengths, memory),
                vad_scores.fsmn_forward(encoder, feats, lengths, memory),
            )
        assert all(torch.equal(a, b) for a, b in zip(ours, expected, strict=True))


def test_the_server_answers_each_request_with_its_own_rows_and_columns(encoder, server):
    rng = np.random.default_rng(1)
    feats = [rng.standard_normal((n, 400)).astype(np.float32) for n in (50, 8, 30)]
    first, _ = funasr_chunks(encoder, feats[0], [20])
    memory = server.ask(ScoreRequest(feats[0][:20], None, 1), timeout=30).memory
    requests = [
        ScoreRequest(feats[0][20:], memory, 1),
        ScoreRequest(feats[1], None, 3),
        ScoreRequest(feats[2], None, 1),
    ]
    answers: dict[int, object] = {}
    done = threading.Semaphore(0)
    batches = server.stats.batches
    for i, request in enumerate(requests):
        server.submit(request, lambda answer, i=i: (answers.__setitem__(i, answer), done.release()))
    for _ in requests:
        assert done.acquire(timeout=30)
    assert server.stats.batches - batches <= len(requests)
    close(answers[0].scores, first[20:, :1])
    for i in (1, 2):
        expected, expected_memory = funasr_chunks(encoder, feats[i], [])
        assert answers[i].scores.shape == (len(feats[i]), requests[i].columns)
        close(answers[i].scores, expected[:, : requests[i].columns])
        close(answers[i].memory, expected_memory[..., 0])


def test_a_failure_is_answered_not_left_waiting(encoder, monkeypatch):
    server = ScoreServer(encoder, "cpu")
    try:
        monkeypatch.setattr(server, "score", lambda requests: 1 / 0)
        answers: list = []
        done = threading.Event()
        server.submit(
            ScoreRequest(np.zeros((4, 400), np.float32), None, 1), lambda a: (answers.append(a), done.set())
        )
        assert done.wait(timeout=30)
        assert isinstance(answers[0], ScoreError) and "failed on the server" in answers[0].message
    finally:
        server.stop()


def test_the_vad_asking_the_engine_finds_the_same_segments(vad_dir, server):
    """FunASR's whole VAD, its network replaced by `RemoteFsmn`: the same segments, also when the
    recording goes through in many chunks (the network's memory carried between them)."""
    from funasr import AutoModel

    samples = media.conversation(media.ZH_SENTENCES[:4], pause_s=1.5)
    own = AutoModel(model=str(vad_dir), device="cpu", **QUIET)
    remote = AutoModel(model=str(vad_dir), device="cpu", **QUIET)
    assert vad_scores.install_remote(remote.model, partial(server.ask, timeout=30))
    assert isinstance(remote.model.encoder, vad_scores.RemoteFsmn)
    chunks = server.stats.chunks
    for chunk_ms in (60000, 700):
        expected = own.generate(input=samples, chunk_size=chunk_ms)[0]["value"]
        assert len(expected) >= 3
        assert remote.generate(input=samples, chunk_size=chunk_ms)[0]["value"] == expected
    assert server.stats.chunks - chunks > 2


def test_other_networks_stay_in_the_worker():
    class Other(torch.nn.Module):
        encoder = torch.nn.Linear(2, 2)

    model = Other()
    assert not vad_scores.install_remote(model, lambda request: None)
    assert isinstance(model.encoder, torch.nn.Linear)
