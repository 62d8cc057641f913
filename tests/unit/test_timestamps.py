"""The timestamp head on padded rows (what the encoder's CUDA graph runs) against FunASR's packed LSTM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asrfleet.engines.funasr import timestamps
from asrfleet.engines.funasr.recognize import Recognizer


@pytest.fixture(scope="module")
def model(model_dirs):
    from funasr import AutoModel

    model, _ = AutoModel.build_model(
        model=str(model_dirs["asr"]), device="cpu", disable_update=True, disable_log=True
    )
    return model


def encoded_batch(model, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder output of random features, padded frames zero, as `Recognizer._encode` gives it."""
    rng = np.random.default_rng(len(lengths))
    feats = [rng.standard_normal((n, 560), dtype=np.float32) for n in lengths]
    encoded = Recognizer(model, None, "cpu")._encode(feats)
    return encoded.out, encoded.lengths * model.predictor.upsample_times


def test_the_test_model_has_a_blstm_head(model):
    assert model.predictor.upsample_type == "cnn_blstm"
    assert timestamps.has_timestamp_head(model)
    assert not timestamps.has_timestamp_head(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("lengths", [[40], [12, 80, 55], [80, 80], [3, 70, 9, 64, 31]])
def test_padded_rows_give_the_packed_weights(model, lengths):
    encoded, up_lens = encoded_batch(model, lengths)
    with torch.inference_mode():
        packed = timestamps.timestamp_alphas(model, encoded, up_lens, packed=True)
        padded = timestamps.timestamp_alphas(model, encoded, up_lens, packed=False)
    assert packed.shape == padded.shape == (len(lengths), max(lengths) * 3)
    torch.testing.assert_close(padded, packed, rtol=0, atol=1e-5)
    frames = torch.arange(padded.size(1))[None, :]
    assert not padded[frames >= up_lens[:, None]].any()  # padding weighs nothing


def test_a_row_is_the_same_alone_and_in_a_batch(model):
    """Neither direction of the LSTM reads another row's padding (the backward one starts at each
    row's own last frame)."""
    encoded, up_lens = encoded_batch(model, [30, 90])
    with torch.inference_mode():
        batch = timestamps.timestamp_alphas(model, encoded, up_lens, packed=False)
        alone = timestamps.timestamp_alphas(model, encoded[:1, :30], up_lens[:1], packed=False)
    torch.testing.assert_close(batch[:1, :90], alone, rtol=0, atol=1e-6)
