"""Stage 3: one batched Paraformer forward pass, from features to text and token timestamps.

FunASR's own `Paraformer.inference` does the same, with two differences that matter when segments
of different lengths share a batch:
  * the encoder leaves garbage in padded frames, and the CIF predictor reads one frame past each
    sequence (its tail), so a padded segment's last token depended on its batch neighbours. Here
    padded frames are zeroed: every segment gets exactly what it gets alone.
  * the BiCif timestamp head runs a bidirectional LSTM; its backward direction started in the
    padding. Here the LSTM runs on packed sequences.
With both, batching changes no transcript (tested against `AutoModel.generate`).

FunASR's integrate-and-fire loops (token embeddings, timestamps) launch kernels per frame; `cif.py`
replaces them with exact equivalents that do not. On a GPU, the encoder and decoder replay CUDA
graphs (`graphs.py`) once `use_graphs()` is called.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from asrfleet.engines.funasr import cif, graphs
from asrfleet.engines.funasr.gpu_clock import DECODING, END, START, BatchMarks, GpuClock
from asrfleet.engines.funasr.segments import SegmentText
from asrfleet.engines.funasr.timestamps import frame_mask, timestamp_alphas
from asrfleet.engines.funasr.token_times import token_times
from asrfleet.engines.funasr.transfers import to_device, to_host

log = logging.getLogger(__name__)

EMPTY = SegmentText("", [])


@dataclass(frozen=True)
class OnHost:
    """A batch's results, on the host once `ready`; `Recognizer.texts` makes them segments' texts.

    All None when no segment has a token.
    """

    count: int
    tokens: torch.Tensor | None = None  # (B, L) the decoder's best token at each position
    token_lens: torch.Tensor | None = None  # (B,) tokens per segment
    encoder_lens: torch.Tensor | None = None  # (B,) encoder frames per segment
    alphas: torch.Tensor | None = None  # (B, T) the timestamp head's scaled weights, float32
    marks: BatchMarks | None = None  # on a GPU: the copies above are done once its END is

    @property
    def ready(self) -> torch.cuda.Event | None:
        return self.marks.events.get(END) if self.marks is not None else None


class Recognizer:
    """Runs a FunASR Paraformer-family model (`Paraformer`, `BiCifParaformer`) on feature batches."""

    def __init__(self, model: torch.nn.Module, tokenizer: object, device: str, fp16: bool = False) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.fp16 = fp16 and self.device.type == "cuda"
        self.timestamps = hasattr(model, "calc_predictor_timestamp")
        self.cif_predictor = graphs.has_cif_predictor(model)
        self.graphs: graphs.GraphedModel | None = None
        self.clock = GpuClock()  # read by `texts`' thread only, as each batch is done
        cif.install()

    def use_graphs(self, max_frames: int = graphs.MAX_GRAPH_FRAMES, capture: bool = True) -> bool:
        """Run the encoder and decoder as CUDA graphs from now on, where the model allows.

        `capture=False` runs the same bucketed code eagerly (tests on the CPU). False when the
        model is not one `graphs.py` knows.
        """
        if not graphs.supports(self.model):
            log.warning("CUDA graphs: %s is not supported; running eagerly", type(self.model).__name__)
            return False
        self.graphs = graphs.GraphedModel(self.model, self.device, self._dense, max_frames, capture)
        return True

    @contextmanager
    def _dense(self) -> Iterator[None]:
        """How the encoder and decoder run: where the time goes.

        fp16 autocast when asked, without its cache of half weights (CUDA graphs cannot hold
        it, and each weight is used once per batch anyway). Half weights do not work (FunASR's
        decoder mixes float32 masks into its convolutions), and the CIF predictor runs outside
        (in the graphs too, `graphs._as_eagerly`): its integrate-and-fire sums and thresholds
        need float32.

        cuDNN off. SANM's FSMN memory blocks are depthwise 1-D convolutions (66 of them), and
        the input length changes with every batch: cuDNN plans each new shape on the host,
        milliseconds a convolution, so most of a small batch's time would go to planning
        (`python -m benchmarks.recognizer --profile 8` shows it). PyTorch's own depthwise kernel
        needs no plan. The timestamp head's LSTM keeps cuDNN.
        """
        with (
            torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16, cache_enabled=False),
            torch.backends.cudnn.flags(enabled=False),
        ):
            yield

    def __call__(self, feats: list[np.ndarray]) -> list[SegmentText]:
        return self.texts(self.run(feats))

    def in_two_parts(self, feats: list[np.ndarray]) -> Callable[[], list[SegmentText]]:
        """`run` now; `texts` as the function returned, for the scheduler's host thread."""
        return partial(self.texts, self.run(feats))

    @torch.inference_mode()
    def run(self, feats: list[np.ndarray]) -> OnHost:
        """The GPU's part of a batch: everything up to the results' copy to the host.

        The scheduler's GPU thread calls this and hands the result to `texts` in another thread,
        so the GPU starts on the next batch while the host turns this one into text. The copy is
        not waited for here: the GPU thread prepares the next batch while the GPU finishes this
        one, and `texts` waits for it (`OnHost.ready`).
        """
        marks = BatchMarks(self.device)
        encoded = self._encode(feats, marks)
        embeds, token_lens = self._predict(encoded, marks)
        if int(token_lens.max()) < 1:
            marks.mark(END)
            return OnHost(len(feats), marks=marks)
        tokens = self._best_tokens(encoded, embeds, token_lens)
        alphas = None
        if self.timestamps:
            alphas = self._timestamp_alphas(encoded, token_lens)
        encoder_lens = torch.tensor(encoded.host_lengths)
        marks.mark(END)
        return OnHost(len(feats), tokens, token_lens, encoder_lens, alphas, marks)

    @torch.inference_mode()  # the timestamp code may rescale the alphas in place
    def texts(self, batch: OnHost) -> list[SegmentText]:
        """The host's part of a batch: each segment's text and token timestamps. No GPU work."""
        if batch.ready is not None:
            batch.ready.synchronize()
            self.clock.add(batch.marks)
        if batch.tokens is None:
            return [EMPTY] * batch.count
        return [self._decode(batch, i) for i in range(batch.count)]

    def _encode(self, feats: list[np.ndarray], marks: BatchMarks | None = None) -> graphs.Encoded:
        """Encoder output (B, T, D) float32 with padded frames zero, its lengths, and what the
        graphs computed besides: the predictor's and the timestamp head's weights."""
        marks = marks or BatchMarks(self.device)
        encoded = self.graphs.encode(feats, marks) if self.graphs is not None else None
        if encoded is not None:
            return encoded
        marks.mark(START)
        speech, lengths = self._pad(feats)
        with self._dense():
            encoder_out, encoder_lens = self.model.encode(speech, lengths)
        if isinstance(encoder_out, tuple):
            encoder_out = encoder_out[0]
        mask = frame_mask(encoder_lens, encoder_out.size(1))[:, :, None]
        out = encoder_out.float() * mask
        return graphs.Encoded(out, encoder_lens.tolist(), None, None, None)

    def _best_tokens(
        self, encoded: graphs.Encoded, embeds: torch.Tensor, token_lens: torch.Tensor
    ) -> torch.Tensor:
        """The decoder's best token at each position (B, L), being copied to the host."""
        if self.graphs is not None:
            tokens = self.graphs.decode(encoded.out, encoded.host_lengths, embeds, token_lens.tolist())
            if tokens is not None:
                return tokens
        with self._dense():
            device_lens = to_device(token_lens, self.device)
            scores, _ = self.model.cal_decoder_with_predictor(
                encoded.out, encoded.lengths, embeds, device_lens
            )
        return to_host(scores.argmax(dim=-1))

    def _predict(self, encoded: graphs.Encoded, marks: BatchMarks) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings (B, L, D) and token counts (B,) on the host: FunASR's `calc_predictor`,
        less what it computes for nothing.

        BiCifParaformer's predictor (`CifPredictorV3.forward`) also runs its timestamp head, an
        upsampling convolution and a BLSTM over three times the frames, and drops the result; the
        timestamps come from `_timestamp_alphas`. Here the same steps without that head
        (`graphs.cif_weights`), and with our integrate-and-fire (`cif`, equal to FunASR's).
        """
        p = self.model.predictor
        encoder_out = encoded.out
        if not self.cif_predictor:
            embeds, token_num, _, _ = self.model.calc_predictor(encoder_out, encoded.lengths)
            return embeds, token_num.round().long().cpu()
        alphas, sums = encoded.cif_alphas, encoded.cif_sums
        if alphas is None or sums is None:  # not computed by a graph: here, as the graph does
            mask = frame_mask(encoded.lengths, encoder_out.size(1))
            weights, _ = graphs.cif_weights(p, encoder_out, mask)
            alphas, sums = weights.cpu().numpy(), weights.sum(-1).cpu().numpy()
        return self._predict_from_host(encoder_out, alphas, sums, marks)

    def _predict_from_host(
        self, encoder_out: torch.Tensor, alphas: np.ndarray, sums: np.ndarray, marks: BatchMarks
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`_predict` from the predictor's weights and their sums, on the host: the recurrence and
        the token counts there, in float32; only the embeddings' sums on the device."""
        p = self.model.predictor
        token_num = np.floor(sums) if p.tail_threshold > 0.0 else sums  # as `cif_weights`
        label_len = int(np.round(sums).astype(np.int32).max()) if sums.size else 0
        fired = cif.fire_tokens(alphas, p.threshold)
        marks.mark(DECODING)  # the GPU's next work: what it waited for since the encoder's
        hidden = graphs.with_tail_frame(p, encoder_out)
        embeds = cif.embed_tokens(hidden, fired, label_len)
        if p.tail_threshold > 0.0:
            embeds = embeds[:, : int(token_num.max())]
        return embeds, torch.from_numpy(np.round(token_num)).long()

    def _pad(self, feats: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = [f.shape[0] for f in feats]
        batch = graphs.pad_features(feats, len(feats), max(lengths))
        speech = torch.from_numpy(batch).to(self.device, non_blocking=True)
        return speech, torch.tensor(lengths, dtype=torch.int32, device=self.device)

    def _timestamp_alphas(self, encoded: graphs.Encoded, token_lens: torch.Tensor) -> torch.Tensor:
        """BiCifParaformer's upsampled alphas scaled to the predicted token count, on the host.

        The head's weights are the graph's where it computed them; else they are computed here,
        as FunASR does, with the BLSTM on packed sequences. Being copied (`to_host`).
        """
        p = self.model.predictor
        alphas = encoded.timestamp_alphas
        if alphas is None:
            alphas = timestamp_alphas(self.model, encoded.out, encoded.lengths * p.upsample_times)
        token_lens = to_device(token_lens, self.device)
        alphas = alphas * (token_lens / alphas.sum(-1))[:, None]  # scale to the predicted token count
        return to_host(alphas.float())

    def _decode(self, batch: OnHost, i: int) -> SegmentText:
        """Segment `i`'s text and, from the timestamp head's weights, its tokens' times."""
        from funasr.utils import postprocess_utils

        m = self.model
        token_ids = batch.tokens[i, : batch.token_lens[i]].tolist()
        ids = [t for t in token_ids if t not in (m.eos, m.sos, m.blank_id)]
        tokens = self.tokenizer.ids2tokens(ids)
        if batch.alphas is None:
            return SegmentText(self.tokenizer.tokens2text(tokens), [])
        n = int(batch.encoder_lens[i]) * m.predictor.upsample_times
        alphas = batch.alphas[i, :n]
        # The recurrence runs along each row: over the segment's own frames, as over its padded row.
        peaks = cif.cif_wo_hidden(alphas.unsqueeze(0), m.predictor.threshold - 1e-4)[0]
        timestamp = token_times(alphas, peaks, tokens)
        text, timestamps, _ = postprocess_utils.sentence_postprocess(tokens, timestamp)
        return SegmentText(text, timestamps)
