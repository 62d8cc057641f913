"""Our integrate-and-fire against FunASR's own loops: equal results on the same inputs."""

from __future__ import annotations

import funasr.models.bicif_paraformer.cif_predictor as bicif
import numpy as np
import pytest
import torch

from asrfleet.engines.funasr import cif


def speech_like_alphas(rng: np.random.Generator, rows: int, frames: int) -> np.ndarray:
    """Weights as the predictor makes them: mostly below 1, runs of zeros (silence), some over 1."""
    alphas = rng.random((rows, frames), dtype=np.float32) * np.float32(0.7)
    for row in alphas:
        start = rng.integers(0, frames)
        row[start : start + rng.integers(0, frames // 3 + 1)] = 0
    if frames:
        alphas[:, -1] += np.float32(0.45)  # FunASR's tail threshold: a last token fires at the end
        alphas[0, frames // 2] = np.float32(1.6)  # two fires in a row
    return alphas


@pytest.mark.parametrize("rows,frames", [(1, 300), (5, 451), (16, 90), (40, 120), (0, 10)])
def test_integrate_and_fire_equals_funasrs_cif_wo_hidden(rows, frames):
    alphas = (np.random.default_rng(7).random((rows, frames), dtype=np.float32) * 0.6).astype(np.float32)
    theirs = cif.FUNASR_CIF_WO_HIDDEN(torch.from_numpy(alphas.copy()), 1.0 - 1e-4).numpy()
    assert np.array_equal(cif.integrate_and_fire(alphas, 1.0 - 1e-4), theirs)


@pytest.mark.parametrize("rows,frames,seed", [(1, 40, 0), (3, 200, 1), (8, 75, 2), (17, 31, 3), (2, 1, 4)])
def test_cif_equals_funasrs(rows, frames, seed):
    rng = np.random.default_rng(seed)
    alphas = torch.from_numpy(speech_like_alphas(rng, rows, frames))
    hidden = torch.from_numpy(rng.standard_normal((rows, frames, 24), dtype=np.float32))
    embeds, fires = cif.cif(hidden, alphas, 1.0)
    their_embeds, their_fires = bicif.cif(hidden, alphas.clone(), 1.0)
    assert torch.equal(fires, their_fires)
    assert embeds.shape == their_embeds.shape
    assert torch.equal(embeds, their_embeds)
    assert embeds.abs().sum() > 0  # tokens fired: the comparison is not between two empty tensors


@pytest.mark.parametrize("threshold", [1.0, 1.0 - 1e-4])
def test_cif_equals_funasrs_where_the_sums_reach_the_threshold_exactly(threshold):
    # Weights in eighths add up to exactly 1.0 again and again: every `>=` decides on equality.
    rng = np.random.default_rng(9)
    alphas = torch.from_numpy((rng.integers(0, 6, (10, 80)) / 8).astype(np.float32))
    hidden = torch.from_numpy(rng.standard_normal((10, 80, 16), dtype=np.float32))
    embeds, fires = cif.cif(hidden, alphas, threshold)
    their_embeds, their_fires = bicif.cif(hidden, alphas.clone(), threshold)
    assert torch.equal(fires, their_fires)
    assert torch.equal(embeds, their_embeds)
    assert (fires == 1.0).any()  # the exact case did come


def test_cif_with_nothing_fired_gives_zeros_of_the_rounded_length():
    alphas = torch.full((2, 10), 0.06)  # sums to 0.6: rounds to one token, which never fires
    embeds, fires = cif.cif(torch.ones(2, 10, 4), alphas, 1.0)
    assert embeds.shape == (2, 1, 4) and not embeds.any()
    assert torch.equal(fires, bicif.cif(torch.ones(2, 10, 4), alphas, 1.0)[1])


def test_cif_sums_in_chunks_as_it_does_at_once(monkeypatch):
    rng = np.random.default_rng(5)
    alphas = torch.from_numpy(speech_like_alphas(rng, 4, 120))
    hidden = torch.from_numpy(rng.standard_normal((4, 120, 8), dtype=np.float32))
    whole, _ = cif.cif(hidden, alphas, 1.0)
    monkeypatch.setattr(cif, "_GATHER_BYTES", 1)  # one step per gather
    chunked, _ = cif.cif(hidden, alphas, 1.0)
    assert torch.equal(whole, chunked)
