"""FSMN-VAD's network for the audio workers, run in the engine process on its device, batched
(`--vad-scores engine`; by default the workers run it themselves).

An audio worker spent 19.6 ms of CPU on a 5-second utterance, 7.8 ms of it in the VAD's network
(FunASR's `FSMN`: about 0.4 M multiply-adds a 10 ms frame; session 13, 150 aishell utterances,
one CPU). The workers of every instance share the host's CPUs. Here the workers keep all the rest
of FunASR's VAD (filterbank, per-frame state machine) and ask the engine for the network's output:

* The worker side (`install_remote`): the VAD model's `encoder` becomes `RemoteFsmn`, which sends
  each chunk's features and the network's memory from the previous chunk, and waits for the
  answer. FunASR's `FsmnVADStreaming` code around it runs unchanged.
* The engine side (`ScoreServer`): a thread that takes every request waiting, pads them into one
  batch, runs the network (`traced`, TorchScript: no GIL) on its own CUDA stream, so that it does
  not queue behind the recognizer's batches, and answers each worker with only the score columns
  its VAD reads (the silence ids).

Measured on the 4x H200 host (session 13, `benchmarks/results/sessions.md`), it does what it is for
and still loses: the workers' CPU fell from 20.6 to 14.0 ms a request and the host's CPUs were 40 %
busy in a fleet of 4 instead of 62 %, with the same segments for all 501 utterances; but the round
trip through the engine process, whose GIL its GPU thread already keeps busy, made each request's
preparation longer (27 ms alone instead of 22, 35-39 in the fleet) and each instance 10 % slower,
and the fleets scaled worse (3.25x and 1.64x against 3.55x and 1.85x). So it is not the default; it
may suit a host with many GPUs and few CPUs, which was not measured. `vad_scorer.py` runs the same
server in a process of its own (`--vad-scores process`), which avoids the engine's GIL.

`fsmn_forward` is FunASR's `FSMN.forward`, step by step with its own modules, except that each row
of a padded batch keeps its memory (the FSMN blocks' left context) from its own last frame instead
of the batch's. The blocks look only left (`rorder` 0), so the padding after a row changes
nothing in it. Tests compare it with FunASR's forward, and whole recordings' segments with the
worker's own VAD.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreRequest:
    """One chunk of one recording: the VAD frontend's frames and the network's memory so far."""

    feats: np.ndarray  # (T, D) float32
    memory: np.ndarray | None  # (blocks, proj, lorder - 1) float32; None at a recording's start
    columns: int  # score columns wanted: the VAD reads its silence ids, all below this


@dataclass(frozen=True)
class Scores:
    scores: np.ndarray  # (T, columns) float32: the network's softmax output
    memory: np.ndarray  # (blocks, proj, lorder - 1) float32, for the recording's next chunk


@dataclass(frozen=True)
class ScoreError:
    """The engine could not score the chunk; the worker fails the job with this message."""

    message: str


Reply = Callable[[Scores | ScoreError], None]


def supports(encoder: torch.nn.Module) -> bool:
    """Whether `fsmn_forward` follows this network: FunASR's FSMN with left-only memory blocks."""
    from funasr.models.fsmn_vad_streaming.encoder import FSMN, BasicBlock

    if type(encoder) is not FSMN:
        return False
    blocks = list(encoder.fsmn)
    return all(type(b) is BasicBlock and b.fsmn_block.conv_right is None for b in blocks)


def memory_shape(encoder: torch.nn.Module) -> tuple[int, int, int]:
    """One row's memory: (blocks, proj, frames), the frames each block keeps of the chunk before."""
    block = encoder.fsmn[0].fsmn_block
    return len(encoder.fsmn), block.dim, (block.lorder - 1) * block.lstride


# -- the network, batched ---------------------------------------------------------------------------


def fsmn_forward(
    encoder: torch.nn.Module, feats: torch.Tensor, lengths: torch.Tensor, memory: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """FunASR's `FSMN.forward(feats, cache)` on a padded batch.

    feats (B, T, D); lengths (B,) int64, on feats' device; memory (blocks, B, proj, lorder - 1, 1),
    each row's from its previous chunk (zeros at a recording's start). Returns the scores
    (B, T, output_dim) and each row's memory after its own `lengths[b]` frames.
    """
    x = encoder.relu(encoder.in_linear2(encoder.in_linear1(feats)))
    kept = []
    for i, block in enumerate(encoder.fsmn):
        x, after = _block_forward(block, x, memory[i], lengths)
        kept.append(after)
    x = encoder.out_linear2(encoder.out_linear1(x))
    if encoder.use_softmax:
        x = encoder.softmax(x)
    return x, torch.stack(kept)


def _block_forward(
    block: torch.nn.Module, x: torch.Tensor, memory: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`BasicBlock.forward` with its cache: FunASR's steps (`FSMNBlock.forward` inlined)."""
    fsmn = block.fsmn_block
    x_per = torch.unsqueeze(block.linear(x), 1).permute(0, 3, 2, 1)  # B D T 1
    y_left = torch.cat((memory, x_per), dim=2)
    # FunASR keeps the last `keep` frames of y_left; a padded row's last real ones end at its length.
    keep = memory.shape[2]
    frames = lengths.view(-1, 1, 1, 1) + torch.arange(keep, device=lengths.device).view(1, 1, -1, 1)
    after = torch.gather(y_left, 2, frames.expand(-1, y_left.shape[1], -1, 1))
    out = x_per + fsmn.conv_left(y_left)
    x2 = out.permute(0, 3, 2, 1).squeeze(1)
    return block.relu(block.affine(x2)), after


class BatchedFsmn(torch.nn.Module):
    """`fsmn_forward` as a module, to be traced (`traced`)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self, feats: torch.Tensor, lengths: torch.Tensor, memory: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return fsmn_forward(self.encoder, feats, lengths, memory)


def traced(
    encoder: torch.nn.Module, device: torch.device
) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The network as TorchScript, which runs all of its ~60 operations in one call without
    Python's GIL. Eagerly, each operation gave the GIL up and took it back; in the engine process,
    whose GPU thread needs the GIL after every CUDA call, that made a batch of one take 17 ms on an
    H200 host, and every request's preparation 6 ms longer (session 13). Eager where tracing fails.
    """
    module = BatchedFsmn(encoder).eval()
    blocks, proj, keep = memory_shape(encoder)
    example = (
        torch.zeros(2, 8, encoder.input_dim, device=device),
        torch.tensor([8, 3], device=device),
        torch.zeros(blocks, 2, proj, keep, 1, device=device),
    )
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript's: nothing replaces it here yet
            return torch.jit.trace(module, example, check_trace=False)
    except Exception:  # an older or newer FunASR whose modules do not trace
        log.warning("the VAD network could not be traced; it runs eagerly", exc_info=True)
        return module


# -- the engine side ----------------------------------------------------------------------------


@dataclass
class ScoreStats:
    batches: int = 0
    chunks: int = 0
    frames: int = 0
    busy_s: float = 0.0


class ScoreServer:
    """Answers the workers' `ScoreRequest`s in batches, on one thread of the engine process."""

    def __init__(self, encoder: torch.nn.Module, device: str, max_rows: int = 64) -> None:
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        self.network = traced(self.encoder, self.device)
        self.max_rows = max_rows
        self.stats = ScoreStats()
        self._waiting: list[tuple[ScoreRequest, Reply]] = []
        self._cond = threading.Condition()
        self._stopped = False
        # Its own stream: the recognizer's batches (tens of ms) on the default one would delay it.
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._thread = threading.Thread(target=self._run, name="vad-scores", daemon=True)
        self._thread.start()

    def submit(self, request: ScoreRequest, reply: Reply) -> None:
        with self._cond:
            self._waiting.append((request, reply))
            self._cond.notify()

    def ask(self, request: ScoreRequest, timeout: float | None = None) -> Scores:
        """`submit` and wait for the answer: a worker's `Ask` within this process (tests, benchmarks)."""
        answers: list[Scores | ScoreError] = []
        done = threading.Event()
        self.submit(request, lambda answer: (answers.append(answer), done.set()))
        if not done.wait(timeout):
            raise TimeoutError("the VAD score server did not answer")
        if isinstance(answers[0], ScoreError):
            raise RuntimeError(answers[0].message)
        return answers[0]

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not self._waiting:
                    self._cond.wait()
                if self._stopped:
                    return
                batch, self._waiting = self._waiting[: self.max_rows], self._waiting[self.max_rows :]
            self._answer(batch)

    def _answer(self, batch: list[tuple[ScoreRequest, Reply]]) -> None:
        started = time.perf_counter()
        try:
            answers: list[Scores | ScoreError] = list(self.score([request for request, _ in batch]))
        except Exception:  # the workers must hear back, or they wait for ever
            log.exception("scoring %d VAD chunks failed", len(batch))
            answers = [ScoreError("voice activity detection failed on the server; the error is logged")]
            answers *= len(batch)
        for (_, reply), answer in zip(batch, answers, strict=True):
            reply(answer)
        s = self.stats
        s.batches += 1
        s.chunks += len(batch)
        s.frames += sum(request.feats.shape[0] for request, _ in batch)
        s.busy_s += time.perf_counter() - started

    @torch.inference_mode()
    def score(self, requests: list[ScoreRequest]) -> list[Scores]:
        lengths = [r.feats.shape[0] for r in requests]
        columns = max(r.columns for r in requests)
        stream = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        # Plain fp32 as on the workers; TorchScript's optimizations off: they specialise on shapes.
        optimizations = torch.jit.optimized_execution(False)
        with stream, optimizations, torch.backends.cudnn.flags(enabled=False):
            feats, memory = self._inputs(requests, max(lengths))
            lengths_on_device = torch.tensor(lengths, device=self.device)
            scores, after = self.network(feats, lengths_on_device, memory)
            scores = scores[:, :, :columns].float().cpu().numpy()
            after = after[..., 0].transpose(0, 1).float().cpu().numpy()  # (B, blocks, proj, keep)
        return [
            Scores(scores[b, :n, : r.columns], after[b])
            for b, (r, n) in enumerate(zip(requests, lengths, strict=True))
        ]

    def _inputs(self, requests: list[ScoreRequest], frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        dim = requests[0].feats.shape[1]
        feats = np.zeros((len(requests), frames, dim), dtype=np.float32)
        blocks, proj, keep = memory_shape(self.encoder)
        memory = np.zeros((blocks, len(requests), proj, keep, 1), dtype=np.float32)
        for b, r in enumerate(requests):
            feats[b, : r.feats.shape[0]] = r.feats
            if r.memory is not None:
                memory[:, b, :, :, 0] = r.memory
        return torch.from_numpy(feats).to(self.device), torch.from_numpy(memory).to(self.device)


# -- the worker side --------------------------------------------------------------------------------

Ask = Callable[[ScoreRequest], Scores]


class RemoteFsmn(torch.nn.Module):
    """Stands in for the VAD model's `encoder` in a worker: `forward(feats, cache)` as FunASR's
    `FSMN` (scores (1, T, columns), the cache dict updated), computed by the engine."""

    def __init__(self, encoder: torch.nn.Module, ask: Ask, columns: int) -> None:
        super().__init__()
        self.blocks = len(encoder.fsmn)
        self.ask = ask
        self.columns = columns
        # FunASR's `AutoModel.inference` reads the model's device from its first parameter.
        self.device_anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, feats: torch.Tensor, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        if feats.shape[0] != 1:
            raise ValueError("the VAD decides one recording at a time")
        names = [f"cache_layer_{i}" for i in range(self.blocks)]
        memory = None
        if all(name in cache for name in names):
            memory = np.stack([cache[name][0, :, :, 0].numpy() for name in names])
        answer = self.ask(ScoreRequest(feats[0].detach().float().numpy(), memory, self.columns))
        for name, block_memory in zip(names, answer.memory, strict=True):
            cache[name] = torch.from_numpy(np.ascontiguousarray(block_memory))[None, :, :, None]
        return torch.from_numpy(answer.scores)[None]


def install_remote(vad_model: torch.nn.Module, ask: Ask) -> bool:
    """Make the VAD model ask `ask` for its network's output; False, and nothing changed, where
    `fsmn_forward` does not follow the network."""
    encoder = getattr(vad_model, "encoder", None)
    if encoder is None or not supports(encoder):
        return False
    columns = max(vad_model.vad_opts.sil_pdf_ids, default=0) + 1
    vad_model.encoder = RemoteFsmn(encoder, ask, columns)
    return True
