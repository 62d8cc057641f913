"""Continuous integrate-and-fire (CIF) without a kernel launch per frame.

Paraformer's predictor turns encoder frames into one embedding per token: it integrates a weight
per frame (alphas) and fires a token whenever the sum reaches 1. FunASR runs that recurrence as a
Python loop of about 20 torch operations a frame; on a GPU each one is a kernel launch, paid on the
host. BiCifParaformer runs it twice: `cif` for the token embeddings (per batch, more launches than
the whole encoder's for any but the shortest segments), and `cif_wo_hidden` again per segment for
the timestamps.

Here the recurrence (which frames fire, and with what weights) runs on the host in float32, the same
operations in the same order. The embeddings are then summed on the device one step per frame of
the longest token rather than per frame of the segment, each token's terms added in FunASR's order.
The results equal FunASR's exactly (tested against its own functions, through `cif`). The
recognizer calls `cif`'s two halves itself, `fire_tokens` on the host and `embed_tokens`, so that
the first can run while the GPU works; `install()` puts `cif_wo_hidden` in place of FunASR's,
inside its timestamp code.
"""

from __future__ import annotations

from dataclasses import dataclass

import funasr.utils.timestamp_tools as timestamp_tools
import numpy as np
import torch

from asrfleet.engines.funasr.transfers import to_device

_ROWS_FOR_ARRAYS = 16  # below this, a loop over float32 scalars beats array operations per frame
_GATHER_BYTES = 64 * 2**20  # device memory for the hidden frames gathered at once


# -- timestamps: FunASR's cif_wo_hidden --------------------------------------------------------


def integrate_and_fire(alphas: np.ndarray, threshold: float) -> np.ndarray:
    """The integrated weight at every frame (B, T), firing whenever it reaches `threshold`.

    The same float32 arithmetic, in the same order, as FunASR's `cif_wo_hidden`. The engine's host
    thread runs it one segment at a time (`Recognizer._decode`), and again for a segment's rescan:
    for a few rows, a loop over float32 scalars is much faster than array operations per frame.
    """
    alphas = np.ascontiguousarray(alphas, dtype=np.float32)
    limit = np.float32(threshold)
    if alphas.shape[0] < _ROWS_FOR_ARRAYS:
        return np.stack([_integrate_row(row, limit) for row in alphas]) if len(alphas) else alphas.copy()
    integrate = np.zeros(alphas.shape[0], dtype=np.float32)
    fires = np.empty_like(alphas)
    for t in range(alphas.shape[1]):
        integrate = integrate + alphas[:, t]
        fires[:, t] = integrate
        integrate = np.where(integrate >= limit, integrate - limit, integrate)
    return fires


def _integrate_row(row: np.ndarray, limit: np.float32) -> np.ndarray:
    fires = np.empty_like(row)
    integrate = np.float32(0.0)
    for t, alpha in enumerate(row):  # numpy float32 scalars: float32 arithmetic throughout
        integrate = integrate + alpha
        fires[t] = integrate
        if integrate >= limit:
            integrate = integrate - limit
    return fires


def cif_wo_hidden(alphas: torch.Tensor, threshold: float) -> torch.Tensor:
    """Drop-in for FunASR's `cif_wo_hidden` (timestamp_tools): the fires, (B, T)."""
    fires = integrate_and_fire(alphas.detach().float().cpu().numpy(), threshold)
    return torch.from_numpy(fires).to(alphas.device)


# -- token embeddings: FunASR's BiCif cif --------------------------------------------------------


@dataclass(frozen=True)
class Firing:
    """FunASR's `cif` recurrence, frame by frame (all (B, T))."""

    fires: np.ndarray  # the integrated weight after adding the frame's alpha (float32)
    fired: np.ndarray  # whether a token fires at the frame (bool)
    shares: np.ndarray  # the frame's weight in the token it belongs to or ends (float32)
    rests: np.ndarray  # at a firing frame, its weight carried into the next token (float32)


def fire_tokens(alphas: np.ndarray, threshold: float) -> Firing:
    """The recurrence of FunASR's `cif` (bicif_paraformer/cif_predictor.py) in float32 on the host.

    Only what depends on the frame before runs frame by frame (three array operations a frame,
    into preallocated rows); the rest is computed from it for every frame at once, with the same
    float32 operations as FunASR's loop. The engine's GPU waits for this between its encoder and
    decoder, so as little as possible runs frame by frame.
    """
    alphas = np.ascontiguousarray(alphas, dtype=np.float32)
    one, limit = np.float32(1.0), np.float32(threshold)
    by_frame = np.ascontiguousarray(alphas.T)  # (T, B): a frame's weights side by side
    fires_t = np.empty_like(by_frame)
    fired_t = np.empty(by_frame.shape, dtype=bool)
    integrate = np.zeros(alphas.shape[0], dtype=np.float32)
    for alpha, fires, fired in zip(by_frame, fires_t, fired_t, strict=True):
        np.add(integrate, alpha, out=fires)
        np.greater_equal(fires, limit, out=fired)
        np.subtract(fires, fired, out=integrate)  # FunASR's `integrate - 1` where it fired
    fires, fired = np.ascontiguousarray(fires_t.T), np.ascontiguousarray(fired_t.T)
    before = np.zeros_like(alphas)  # the integrated weight before each frame's, as the loop had it
    np.subtract(fires[:, :-1], fired[:, :-1], out=before[:, 1:])
    shares = np.where(fired, one - before, alphas)
    return Firing(fires, fired, shares, alphas - shares)


@dataclass(frozen=True)
class _Terms:
    """Each token's sum as terms (frame, weight), tokens sorted by term count, longest first."""

    rows: np.ndarray  # (N,) the token's batch row
    slots: np.ndarray  # (N,) the token's position in its row
    frames: np.ndarray  # (N, S) flat frame index (row * T + t) of each term
    weights: np.ndarray  # (N, S) float32 weight of each term (0 past a token's last term)
    counts: np.ndarray  # (N,) terms per token, non-increasing
    first: np.ndarray  # (N,) whether the token is its row's first (its sum starts from zeros)


def _terms(firing: Firing) -> _Terms:
    """A row's first token sums frames 0..end; a later one starts with the rest of the previous
    token's firing frame, then frames prev+1..end (as FunASR's loop carries `remainds`)."""
    length = firing.fired.shape[1]
    rows, ends = np.nonzero(firing.fired)  # row-major: by row, then by frame
    first = np.ones(rows.size, dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    prev = np.empty_like(ends)
    prev[0:1] = -1
    prev[1:] = ends[:-1]
    prev[first] = -1
    starts = np.where(first, 0, prev)
    counts = ends - starts + 1
    slots = np.arange(rows.size) - np.maximum.accumulate(np.where(first, np.arange(rows.size), 0))
    order = np.argsort(-counts, kind="stable")
    rows, slots, starts, counts, first, prev = (a[order] for a in (rows, slots, starts, counts, first, prev))
    steps = np.arange(int(counts[0]))
    t = np.minimum(starts[:, None] + steps[None, :], length - 1)
    weights = np.where(steps[None, :] < counts[:, None], firing.shares[rows[:, None], t], np.float32(0))
    weights[~first, 0] = firing.rests[rows[~first], prev[~first]]
    return _Terms(rows, slots, rows[:, None] * length + t, weights.astype(np.float32), counts, first)


def cif(hidden: torch.Tensor, alphas: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop-in for FunASR's BiCif `cif`: token embeddings (B, L, D) and fires (B, T)."""
    label_len = int(torch.round(alphas.sum(-1)).int().max()) if hidden.size(0) else 0
    firing = fire_tokens(alphas.detach().float().cpu().numpy(), threshold)
    return embed_tokens(hidden, firing, label_len), torch.from_numpy(firing.fires).to(hidden.device)


def embed_tokens(hidden: torch.Tensor, firing: Firing, label_len: int) -> torch.Tensor:
    """`cif`'s token embeddings (B, L, D) from its recurrence, run beforehand on the host.

    `label_len`: the largest rounded sum of a row's alphas, FunASR's width for the embeddings.
    """
    batch, length, dim = hidden.shape
    if not firing.fired.any():
        return hidden.new_zeros(batch, label_len, dim)
    terms = _terms(firing)
    sums = _sum_terms(hidden.reshape(batch * length, dim), terms)
    width = max(label_len, int(terms.slots.max()) + 1)  # FunASR fails where a row fires more
    embeds = hidden.new_zeros(batch, width, dim)
    device = hidden.device
    embeds[to_device(terms.rows, device), to_device(terms.slots, device)] = sums
    return embeds


def _sum_terms(flat: torch.Tensor, terms: _Terms) -> torch.Tensor:
    """Every token's sum of weight x frame, added term by term in FunASR's order.

    Tokens are sorted by term count, so the tokens still adding at step j are a prefix. A first
    token's sum starts from +0 (FunASR adds its first term to zeros); a later one's from its first
    term alone, and adding -0.0 leaves any float as it is.
    """
    device, dim = flat.device, flat.size(1)
    frames = to_device(terms.frames, device)
    weights = to_device(terms.weights, device).to(flat.dtype)
    start = to_device(np.where(terms.first, np.float32(0.0), np.float32(-0.0)), device).to(flat.dtype)
    active = [int(np.count_nonzero(terms.counts > j)) for j in range(terms.frames.shape[1])]
    chunk = max(1, _GATHER_BYTES // max(1, active[0] * dim * flat.element_size()))
    sums = start[:, None] + weights[:, 0, None] * flat[frames[:, 0]]
    for j0 in range(1, len(active), chunk):
        n = active[j0]
        products = weights[:n, j0 : j0 + chunk, None] * flat[frames[:n, j0 : j0 + chunk]]
        for j in range(j0, min(j0 + chunk, len(active))):
            m = active[j]
            sums[:m] += products[:m, j - j0]
    return sums


# -- putting them in place ------------------------------------------------------------------------

FUNASR_CIF_WO_HIDDEN = timestamp_tools.cif_wo_hidden  # FunASR's own, for tests


def install() -> None:
    """Our `cif_wo_hidden` in place of FunASR's, which its timestamp code looks up at call time.

    (`cif` needs no such patch: the recognizer calls its two halves itself.)
    """
    timestamp_tools.cif_wo_hidden = cif_wo_hidden
