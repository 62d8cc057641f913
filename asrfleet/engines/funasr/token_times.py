"""Each token's start and end from the timestamp head's CIF peaks: FunASR's
`ts_prediction_lfr6_standard`, less what we never use.

FunASR's function also formats every token's times into a text we drop, and does its arithmetic on
NumPy scalars, slowly, on the engine's host thread and under the GIL the GPU thread needs. Here the
same steps in the same order on Python floats (the same IEEE doubles, so the same results; a test
compares the two on every path: leading silence, tokens cut at their longest, trailing silence,
peaks recounted).
"""

from __future__ import annotations

import torch

from asrfleet.engines.funasr.segments import FRAME_SHIFT_MS, LFR_STRIDE

_FIRED = 1.0 - 1e-4  # a frame whose integrated weight reaches this fires a token
_EDGE_FRAMES = 5  # more silent frames than this at either end become a silence of their own
_LONGEST_TOKEN = 12  # upsampled frames; a token's frames past this become a silence
_SHIFT = -1.5  # frames: FunASR's force_time_shift
_UPSAMPLE = 3  # the timestamp head's frames per encoder frame, as FunASR's function assumes
_SECONDS_PER_FRAME = FRAME_SHIFT_MS * LFR_STRIDE / 1000 / _UPSAMPLE
_SILENCE = "<sil>"


def token_times(alphas: torch.Tensor, peaks: torch.Tensor, tokens: list[str]) -> list[list[int]]:
    """[start_ms, end_ms] of each token, as `ts_prediction_lfr6_standard(alphas, peaks, tokens)`
    returns them: one segment's upsampled weights and integrated weights (T,), its tokens.
    `alphas` is rescaled in place when the peaks do not count the tokens, as FunASR does."""
    if not tokens:
        return []
    if tokens[-1] == "</s>":
        tokens = tokens[:-1]
    fires = _fires(peaks)
    if len(fires) != len(tokens) + 1:
        from funasr.utils import timestamp_tools  # its CIF, which `cif.install()` may replace

        alphas /= alphas.sum() / (len(tokens) + 1)
        peaks = timestamp_tools.cif_wo_hidden(alphas.unsqueeze(0), threshold=_FIRED)[0]
        fires = _fires(peaks)
    spans, names = _spans(fires, tokens, frames=peaks.shape[0])
    return [
        [int(start * 1000), int(end * 1000)]
        for (start, end), name in zip(spans, names, strict=True)
        if name != _SILENCE
    ]


def _fires(peaks: torch.Tensor) -> list[float]:
    """The frames where tokens fire, shifted as FunASR shifts them."""
    return (torch.where(peaks >= _FIRED)[0].cpu().numpy() + _SHIFT).tolist()


def _spans(fires: list[float], tokens: list[str], frames: int) -> tuple[list[list[float]], list[str]]:
    """Seconds [start, end] of every token and silence, and their names."""
    rate = _SECONDS_PER_FRAME
    spans: list[list[float]] = []
    names: list[str] = []
    if fires[0] > _EDGE_FRAMES:
        spans.append([0.0, fires[0] * rate])
        names.append(_SILENCE)
    for i in range(len(fires) - 1):
        names.append(tokens[i])
        if fires[i + 1] - fires[i] <= _LONGEST_TOKEN:
            spans.append([fires[i] * rate, fires[i + 1] * rate])
        else:
            cut = fires[i] + _LONGEST_TOKEN
            spans.append([fires[i] * rate, cut * rate])
            spans.append([cut * rate, fires[i + 1] * rate])
            names.append(_SILENCE)
    if frames - fires[-1] > _EDGE_FRAMES:
        end = (frames + fires[-1]) * 0.5
        spans[-1][1] = end * rate
        spans.append([end * rate, frames * rate])
        names.append(_SILENCE)
    elif spans:
        spans[-1][1] = frames * rate
    return spans, names
