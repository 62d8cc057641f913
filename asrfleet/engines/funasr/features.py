"""ASR features of speech segments, cut from the filterbank frames the VAD already computed.

FunASR computes a Kaldi filterbank twice for every recording: the VAD's frontend over the whole
recording, then the ASR frontend over each speech segment again. Both use the same filterbank
(16 kHz, 25 ms Hamming frames every 10 ms, 80 bins, no dither), and a frame depends only on its
own 400 samples, so a segment that starts on a 10 ms boundary has exactly the frames the VAD had
at the same place. Cutting them out saves the second filterbank; what the ASR frontend does after
the filterbank (low frame rate stacking, CMVN) runs as before. `FbankReuse.check` proves the
equality at startup, on this machine's filterbank implementation, and reuse stays off where it
does not hold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from asrfleet.audio import SAMPLE_RATE
from asrfleet.engines.funasr.segments import FRAME_LENGTH_MS, FRAME_SHIFT_MS, SAMPLES_PER_MS, Span

log = logging.getLogger(__name__)

_SHIFT = FRAME_SHIFT_MS * SAMPLES_PER_MS  # samples between frames
_LENGTH = FRAME_LENGTH_MS * SAMPLES_PER_MS  # samples in a frame
_SETTINGS = ("fs", "window", "n_mels", "frame_length", "frame_shift", "dither")


def build_frontend(asr_dir: str) -> torch.nn.Module:
    """The ASR model's own frontend (e.g. WavFrontend with its CMVN), built from its config.

    Dither is switched off: FunASR's WavFrontend dithers by default, a training-time augmentation
    that makes the same file transcribe differently from run to run and from batch to batch.
    """
    from funasr.download.download_model_from_hub import download_model
    from funasr.register import tables

    conf = download_model(model=asr_dir, disable_update=True)
    frontend_class = tables.frontend_classes.get(conf["frontend"])
    return frontend_class(**{**conf.get("frontend_conf", {}), "dither": 0.0}).eval()


def segment_features(frontend: torch.nn.Module, piece: np.ndarray) -> np.ndarray:
    """The ASR frontend on one segment's samples, as FunASR's own pipeline computes it."""
    wave = torch.from_numpy(np.ascontiguousarray(piece))[None, :]
    with torch.inference_mode():
        feats, lengths = frontend(wave, [wave.shape[1]])
    return feats[0, : int(lengths[0])].numpy()


class FbankReuse:
    """Keeps the VAD's filterbank frames of one recording and cuts segments' ASR features from
    them. `start()` before the VAD runs, `features()` after."""

    def __init__(self, vad: object, asr_frontend: torch.nn.Module, max_seconds: float) -> None:
        """vad: FunASR's AutoModel of the VAD, whose frontend gets watched. Recordings up to
        `max_seconds` keep their frames: memory stays bounded for long ones."""
        self.asr_frontend = asr_frontend
        self.max_frames = int(max_seconds * SAMPLE_RATE) // _SHIFT
        self.enabled = _compatible(vad.kwargs.get("frontend"), asr_frontend)
        self._frames: list[torch.Tensor] = []
        self._recording = False
        if self.enabled:
            _watch_frontend(vad.model, self._keep)

    def start(self, samples: int) -> None:
        """A new recording of this many samples: keep its frames if it is short enough."""
        self._frames = []
        self._recording = self.enabled and samples // _SHIFT <= self.max_frames

    def forget(self) -> None:
        """Let the last recording's frames go."""
        self.start(0)

    def _keep(self, fbank: torch.Tensor) -> None:
        if self._recording:
            self._frames.append(fbank)

    def features(self, samples: np.ndarray, segment_ms: Span) -> np.ndarray:
        """The ASR features of samples[start:end] (ms), cut from the kept frames where possible."""
        start, end = segment_ms[0] * SAMPLES_PER_MS, min(segment_ms[1] * SAMPLES_PER_MS, samples.size)
        piece = samples[start:end]
        frames = self._cut(start, piece.size) if self._recording else None
        if frames is None:
            return segment_features(self.asr_frontend, piece)
        return _after_fbank(self.asr_frontend, frames)

    def _cut(self, start: int, length: int) -> torch.Tensor | None:
        """The frames the ASR frontend would compute for samples[start:start+length], or None."""
        if start % _SHIFT or length < _LENGTH:
            return None  # off the VAD's frame grid, or shorter than a frame (FunASR shrinks the frame)
        first, count = start // _SHIFT, (length - _LENGTH) // _SHIFT + 1
        kept = self._all_frames()
        if first + count > kept.shape[0]:
            return None
        return kept[first : first + count]

    def _all_frames(self) -> torch.Tensor:
        if len(self._frames) != 1:
            self._frames = [torch.cat(self._frames)] if self._frames else [torch.empty(0, 0)]
        return self._frames[0]

    def check(self, find_speech: Callable[[np.ndarray], object], seconds: float = 2.0) -> bool:
        """Run the VAD on a test signal, cut segments' features from its frames and compare them
        with the ASR frontend's own, bit for bit. Reuse stays on only if every one is identical."""
        if not self.enabled:
            return False
        rng = np.random.default_rng(0)
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        samples = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
        self.start(samples.size)
        find_speech(samples)
        for start_ms, end_ms in [(0, 730), (120, 1995), (500, 1000), (1000, int(seconds * 1000))]:
            piece = samples[start_ms * SAMPLES_PER_MS : end_ms * SAMPLES_PER_MS]
            frames = self._cut(start_ms * SAMPLES_PER_MS, piece.size)
            if frames is None or not _same(_after_fbank(self.asr_frontend, frames), piece, self.asr_frontend):
                log.warning("ASR features are computed again for every segment: the VAD's frames differ")
                self.enabled = False
                break
        self.forget()
        return self.enabled


def _same(cut: np.ndarray, piece: np.ndarray, frontend: torch.nn.Module) -> bool:
    own = segment_features(frontend, piece)
    return cut.shape == own.shape and bool(np.array_equal(cut, own))


def _compatible(vad_frontend: object, asr_frontend: torch.nn.Module) -> bool:
    """Whether both frontends are the FunASR classes whose filterbank call this module knows, with
    the same filterbank settings."""
    from funasr.frontends.wav_frontend import WavFrontend, WavFrontendOnline

    if type(vad_frontend) is not WavFrontendOnline or type(asr_frontend) is not WavFrontend:
        return False
    if not callable(getattr(vad_frontend, "forward_fbank", None)):
        return False  # the method `_record_fbank` wraps
    if not (asr_frontend.upsacle_samples and asr_frontend.snip_edges and asr_frontend.fs == SAMPLE_RATE):
        return False
    return all(getattr(vad_frontend, name) == getattr(asr_frontend, name) for name in _SETTINGS)


def _watch_frontend(vad_model: torch.nn.Module, keep: Callable[[torch.Tensor], None]) -> None:
    """Hand every filterbank block the VAD's frontend computes to `keep`, before its own stacking
    and CMVN. The frontend streams the recording in chunks, carrying the samples of an unfinished
    frame over, so the blocks together are the frames of the whole recording, in order.

    AutoModel passes the model a frontend restored from a copy made at load time, not the one in
    its kwargs, so the frontend is taken from each call (FunASR models take it as `frontend=`)."""
    infer = vad_model.inference

    def inference(*args, **kwargs):
        frontend = kwargs.get("frontend")
        if frontend is not None and not getattr(frontend, "_asrfleet_watched", False):
            _record_fbank(frontend, keep)
        return infer(*args, **kwargs)

    vad_model.inference = inference


def _record_fbank(frontend: torch.nn.Module, keep: Callable[[torch.Tensor], None]) -> None:
    compute = frontend.forward_fbank

    def forward_fbank(*args, **kwargs):
        waveforms, feats, lengths = compute(*args, **kwargs)
        if feats.numel():
            keep(feats[0, : int(lengths[0])])
        return waveforms, feats, lengths

    frontend.forward_fbank = forward_fbank
    frontend._asrfleet_watched = True


def _after_fbank(frontend: torch.nn.Module, fbank: torch.Tensor) -> np.ndarray:
    """What FunASR's WavFrontend.forward does after its filterbank."""
    from funasr.frontends.wav_frontend import apply_cmvn, apply_lfr

    with torch.inference_mode():
        mat = fbank
        if frontend.lfr_m != 1 or frontend.lfr_n != 1:
            mat = apply_lfr(mat, frontend.lfr_m, frontend.lfr_n)
        if frontend.cmvn is not None:
            mat = apply_cmvn(mat, frontend.cmvn)
    return mat.numpy()
