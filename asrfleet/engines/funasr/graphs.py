"""CUDA graphs for the encoder and the decoder: a batch is a few launches, not thousands.

A batch of short segments costs the GPU a few milliseconds of arithmetic, but eager PyTorch
launches the encoder's and decoder's ~3 000 kernels one by one, each paid in host time, so the
engine's GPU thread, not the GPU, bounds an instance. A CUDA graph records those launches once and
replays them with one call.

A graph replays fixed shapes at fixed addresses, so:
  * batches are padded up to bucket shapes (segments, frames, tokens). Padding changes no result:
    padded frames and tokens are masked in attention and in the FSMN memory blocks, exactly as
    FunASR masks a shorter segment in a batch, and padded rows are dropped;
  * inputs and outputs live in `Slots`, flat buffers that every graph shares (each uses a prefix,
    viewed in its shape). One thread runs the model, so two graphs never run at once;
  * a bucket is recorded the first time a batch needs it, unless a graph of a somewhat larger
    shape is already recorded: the batch is then padded to that shape and borrows it, until its
    own shape has come `RECORD_AFTER` times. Recording stalls the GPU thread, and a workload's
    rarest shapes keep coming long after its common ones are recorded, while replaying a larger
    graph costs the host nothing more and the GPU a little padding. All graphs share one memory
    pool, so together they hold about what the largest holds, not the sum.
Batches over `max_frames` padded frames run eagerly: there the GPU is the bound, not the host.

The encoder's graph also computes the CIF predictor's weights (float32, as eagerly), which are
copied to the host for the integrate-and-fire recurrence. BiCifParaformer's timestamp head (an
upsampling convolution and a bidirectional LSTM over three times the frames) is a graph of its own,
replayed right after: the GPU runs its LSTM while the host runs that recurrence. Eagerly, cuDNN
launches two kernels per step and direction, hundreds a batch, each paid in host time.

A batch's inputs reach the graphs through pinned buffers and its results leave through pinned
copies that nobody waits for on the GPU thread: the host thread waits for them, while the GPU
thread already pads and sends the next batch.

With `capture` off, `GraphedModel` runs the same padded code eagerly: tests on the CPU check that
padding to buckets changes no transcript.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import cached_property, partial

import numpy as np
import torch

from asrfleet.engines.funasr.gpu_clock import ENCODED, START, WEIGHTS, BatchMarks, record_event
from asrfleet.engines.funasr.segments import FEATURE_DIM
from asrfleet.engines.funasr.timestamps import has_timestamp_head, timestamp_alphas
from asrfleet.engines.funasr.transfers import to_device, to_host

log = logging.getLogger(__name__)

# Padded frames per batch up to which batches run as graphs (4096 encoder frames: 245 s of audio;
# beyond, the GPU's work outweighs the launches). It bounds the memory that graphs hold.
MAX_GRAPH_FRAMES = 4096
# (up to this length, round up to a multiple of this step): finer where segments are common.
# Coarse enough that a workload meets few shapes (each is recorded once, stalling the GPU thread),
# fine enough that padding wastes little; segments over 512 frames (30 s) run eagerly, so long
# recordings' batches (segments up to 60 s) cost no graph memory.
FRAME_STEPS = ((64, 16), (256, 32), (512, 64))
TOKEN_STEPS = ((128, 16), (1024, 32))
ITEM_BUCKETS = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
# A shape without its own graph borrows a recorded one up to this much larger (in padded
# segments x frames x tokens), until it has come this often.
BORROW_UP_TO = 2.0
RECORD_AFTER = 8

Dense = Callable[[], AbstractContextManager[None]]


def round_up(n: int, steps: tuple[tuple[int, int], ...]) -> int | None:
    """`n` rounded up to its bucket; None past the last one."""
    for limit, step in steps:
        if n <= limit:
            return -(-n // step) * step
    return None


def items_bucket(n: int) -> int | None:
    return next((b for b in ITEM_BUCKETS if b >= n), None)


Key = tuple  # ("encode", segments, frames) or ("decode", segments, frames, tokens)


def larger_recorded(key: Key, recorded: Iterable[Key], up_to: float = BORROW_UP_TO) -> Key | None:
    """The smallest recorded key of the same kind that is at least `key` in every dimension and at
    most `up_to` times its size (the product of its dimensions); None if there is none."""
    size = math.prod(key[1:])
    fits = [
        other
        for other in recorded
        if other[0] == key[0]
        and len(other) == len(key)
        and all(mine <= theirs for mine, theirs in zip(key[1:], other[1:], strict=True))
        and math.prod(other[1:]) <= up_to * size
    ]
    return min(fits, key=lambda other: (math.prod(other[1:]), other), default=None)


def supports(model: torch.nn.Module) -> bool:
    """Whether `model` is built the way `encode_masked` and `decode_tokens` assume.

    They repeat `SANMEncoder.forward` and `ParaformerSANMDecoder.forward` with the masks given,
    because those build their masks from lengths on the host (a GPU sync, which a graph cannot
    hold). Any other architecture runs eagerly.
    """
    from funasr.models.transformer.embedding import SinusoidalPositionEncoder

    encoder = getattr(model, "encoder", None)
    decoder = getattr(model, "decoder", None)
    return (
        type(encoder).__name__ == "SANMEncoder"
        and type(decoder).__name__ == "ParaformerSANMDecoder"
        and getattr(model, "normalize", None) is None
        and not encoder.interctc_layer_idx
        and encoder.normalize_before
        and (encoder.embed is None or isinstance(encoder.embed, SinusoidalPositionEncoder))
        and decoder.normalize_before
        and decoder.output_layer is not None
    )


def encode_masked(
    model: torch.nn.Module, feats: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor | None
) -> torch.Tensor:
    """`SANMEncoder.forward` given its mask (B, 1, T) and its position encoding (1, T, D), then
    padded frames zeroed as `Recognizer` does. (FunASR's position encoder copies a constant from
    the host at every call, which a graph cannot hold: `position_encoding` makes it beforehand.)"""
    encoder = model.encoder
    x = feats * encoder.output_size() ** 0.5
    if positions is not None:
        x = x + positions
    x, frames = encoder.encoders0(x, mask)[:2]
    x, frames = encoder.encoders(x, frames)[:2]
    x = encoder.after_norm(x)
    return x.float() * mask.transpose(1, 2)


def position_encoding(model: torch.nn.Module, frames: int, device: torch.device) -> torch.Tensor | None:
    """What `SinusoidalPositionEncoder.forward` adds to float32 features of `frames` frames."""
    embed = model.encoder.embed
    if embed is None:
        return None
    positions = torch.arange(1, frames + 1, device=device)[None, :]
    return embed.encode(positions, FEATURE_DIM, torch.float32).to(device)


def decode_tokens(
    model: torch.nn.Module,
    memory: torch.Tensor,
    memory_mask: torch.Tensor,
    embeds: torch.Tensor,
    tgt_mask: torch.Tensor,
) -> torch.Tensor:
    """`ParaformerSANMDecoder.forward` given its masks, then `cal_decoder_with_predictor`'s
    log-softmax and the best token at each position."""
    decoder = model.decoder
    args = (embeds, tgt_mask, memory, memory_mask)
    args = decoder.decoders(*args)[:4]
    if decoder.decoders2 is not None:
        args = decoder.decoders2(*args)[:4]
    x = decoder.decoders3(*args)[0]
    logits = decoder.output_layer(decoder.after_norm(x))
    return torch.log_softmax(logits, dim=-1).argmax(dim=-1)


class Slots:
    """Flat buffers whose prefixes every graph reads and writes: one address per slot for any shape.

    Inputs from the host go through `staged`, a pinned buffer of the same size: a copy from
    ordinary (pageable) memory makes the host wait until the GPU has reached it, that is, until
    the previous batch's work queued before it is done; from pinned memory the host goes on at
    once, and prepares the next batch while the GPU still runs this one.
    """

    def __init__(
        self, device: torch.device, sizes: dict[str, tuple[int, torch.dtype]], staged: tuple[str, ...] = ()
    ) -> None:
        self._flat = {name: torch.zeros(n, dtype=dtype, device=device) for name, (n, dtype) in sizes.items()}
        pinned = device.type == "cuda"
        self._host = {
            name: torch.zeros(sizes[name][0], dtype=sizes[name][1], pin_memory=pinned) for name in staged
        }
        # each staged buffer's last copy, which must be done before the host writes the buffer again
        self._copied: dict[str, torch.cuda.Event] = {}
        self._device = device

    def view(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return self._flat[name][: math.prod(shape)].view(shape)

    def fill_padded(self, name: str, shape: tuple[int, ...], values: torch.Tensor) -> None:
        """The slot in `shape`, zeros, with `values` in its leading corner."""
        view = self.view(name, shape)
        view.zero_()
        view[tuple(slice(0, n) for n in values.shape)].copy_(values)

    def host(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The staged buffer of `name` in `shape`, to write, then `send`."""
        copied = self._copied.pop(name, None)
        if copied is not None:
            copied.synchronize()
        return self._host[name][: math.prod(shape)].view(shape).numpy()

    def send(self, name: str, shape: tuple[int, ...]) -> None:
        """Copy the staged buffer of `name` in `shape` into its slot, without waiting for it."""
        source = self._host[name][: math.prod(shape)].view(shape)
        self.view(name, shape).copy_(source, non_blocking=True)  # on the CPU, a plain copy
        copied = record_event(self._device)
        if copied is not None:
            self._copied[name] = copied

    def stage(self, name: str, values: np.ndarray) -> None:
        """Copy `values` into the slot through its staged buffer."""
        self.host(name, values.shape)[...] = values
        self.send(name, values.shape)


@dataclass
class Encoded:
    out: torch.Tensor  # (B, T, D) float32, padded frames zero
    host_lengths: list[int]  # frames per row, on the host: reading them from the device waits for it
    timestamp_alphas: torch.Tensor | None  # (B, T x upsample) unscaled; None: no timestamp head
    cif_alphas: np.ndarray | None  # (B, T + 1) the predictor's weights with its tail, on the host
    # (T without a tail)
    cif_sums: np.ndarray | None  # (B,) their sums, as the device adds them

    @cached_property
    def lengths(self) -> torch.Tensor:
        """`host_lengths` on the device (int64), copied when first asked: only the eager fallbacks
        need them there."""
        return to_device(np.array(self.host_lengths, dtype=np.int64), self.out.device)


@dataclass
class GraphStats:
    replayed: int = 0  # graphs replayed: the encoder's and the decoder's, so about two a batch
    eager: int = 0  # batches whose encoder ran op by op: too large for a graph
    borrowed: int = 0  # graphs run at a larger recorded shape than the batch's own bucket


class GraphedModel:
    """The encoder (with the timestamp head) and the decoder of one Paraformer at bucketed shapes,
    as CUDA graphs."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        dense: Dense,
        max_frames: int = MAX_GRAPH_FRAMES,
        capture: bool = True,
    ) -> None:
        self.model = model
        self.device = device
        self.dense = dense  # the autocast and backend settings the model runs under
        self.max_frames = max_frames
        self.capture = capture
        self.stats = GraphStats()
        self._graphs: dict[Key, torch.cuda.CUDAGraph] = {}
        self._met: Counter[Key] = Counter()  # shapes met without a graph of their own
        self._pool = torch.cuda.graph_pool_handle() if capture else None
        self._slots: Slots | None = None
        self._positions: dict[int, torch.Tensor | None] = {}  # by frames; graphs hold their address
        self._width = model.encoder.output_size()
        self._timestamps = has_timestamp_head(model)
        self._upsample = model.predictor.upsample_times if self._timestamps else 1
        self._cif = has_cif_predictor(model)

    @property
    def recorded(self) -> int:
        """Graphs recorded so far."""
        return len(self._graphs)

    def slots(self) -> Slots:
        """Made at the first batch, inside the caller's inference mode, like everything they meet."""
        if self._slots is None:
            n, d = self.max_frames, self._width
            self._slots = Slots(
                self.device,
                {
                    "feats": (n * FEATURE_DIM, torch.float32),
                    "frame_mask": (n, torch.bool),
                    "encoded": (n * d, torch.float32),
                    "memory": (n * d, torch.float32),
                    "memory_mask": (n, torch.float32),
                    "embeds": (n * d, torch.float32),
                    "token_mask": (n, torch.float32),
                    "tokens": (n, torch.int64),
                    "timestamp_alphas": (n * self._upsample, torch.float32),
                    "cif_alphas": (2 * n, torch.float32),  # (b, t + 1): at most n + b frames
                    "cif_sums": (n, torch.float32),
                },
                staged=("feats", "frame_mask", "memory_mask", "token_mask"),
            )
        return self._slots

    def encode(self, feats: list[np.ndarray], marks: BatchMarks | None = None) -> Encoded | None:
        """The encoder's output, the predictor's and the timestamp head's weights; None: run eagerly.

        Two graphs: the encoder with the predictor's weights, then the timestamp head. The
        predictor's weights are copied to the host between them, so that the host runs the
        integrate-and-fire recurrence (`cif.fire_tokens`) while the GPU runs the head's LSTM.
        `marks`: where the batch's GPU work starts (START), where the weights' copy is queued
        (WEIGHTS), and where its encoding ends (ENCODED).
        """
        marks = marks or BatchMarks(self.device)
        lengths = [f.shape[0] for f in feats]
        shape = self._shape(len(feats), max(lengths))
        if shape is None or feats[0].shape[1] != FEATURE_DIM:
            self.stats.eager += 1
            return None
        _, b, t = self._choose(("encode", *shape))
        slots = self.slots()
        pad_features(feats, b, t, out=slots.host("feats", (b, t, FEATURE_DIM)))
        marks.mark(START)
        slots.send("feats", (b, t, FEATURE_DIM))
        slots.stage("frame_mask", _mask(_pad_rows(lengths, b), t)[:, None, :])
        if t not in self._positions:
            with self.dense():
                self._positions[t] = position_encoding(self.model, t, self.device)
        self._run(("encode", b, t), partial(self._encoder, b, t))
        n, longest = len(feats), max(lengths)
        out = slots.view("encoded", (b, t, self._width))[:n, :longest].clone()
        weights: list[torch.Tensor] = []
        if self._cif:
            tail = int(self.model.predictor.tail_threshold > 0.0)
            weights = [
                to_host(slots.view("cif_alphas", (b, t + tail))[:n, : longest + tail]),
                to_host(slots.view("cif_sums", (b,))[:n]),
            ]
        marks.mark(WEIGHTS)  # the weights' copy: the host waits for this, then runs the CIF
        alphas = None
        if self._timestamps:
            self._run(("stamps", b, t), partial(self._timestamp_head, b, t))
            up = longest * self._upsample
            alphas = slots.view("timestamp_alphas", (b, t * self._upsample))[:n, :up].clone()
        marks.mark(ENCODED)
        copied = marks.events.get(WEIGHTS)
        if copied is not None:
            copied.synchronize()  # the predictor's weights are on the host; the LSTM runs on
        cif_alphas, cif_sums = (w.numpy() for w in weights) if weights else (None, None)
        return Encoded(out, lengths, alphas, cif_alphas, cif_sums)

    def _encoder(self, b: int, t: int) -> None:
        """The encoder's graph: its output and, for a CIF predictor, the predictor's weights."""
        slots = self.slots()
        mask = slots.view("frame_mask", (b, 1, t))
        feats = slots.view("feats", (b, t, FEATURE_DIM))
        encoded = encode_masked(self.model, feats, mask, self._positions[t])
        slots.view("encoded", (b, t, self._width)).copy_(encoded)
        if self._cif:
            with _as_eagerly():
                alphas, _ = cif_weights(self.model.predictor, encoded, mask[:, 0].float())
            slots.view("cif_alphas", (b, alphas.size(1))).copy_(alphas)
            slots.view("cif_sums", (b,)).copy_(alphas.sum(-1))

    def _timestamp_head(self, b: int, t: int) -> None:
        """The timestamp head's graph, on the encoder's output of the same shape."""
        slots = self.slots()
        mask = slots.view("frame_mask", (b, 1, t))
        with _as_eagerly():
            up_lens = mask.sum(dim=(1, 2)) * self._upsample
            encoded = slots.view("encoded", (b, t, self._width))
            alphas = timestamp_alphas(self.model, encoded, up_lens, packed=False)
        slots.view("timestamp_alphas", (b, t * self._upsample)).copy_(alphas)

    def decode(
        self, memory: torch.Tensor, memory_lens: list[int], embeds: torch.Tensor, token_lens: list[int]
    ) -> torch.Tensor | None:
        """The best token at each position (B, L) on the host, being copied (`to_host`); None: run
        eagerly."""
        count, frames, tokens = memory.size(0), memory.size(1), max(embeds.size(1), max(token_lens))
        shape = self._shape(count, frames)
        t_len = round_up(tokens, TOKEN_STEPS)
        if shape is None or t_len is None or shape[0] * t_len > self.max_frames:
            return None
        _, b, t, t_len = self._choose(("decode", *shape, t_len))
        slots = self.slots()
        slots.fill_padded("memory", (b, t, self._width), memory)
        slots.fill_padded("embeds", (b, t_len, self._width), embeds)
        slots.stage("memory_mask", _mask(_pad_rows(memory_lens, b), t, np.float32)[:, None, :])
        slots.stage("token_mask", _mask(_pad_rows(token_lens, b), t_len, np.float32)[:, :, None])

        def run() -> None:
            out = decode_tokens(
                self.model,
                slots.view("memory", (b, t, self._width)),
                slots.view("memory_mask", (b, 1, t)),
                slots.view("embeds", (b, t_len, self._width)),
                slots.view("token_mask", (b, t_len, 1)),
            )
            slots.view("tokens", (b, t_len)).copy_(out)

        self._run(("decode", b, t, t_len), run)
        return to_host(slots.view("tokens", (b, t_len))[:count, : embeds.size(1)])

    def _shape(self, count: int, frames: int) -> tuple[int, int] | None:
        b, t = items_bucket(count), round_up(frames, FRAME_STEPS)
        if b is None or t is None or b * t > self.max_frames:
            return None
        return b, t

    def _choose(self, key: Key) -> Key:
        """The shape to run a batch of bucket `key` at: its own where recorded, or where it has
        come `RECORD_AFTER` times (recorded now); else a larger recorded one, if any."""
        if key in self._graphs:
            return key
        self._met[key] += 1
        borrowed = larger_recorded(key, self._graphs, BORROW_UP_TO) if self._met[key] < RECORD_AFTER else None
        if borrowed is None:
            return key
        self.stats.borrowed += 1
        return borrowed

    def _run(self, key: Key, run: Callable[[], None]) -> None:
        if not self.capture:
            with self.dense():
                run()
            return
        graph = self._graphs.get(key)
        if graph is None:
            try:
                graph = self._graphs[key] = self._record(run)
            except RuntimeError as err:  # the batch still runs; a failed capture must not fail it
                log.warning("CUDA graphs off: recording %s failed (%s); running eagerly", key, err)
                self.capture = False
                torch.cuda.synchronize(self.device)
                self._run(key, run)
                return
            log.info("recorded a CUDA graph for %s (%d so far)", key, len(self._graphs))
        graph.replay()
        self.stats.replayed += 1

    def _record(self, run: Callable[[], None]) -> torch.cuda.CUDAGraph:
        # One eager run on a side stream first, as PyTorch advises: lazy initialisation (cuBLAS
        # workspaces, kernel loading) must not happen inside the capture.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with self.dense(), torch.cuda.stream(side):
            run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (punctuation) may use the GPU while this one records.
        with self.dense(), torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            run()
        return graph


def pad_features(
    feats: list[np.ndarray], rows: int, frames: int, out: np.ndarray | None = None
) -> np.ndarray:
    """The segments' features in one zero-padded (rows, frames, width) array: `out`, if given."""
    batch = np.empty((rows, frames, feats[0].shape[1]), dtype=np.float32) if out is None else out
    for i, f in enumerate(feats):
        batch[i, : f.shape[0]] = f
        batch[i, f.shape[0] :] = 0
    batch[len(feats) :] = 0
    return batch


def has_cif_predictor(model: torch.nn.Module) -> bool:
    """Whether the model's predictor is BiCifParaformer's, whose weights `cif_weights` computes."""
    from funasr.models.bicif_paraformer.cif_predictor import CifPredictorV3

    return isinstance(getattr(model, "predictor", None), CifPredictorV3)


def cif_weights(
    predictor: torch.nn.Module, encoder_out: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`CifPredictorV3.forward` up to its integrate-and-fire, without its timestamp head (an
    upsampling convolution and a BLSTM whose result it drops): the weight per frame and the token
    count, with FunASR's tail where the predictor adds one.

    The tail is `tail_process_fn`'s arithmetic, step by step, less its hidden frames: it makes
    their zero frame on the host and copies it over, which a CUDA graph cannot hold (the caller
    adds that frame, `with_tail_frame`). `mask`: (B, T) float, 1 inside each row's length.
    """
    p = predictor
    output = torch.relu(p.cif_conv1d(p.pad(encoder_out.transpose(1, 2)))).transpose(1, 2)
    alphas = torch.relu(torch.sigmoid(p.cif_output(output)) * p.smooth_factor - p.noise_threshold)
    alphas = (alphas * mask[:, :, None]).squeeze(-1)
    if p.tail_threshold <= 0.0:
        return alphas, alphas.sum(-1)
    zeros = torch.zeros((alphas.size(0), 1), dtype=torch.float32, device=alphas.device)
    ends = torch.cat([torch.ones_like(zeros), mask], dim=1) - torch.cat([mask, zeros], dim=1)
    alphas = torch.add(torch.cat([alphas, zeros], dim=1), ends * p.tail_threshold)
    return alphas, torch.floor(alphas.sum(dim=-1))


def with_tail_frame(predictor: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The frames that CIF integrates: `tail_process_fn` adds a zero frame where it adds a tail."""
    if predictor.tail_threshold <= 0.0:
        return hidden
    return torch.cat([hidden, hidden.new_zeros(hidden.size(0), 1, hidden.size(2))], dim=1)


@contextmanager
def _as_eagerly() -> Iterator[None]:
    """What the predictor and the timestamp head run under eagerly: float32, and cuDNN for their
    convolutions and LSTM (`Recognizer._dense` turns both off for the encoder and decoder)."""
    with torch.autocast("cuda", enabled=False), torch.backends.cudnn.flags(enabled=True):
        yield


def _pad_rows(lengths: list[int], rows: int) -> list[int]:
    """Lengths of the padded batch: a padding row gets one frame, so no softmax sees only masks."""
    return list(lengths) + [1] * (rows - len(lengths))


def _mask(lengths: list[int], width: int, dtype: type = np.bool_) -> np.ndarray:
    return (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(dtype)
