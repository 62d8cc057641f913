"""The VAD scorer's batches at a few padded shapes, each replayed from a CUDA graph on a GPU
(`vad_scores.ScoreServer` in the scorer process, `--vad-scores process`).

Why: the batched network (`vad_scores.fsmn_forward`) is about 60 small kernels, under a
millisecond of GPU work for a batch of a few 5-second chunks. In the scorer process its CUDA
context shares the GPU with the engine's, which is nearly always busy, and without MPS the GPU
runs one context at a time: whenever the scorer's context runs out of queued work (between two
launches, at each copy back to the host) the GPU returns to the engine, and the scorer waits for
its next turn. Session 16 measured 5.1 ms a batch, and one instance 5 % slower than with the
network in its workers. Here a batch is queued whole, from fixed places, with one wait at its end:
three copies in from pinned host memory, one graph launch, two copies out.

Shapes: rows padded to a power of two, frames to a multiple of `frame_step`. A batch of more
padded frames than `max_cells`, and shapes past `max_graphs`, run eagerly (`ScoreServer`'s own
path). Padding reaches no real row: every layer acts frame by frame except the FSMN blocks, which
look only left, and each row's memory is gathered at its own length. So padded frames and rows
may hold whatever an earlier batch left there; only the padded rows' lengths are reset (to 0), so
that the gather stays inside the batch.

The graphs share one memory pool, one set of inputs and one set of outputs: memory stays near
what the largest shape needs. Tests run the padded path on the CPU (no graphs); the graphs
themselves were checked on a GPU (`benchmarks/results/README.md`, session 17).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from asrfleet.engines.funasr.vad_scores import ScoreRequest, Scores, memory_shape

log = logging.getLogger(__name__)

Network = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Shape:
    rows: int
    frames: int
    columns: int

    @property
    def cells(self) -> int:
        return self.rows * self.frames


def padded_shape(rows: int, frames: int, columns: int, frame_step: int) -> Shape:
    """The shape a batch of `rows` chunks, the longest `frames` frames, is padded to."""
    padded_rows = 1 << max(0, rows - 1).bit_length()
    return Shape(padded_rows, -(-frames // frame_step) * frame_step, columns)


class _Buffers:
    """Inputs and outputs at fixed places, on one device, viewed at each shape. Each view is a
    prefix of its buffer, so copies between host and device are single contiguous ones."""

    def __init__(
        self,
        dims: tuple[int, int],
        memory: tuple[int, int, int],
        max_rows: int,
        max_cells: int,
        device: torch.device | str,
        pin: bool,
    ) -> None:
        def zeros(*size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros(*size, dtype=dtype, device=device, pin_memory=pin)

        self.dim, out_dim = dims
        self.feats = zeros(max_cells * self.dim)
        self.lengths = zeros(max_rows, dtype=torch.int64)
        self.memory = zeros(max_rows, *memory, 1)  # row first: a batch's rows are a prefix
        self.scores = zeros(max_cells * out_dim)
        self.after = zeros(max_rows, *memory, 1)

    def inputs(self, shape: Shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.feats[: shape.cells * self.dim].view(shape.rows, shape.frames, self.dim)
        return feats, self.lengths[: shape.rows], self.memory[: shape.rows]

    def outputs(self, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.scores[: shape.cells * shape.columns].view(shape.rows, shape.frames, shape.columns)
        return scores, self.after[: shape.rows]


class PaddedNetwork:
    """Runs `network` (`vad_scores.fsmn_forward`'s signature) on padded batches; on CUDA with
    `graphs`, each shape is recorded as a CUDA graph on first use and replayed after.
    Call it on one thread, with the stream it should use current."""

    def __init__(
        self,
        network: Network,
        encoder: torch.nn.Module,
        device: torch.device,
        *,
        graphs: bool = True,
        max_rows: int = 64,
        frame_step: int = 64,
        max_cells: int = 16384,
        max_graphs: int = 160,
    ) -> None:
        self.network = network
        self.device = device
        self.graphs = graphs and device.type == "cuda"
        self.max_rows = max_rows
        self.frame_step = frame_step
        self.max_cells = max_cells
        self.max_graphs = max_graphs
        self.memory = memory_shape(encoder)
        dims = (encoder.input_dim, self._output_dim(encoder))
        on_gpu = device.type == "cuda"
        self.host = _Buffers(dims, self.memory, max_rows, max_cells, "cpu", pin=on_gpu)
        self.on_device = (
            _Buffers(dims, self.memory, max_rows, max_cells, device, pin=False) if on_gpu else self.host
        )
        self._graphs: dict[Shape, torch.cuda.CUDAGraph] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.graphs else None
        self.replays = 0

    @property
    def recorded(self) -> int:
        return len(self._graphs)

    def shape_for(self, requests: list[ScoreRequest]) -> Shape | None:
        """The padded shape of this batch, or None where it runs eagerly instead."""
        shape = padded_shape(
            len(requests),
            max(r.feats.shape[0] for r in requests),
            max(r.columns for r in requests),
            self.frame_step,
        )
        return shape if shape.rows <= self.max_rows and shape.cells <= self.max_cells else None

    @torch.inference_mode()
    def run(self, requests: list[ScoreRequest], shape: Shape) -> list[Scores]:
        self._fill(requests, shape)
        on_gpu = self.on_device is not self.host
        if on_gpu:
            for to, source in zip(self.on_device.inputs(shape), self.host.inputs(shape), strict=True):
                to.copy_(source, non_blocking=True)
        graph = self._graph(shape)
        if graph is None:
            self._forward(shape)
        else:
            graph.replay()
            self.replays += 1
        if on_gpu:
            for to, source in zip(self.host.outputs(shape), self.on_device.outputs(shape), strict=True):
                to.copy_(source, non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()  # the batch's one wait
        return self._answers(requests, shape)

    def _output_dim(self, encoder: torch.nn.Module) -> int:
        """The network's score columns, from one frame through it (no attribute names assumed)."""
        blocks, proj, keep = self.memory
        with torch.inference_mode():
            scores, _ = self.network(
                torch.zeros(1, 1, encoder.input_dim, device=self.device),
                torch.ones(1, dtype=torch.int64, device=self.device),
                torch.zeros(blocks, 1, proj, keep, 1, device=self.device),
            )
        return scores.shape[-1]

    def _fill(self, requests: list[ScoreRequest], shape: Shape) -> None:
        feats, lengths, memory = self.host.inputs(shape)
        lengths.zero_()  # the padded rows' gather stays inside the batch
        for b, request in enumerate(requests):
            n = request.feats.shape[0]
            feats[b, :n] = torch.from_numpy(request.feats)
            lengths[b] = n
            if request.memory is None:
                memory[b].zero_()
            else:
                memory[b, ..., 0] = torch.from_numpy(request.memory)

    def _forward(self, shape: Shape) -> None:
        """The network from the inputs into the outputs, at this shape."""
        feats, lengths, memory = self.on_device.inputs(shape)
        scores, after = self.network(feats, lengths, memory.permute(1, 0, 2, 3, 4))
        out_scores, out_after = self.on_device.outputs(shape)
        out_scores.copy_(scores[:, :, : shape.columns])
        out_after.copy_(after.permute(1, 0, 2, 3, 4))

    def _graph(self, shape: Shape) -> torch.cuda.CUDAGraph | None:
        if not self.graphs:
            return None
        graph = self._graphs.get(shape)
        if graph is None and len(self._graphs) < self.max_graphs:
            try:
                graph = self._graphs[shape] = self._record(shape)
            except RuntimeError as err:  # the batch still runs; a failed recording must not fail it
                log.warning("VAD graphs off: recording %s failed (%s); running eagerly", shape, err)
                self.graphs = False
                torch.cuda.synchronize(self.device)
        return graph

    def _record(self, shape: Shape) -> torch.cuda.CUDAGraph:
        # One eager run first, as PyTorch advises (lazy initialisation must not happen inside the
        # recording), on the stream that is current: the scorer's own, not the default one.
        self._forward(shape)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            self._forward(shape)
        return graph

    def _answers(self, requests: list[ScoreRequest], shape: Shape) -> list[Scores]:
        scores, after = (t.numpy() for t in self.host.outputs(shape))
        # Copies: the buffers serve the next batch.
        return [
            Scores(scores[b, : r.feats.shape[0], : r.columns].copy(), after[b, ..., 0].copy())
            for b, r in enumerate(requests)
        ]
