"""BiCifParaformer's timestamp head: a weight per upsampled frame, from which CIF finds each
token's time.

FunASR's `CifPredictorV3.get_upsample_timestamp` upsamples the encoder's output with a transposed
convolution, runs a bidirectional LSTM over it (three times as many frames as the encoder has) on
packed sequences, and maps each frame to a weight. `timestamp_alphas` does the same steps; the
encoder's CUDA graph (`graphs.py`) runs them with the LSTM on padded rows instead, since packing
needs the lengths on the host, a sync that a graph cannot hold.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def has_timestamp_head(model: torch.nn.Module) -> bool:
    """Whether `model` has BiCifParaformer's timestamp head in a form `timestamp_alphas` runs."""
    predictor = getattr(model, "predictor", None)
    kind = getattr(predictor, "upsample_type", None)
    if not hasattr(model, "calc_predictor_timestamp") or kind not in ("cnn", "cnn_blstm"):
        return False
    lstm = getattr(predictor, "blstm", None)
    return kind == "cnn" or (
        isinstance(lstm, torch.nn.LSTM)
        and (lstm.num_layers, lstm.bidirectional, lstm.batch_first, lstm.proj_size) == (1, True, True, 0)
    )


def timestamp_alphas(
    model: torch.nn.Module, encoded: torch.Tensor, up_lens: torch.Tensor, packed: bool = True
) -> torch.Tensor:
    """The head's weight per upsampled frame (B, T x upsample_times), padded frames zero, before
    `Recognizer` scales each row to its token count.

    `encoded`: the encoder's output, float32, padded frames zero; `up_lens`: each row's upsampled
    length, on the device. `packed`: the LSTM as FunASR runs it; else `_blstm_within_lengths`.
    """
    p = model.predictor
    upsampled = p.upsample_cnn(encoded.transpose(1, 2)).transpose(1, 2)
    if p.upsample_type == "cnn_blstm":
        blstm = _blstm_packed if packed else _blstm_within_lengths
        upsampled = blstm(p.blstm, upsampled, up_lens)
    elif p.upsample_type != "cnn":
        raise NotImplementedError(f"timestamp head {p.upsample_type!r}")
    alphas = torch.sigmoid(p.cif_output2(upsampled)).squeeze(-1)
    alphas = torch.relu(alphas * p.smooth_factor2 - p.noise_threshold2)
    return alphas * frame_mask(up_lens, alphas.size(1))


def frame_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) float: 1 where a row's frame is inside its length, 0 on padding."""
    return (torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]).float()


def _blstm_packed(lstm: torch.nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    return pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=x.size(1))[0]


def _blstm_within_lengths(lstm: torch.nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The same LSTM on the padded rows, the backward direction on each row reversed within its
    length: like packing, neither direction reads padding, and no length goes to the host.

    The arithmetic is the same, but cuDNN may pick other kernels for it, so the output can differ
    from the packed LSTM's in the last bits (`python -m benchmarks.recognizer --graphs` counts the
    timestamps that this changes)."""
    frames = torch.arange(x.size(1), device=x.device)[None, :].expand(x.size(0), -1)
    inside = frames < lengths[:, None]
    # each real frame's mirror within its row; padded frames stay where they are
    mirror = torch.where(inside, lengths[:, None] - 1 - frames, frames)[:, :, None]
    forward = _lstm_direction(lstm, x, "")
    backward = _lstm_direction(lstm, x.gather(1, mirror.expand_as(x)), "_reverse")
    return torch.cat([forward, backward.gather(1, mirror.expand_as(backward))], dim=-1)


def _lstm_direction(lstm: torch.nn.LSTM, x: torch.Tensor, suffix: str) -> torch.Tensor:
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if lstm.bias else ("weight_ih", "weight_hh")
    weights = [getattr(lstm, f"{name}_l0{suffix}") for name in names]
    state = x.new_zeros(1, x.size(0), lstm.hidden_size)
    # (input, (h0, c0), weights, has_biases, layers, dropout, train, bidirectional, batch_first)
    return torch._VF.lstm(x, (state, state), weights, lstm.bias, 1, 0.0, False, False, True)[0]
