"""`vad_graphs`: the scorer's batches padded to a few shapes, from buffers that earlier batches
leave dirty, give each chunk what FunASR's own network gives it (the real fsmn-vad, on the CPU).

The CUDA graphs themselves need a GPU; the padding, the buffers and the answers are the same code
on the CPU. Within 1e-5, as in `test_vad_scores.py`: a padded matrix product may round differently.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from asrfleet.engines.funasr import vad_scores
from asrfleet.engines.funasr.vad_graphs import PaddedNetwork, Shape, padded_shape
from asrfleet.engines.funasr.vad_scores import ScoreRequest


@pytest.fixture(scope="module")
def encoder(vad_encoder):
    return vad_encoder


def close(ours, expected) -> None:
    torch.testing.assert_close(torch.as_tensor(ours), torch.as_tensor(expected), rtol=1e-5, atol=1e-5)


def funasr_scores(encoder, feats: np.ndarray, memory: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
    """FunASR's own network on one chunk, its cache holding `memory` if given."""
    cache = {}
    if memory is not None:
        cache = {f"cache_layer_{i}": torch.from_numpy(m)[None, :, :, None] for i, m in enumerate(memory)}
    with torch.inference_mode():
        scores = encoder(torch.from_numpy(feats)[None], cache)[0]
    return scores, torch.stack([cache[f"cache_layer_{i}"][0, :, :, 0] for i in range(len(encoder.fsmn))])


def test_rows_pad_to_a_power_of_two_and_frames_to_the_step():
    assert padded_shape(1, 1, 1, 64) == Shape(1, 64, 1)
    assert padded_shape(3, 64, 1, 64) == Shape(4, 64, 1)
    assert padded_shape(5, 65, 2, 64) == Shape(8, 128, 2)
    assert padded_shape(16, 500, 1, 64) == Shape(16, 512, 1)


def test_a_batch_past_the_cells_or_rows_runs_eagerly(encoder):
    network = PaddedNetwork(
        partial(vad_scores.fsmn_forward, encoder), encoder, torch.device("cpu"), max_rows=4, max_cells=512
    )
    chunk = ScoreRequest(np.zeros((100, 400), np.float32), None, 1)
    assert network.shape_for([chunk] * 4) == Shape(4, 128, 1)
    assert network.shape_for([chunk] * 5) is None  # 8 rows
    assert network.shape_for([ScoreRequest(np.zeros((600, 400), np.float32), None, 1)]) is None


def test_padded_batches_from_dirty_buffers_answer_each_chunk_as_funasr_does(encoder):
    rng = np.random.default_rng(0)
    network = PaddedNetwork(partial(vad_scores.fsmn_forward, encoder), encoder, torch.device("cpu"))
    blocks, proj, keep = vad_scores.memory_shape(encoder)

    def chunk(frames: int, carried: bool, columns: int = 1) -> ScoreRequest:
        memory = rng.standard_normal((blocks, proj, keep)).astype(np.float32) if carried else None
        return ScoreRequest(rng.standard_normal((frames, 400)).astype(np.float32), memory, columns)

    # A large batch first, then smaller ones: their padding holds the first one's frames, rows,
    # memory and lengths (a row of 130 frames, left in a row the next batches pad: its length
    # must not be read there).
    batches = [
        [chunk(130, False), chunk(7, True), chunk(64, False), chunk(129, True)],
        [chunk(20, True, columns=3), chunk(1, False), chunk(65, True)],
        [chunk(50, False)],
    ]
    for requests in batches:
        shape = network.shape_for(requests)
        assert shape is not None and shape.rows >= len(requests)
        for request, answer in zip(requests, network.run(requests, shape), strict=True):
            expected, expected_memory = funasr_scores(encoder, request.feats, request.memory)
            assert answer.scores.shape == (request.feats.shape[0], request.columns)
            close(answer.scores, expected[:, : request.columns])
            close(answer.memory, expected_memory)
    assert network.recorded == 0  # no graphs on the CPU


def test_answers_do_not_change_when_the_buffers_are_used_again(encoder):
    rng = np.random.default_rng(1)
    network = PaddedNetwork(partial(vad_scores.fsmn_forward, encoder), encoder, torch.device("cpu"))
    first = [ScoreRequest(rng.standard_normal((40, 400)).astype(np.float32), None, 1)]
    answer = network.run(first, network.shape_for(first))[0]
    kept = answer.scores.copy(), answer.memory.copy()
    second = [ScoreRequest(rng.standard_normal((40, 400)).astype(np.float32), None, 1)]
    network.run(second, network.shape_for(second))
    assert np.array_equal(answer.scores, kept[0]) and np.array_equal(answer.memory, kept[1])
