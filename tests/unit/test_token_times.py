"""Token times from CIF peaks against FunASR's own `ts_prediction_lfr6_standard`, on every path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from funasr.utils.timestamp_tools import ts_prediction_lfr6_standard

from asrfleet.engines.funasr import cif
from asrfleet.engines.funasr.token_times import token_times


def weights(rng: np.random.Generator, frames: int) -> torch.Tensor:
    """Upsampled weights with silent frames at the start, at the end and in one gap inside."""
    alphas = rng.uniform(0.0, 0.6, frames).astype(np.float32)
    head, tail, gap = (int(n) for n in rng.integers(0, (12, 12, 30)))
    alphas[:head] = 0.0
    alphas[frames - tail :] = 0.0
    alphas[frames // 2 : frames // 2 + gap] = 0.0
    return torch.from_numpy(alphas)


def case(seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    rng = np.random.default_rng(seed)
    frames = int(rng.integers(40, 400))
    alphas = weights(rng, frames)
    peaks = cif.FUNASR_CIF_WO_HIDDEN(alphas[None], 1.0 - 1e-4)[0]
    fired = int((peaks >= 1.0 - 1e-4).sum())
    # tokens one fewer than the peaks, as the model predicts them; or a count that makes both
    # functions recount the peaks; sometimes with the end-of-sentence token FunASR drops
    count = max(1, fired - 1 + int(rng.choice([0, 0, 0, -2, 1, 3])))
    tokens = [chr(0x4E00 + int(t)) for t in rng.integers(0, 500, count)]
    if rng.random() < 0.2:
        tokens.append("</s>")
    return alphas, peaks, tokens


@pytest.mark.parametrize("seed", range(300))
def test_the_same_times_as_funasr(seed, monkeypatch):
    import funasr.utils.timestamp_tools as timestamp_tools

    monkeypatch.setattr(timestamp_tools, "cif_wo_hidden", cif.FUNASR_CIF_WO_HIDDEN)
    alphas, peaks, tokens = case(seed)
    try:
        _, expected = ts_prediction_lfr6_standard(alphas.clone(), peaks.clone(), list(tokens))
    except IndexError:  # FunASR fails where no peak fires at all; so must we
        with pytest.raises(IndexError):
            token_times(alphas.clone(), peaks.clone(), tokens)
        return
    assert token_times(alphas.clone(), peaks.clone(), tokens) == expected


def test_every_path_is_exercised():
    """The cases above take each branch: leading silence, a token cut at its longest, trailing
    silence, and the peaks recounted."""
    seen = set()
    for seed in range(300):
        alphas, peaks, tokens = case(seed)
        fires = torch.where(peaks >= 1.0 - 1e-4)[0].numpy() - 1.5
        words = tokens[:-1] if tokens[-1] == "</s>" else tokens
        if len(fires) == 0:
            continue
        seen.add("recount" if len(fires) != len(words) + 1 else "as predicted")
        if len(fires) == len(words) + 1:
            seen.add("leading silence" if fires[0] > 5 else "no leading silence")
            seen.add("trailing silence" if len(peaks) - fires[-1] > 5 else "no trailing silence")
            if (np.diff(fires) > 12).any():
                seen.add("cut")
    assert seen >= {"recount", "as predicted", "leading silence", "trailing silence", "cut"}


def test_no_tokens_no_times():
    assert token_times(torch.zeros(10), torch.zeros(10), []) == []
