"""FSMN-VAD's per-frame work, as FunASR 1.4 does it, in less Python.

FunASR's `FsmnVADStreaming` decides every 10 ms frame in Python: `GetFrameState` reads the frame's
silence score from the network's output tensor with torch indexing and `.item()`, `DetectOneFrame`
moves its state machine, and for each frame of speech `PopDataToOutputBuf` takes a slice of a
waveform tensor only to read its length. On an audio worker that is a large share of the VAD's
CPU. Here:

- `detect_frames`: `DetectCommonFrames` / `DetectLastFrames` deciding a block's frames first, in
  one loop over plain floats (`block_states`: `GetFrameState`'s steps, the scores read as Python
  floats with `tolist`, which gives the floats `.item()` gives), then moving the state machine
  over them. A frame's state depends only on its decibel, its score and the running noise level,
  which only the decision itself updates, so the order is free (the state machine's resets drop
  old frames, which moves the index a frame is read at but not its values).
- `_Steady`: the state machine's step for the frames that only move counters (speech going on
  inside a segment, silence before one, a pause inside one); FunASR's `DetectOneFrame` takes every
  other frame.
- `pop_till_frame` and `pop_to_output`: `PopDataBufTillFrame` and `PopDataToOutputBuf` keeping the
  length of `data_buf` (which is all they read of it) and slicing the tensor once per block.

Same steps in the same order, with the same floats: the same segments. Tests compare every frame's
state, the detector after every frame and every block, and whole recordings' segments with
FunASR's own code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch

_BUF = "_asrfleet_data_buf"  # on the same stats: a `_DataBuf`


def install(model: torch.nn.Module) -> bool:
    """Put this module's functions in place of the VAD model's (FunASR's FsmnVADStreaming); False,
    and nothing changed, for any other class, whose methods these ports do not follow."""
    from funasr.models.fsmn_vad_streaming.model import FsmnVADStreaming

    if type(model) is not FsmnVADStreaming:
        return False
    model.DetectCommonFrames = partial(detect_frames, model, False)
    model.DetectLastFrames = partial(detect_frames, model, True)
    model.PopDataBufTillFrame = partial(pop_till_frame, model)
    model.PopDataToOutputBuf = partial(pop_to_output, model)
    return True


# -- a block of frames ----------------------------------------------------------------------------


def detect_frames(model: torch.nn.Module, last: bool, cache: dict) -> int:
    """`DetectCommonFrames(cache)` (last=False) or `DetectLastFrames(cache)` (last=True): the
    newest block of frames through FunASR's state machine, the block's last frame final if `last`."""
    from funasr.models.fsmn_vad_streaming.model import VadStateMachine

    stats = cache["stats"]
    if stats.vad_state_machine == VadStateMachine.kVadInStateEndPointDetected:
        return 0
    count = model.vad_opts.nn_eval_block_size
    first = stats.frm_cnt - count  # the block's first frame, counted from the recording's start
    states = block_states(model, stats, first, count)
    detect = model.DetectOneFrame
    final = count - 1 if last else -1
    try:
        if states is None:  # FunASR's own methods and order, frame by frame
            for k in range(count):
                state = model.GetFrameState(first + k - stats.last_drop_frames, cache=cache)
                detect(state, first + k, k == final, cache=cache)
        else:
            steady = _Steady(model, cache)
            for k, state in enumerate(states):
                if k == final or not steady.frame(state, first + k):
                    detect(state, first + k, k == final, cache=cache)
    finally:
        _slice_data_buf(stats)
    return 0


class _Steady:
    """FunASR's `DetectOneFrame` for the frames that change nothing but counters: speech going on
    inside a segment, silence before one, and a pause inside one. `frame` returns False, having
    changed nothing, for every other frame, which FunASR's own method then takes (a segment
    starting or ending, a reset, the last frame, options these steps do not follow)."""

    def __init__(self, model: torch.nn.Module, cache: dict) -> None:
        from funasr.models.fsmn_vad_streaming.model import (
            FrameState,
            VadDetectMode,
            VadStateMachine,
        )

        opts = model.vad_opts
        self.model, self.cache, self.stats, self.window = (
            model,
            cache,
            cache["stats"],
            cache["windows_detector"],
        )
        self.speech, self.silence = FrameState.kFrameStateSpeech, FrameState.kFrameStateSil
        self.in_segment = VadStateMachine.kVadInStateInSpeechSegment
        self.before_segment = VadStateMachine.kVadInStateStartPointNotDetected
        self.speech_counts = math.fabs(1.0) > opts.fe_prior_thres
        self.shift = opts.frame_in_ms
        self.longest = opts.max_single_segment_time / opts.frame_in_ms
        self.lookahead = int(opts.lookahead_time_end_point / opts.frame_in_ms)
        self.latency = model.LatencyFrmNumAtStartPoint(cache=cache)
        self.single = opts.detect_mode == VadDetectMode.kVadSingleUtteranceDetectMode.value
        self.max_start_silence, self.extend = opts.max_start_silence_time, opts.do_extend

    def frame(self, state: object, idx: int) -> bool:
        """Frame idx (not the last) with its state, if steady; False, nothing done, otherwise."""
        if state == self.speech:
            value = 1 if self.speech_counts else 0
        elif state == self.silence:
            value = 0
        else:
            return False
        window = self.window
        total = window.win_sum - window.win_state[window.cur_win_pos] + value
        if window.pre_frame_state == self.silence:
            if total >= window.sil_to_speech_frmcnt_thres:
                return False  # silence to speech
            return self._silence(idx, value, total)
        if window.pre_frame_state == self.speech:
            if total <= window.speech_to_sil_frmcnt_thres:
                return False  # speech to silence
            return self._speech(idx, value, total)
        return False

    def _speech(self, idx: int, value: int, total: int) -> bool:
        """Speech going on inside a segment."""
        stats = self.stats
        if stats.vad_state_machine != self.in_segment or idx - stats.confirmed_start_frame + 1 > self.longest:
            return False
        self._move_window(value, total)
        stats.continous_silence_frame_count = 0
        self._voice(idx)
        return True

    def _silence(self, idx: int, value: int, total: int) -> bool:
        """Silence before a segment, or a pause inside one shorter than ends it."""
        stats = self.stats
        silent = stats.continous_silence_frame_count + 1
        if stats.vad_state_machine == self.before_segment:
            if self.single and silent * self.shift > self.max_start_silence:
                return False
            self._move_window(value, total)
            stats.continous_silence_frame_count = silent
            if idx >= self.latency:  # FunASR's OnSilenceDetected
                stats.lastest_confirmed_silence_frame = idx - self.latency
                self.model.PopDataBufTillFrame(idx - self.latency, cache=self.cache)
            return True
        if (
            stats.vad_state_machine != self.in_segment
            or not self.extend
            or silent * self.shift >= stats.max_end_sil_frame_cnt_thresh
            or idx - stats.confirmed_start_frame + 1 > self.longest
        ):
            return False
        self._move_window(value, total)
        stats.continous_silence_frame_count = silent
        if silent <= self.lookahead:
            self._voice(idx)
        return True

    def _move_window(self, value: int, total: int) -> None:
        """FunASR's WindowDetector.DetectOneFrame, for a frame that changes no state."""
        window = self.window
        window.win_sum = total
        window.win_state[window.cur_win_pos] = value
        window.cur_win_pos = (window.cur_win_pos + 1) % window.win_size_frame

    def _voice(self, idx: int) -> None:
        """FunASR's OnVoiceDetected."""
        self.stats.latest_confirmed_speech_frame = idx
        self.model.PopDataToOutputBuf(idx, 1, False, False, False, cache=self.cache)


def block_states(model: torch.nn.Module, stats: object, first: int, count: int) -> list | None:
    """`GetFrameState` of frames first..first+count-1 in order, updating the noise level as it
    does; None where the frames must be decided one at a time (FunASR collects each frame's
    probabilities in that order, or the block starts before the frames kept)."""
    from funasr.models.fsmn_vad_streaming.model import FrameState

    opts = model.vad_opts
    start = first - stats.last_drop_frames  # where the block starts in the kept frames
    if opts.output_frame_probs or start < 0:
        return None
    speech, silence = FrameState.kFrameStateSpeech, FrameState.kFrameStateSil
    decibel, kept = stats.decibel, len(stats.decibel)
    min_decibel, min_snr = opts.decibel_thres, opts.snr_thres
    ratio, frames = opts.speech_2_noise_ratio, opts.noise_frame_num_used_for_snr
    threshold = stats.speech_noise_thres
    noise = stats.noise_average_decibel
    columns = None
    states = []
    try:
        for t in range(start, start + count):
            if t >= kept:
                states.append(silence)
                continue
            cur_decibel = decibel[t]
            cur_snr = cur_decibel - noise
            if cur_decibel < min_decibel:
                states.append(silence)
                continue
            sum_score = 0.0
            noise_prob = 0.0
            if columns is None:
                columns = _score_columns(opts, stats)
            if columns:
                sum_score = columns[0][t] if len(columns) == 1 else sum(c[t] for c in columns)
                noise_prob = math.log(sum_score) * ratio
                sum_score = 1.0 - sum_score
            speech_prob = math.log(sum_score)
            if math.exp(speech_prob) >= math.exp(noise_prob) + threshold:
                states.append(speech if cur_snr >= min_snr and cur_decibel >= min_decibel else silence)
                continue
            if noise < -99.9:
                noise = cur_decibel
            else:
                noise = (cur_decibel + noise * (frames - 1)) / frames
            states.append(silence)
    finally:
        stats.noise_average_decibel = noise
    return states


def _score_columns(opts: object, stats: object) -> list[list[float]]:
    """Each silence id's scores over the kept frames, as Python floats (`tolist` gives the floats
    `.item()` gives)."""
    ids = stats.sil_pdf_ids
    if len(ids) != opts.silence_pdf_num:
        raise ValueError(f"the VAD has {len(ids)} silence ids, its options {opts.silence_pdf_num}")
    if not ids:
        return []
    if stats.scores.shape[0] != 1:
        raise ValueError("the VAD decides one recording at a time")
    scores = stats.scores.detach().cpu().numpy()
    return [scores[0, :, i].tolist() for i in ids]


# -- the waveform buffer --------------------------------------------------------------------------


@dataclass
class _DataBuf:
    """What `stats.data_buf` is as FunASR's per-frame code reads it: its length. `pending`: where
    FunASR would have sliced `data_buf_all` last, not yet done."""

    seen: torch.Tensor  # the data_buf tensor this describes
    whole: torch.Tensor  # the data_buf_all it is cut from
    whole_length: int
    length: int
    pending: int | None = None


def _data_buf(stats: object) -> _DataBuf:
    """The length bookkeeping of stats.data_buf, started again whenever FunASR's own code (a new
    chunk, old frames dropped) has put new tensors there."""
    buf = getattr(stats, _BUF, None)
    if buf is None or stats.data_buf is not buf.seen or stats.data_buf_all is not buf.whole:
        whole = stats.data_buf_all
        buf = _DataBuf(stats.data_buf, whole, len(whole) if whole is not None else 0, len(stats.data_buf))
        setattr(stats, _BUF, buf)
    return buf


def _slice_data_buf(stats: object) -> None:
    """Take the slice FunASR would have left in stats.data_buf."""
    buf = getattr(stats, _BUF, None)
    if buf is None or buf.pending is None:
        return
    if stats.data_buf is buf.seen and stats.data_buf_all is buf.whole:
        stats.data_buf = buf.whole[buf.pending :]
        buf.seen = stats.data_buf
    buf.pending = None


def pop_till_frame(model: torch.nn.Module, frame_idx: int, cache: dict | None = None) -> None:
    """`PopDataBufTillFrame(frame_idx, cache)`: move the buffer's first frame up to frame_idx."""
    stats = (cache if cache is not None else {})["stats"]
    if stats.data_buf_start_frame >= frame_idx:
        return
    opts = model.vad_opts
    shift = int(opts.frame_in_ms * opts.sample_rate / 1000)
    buf = _data_buf(stats)
    while stats.data_buf_start_frame < frame_idx:
        if buf.length < shift:  # FunASR's loop would spin here for ever
            raise RuntimeError("the VAD's waveform buffer ran out before the frame it was asked for")
        stats.data_buf_start_frame += 1
        buf.pending = (stats.data_buf_start_frame - stats.last_drop_frames) * shift
        buf.length = len(range(buf.whole_length)[buf.pending :])  # a slice's length, as torch cuts it


def pop_to_output(
    model: torch.nn.Module,
    start_frm: int,
    frm_cnt: int,
    first_frm_is_start_point: bool,
    last_frm_is_end_point: bool,
    end_point_is_sent_end: bool,
    cache: dict | None = None,
) -> None:
    """`PopDataToOutputBuf(...)`: frames start_frm.. into the current speech segment, with FunASR's
    checks and messages."""
    from funasr.models.fsmn_vad_streaming.model import E2EVadSpeechBufWithDoa

    cache = cache if cache is not None else {}
    pop_till_frame(model, start_frm, cache=cache)
    stats, opts = cache["stats"], model.vad_opts
    length = _data_buf(stats).length
    expected_sample_number = int(frm_cnt * opts.sample_rate * opts.frame_in_ms / 1000)
    if last_frm_is_end_point:
        extra_sample = max(
            0,
            int(opts.frame_length_ms * opts.sample_rate / 1000 - opts.sample_rate * opts.frame_in_ms / 1000),
        )
        expected_sample_number += int(extra_sample)
    if end_point_is_sent_end:
        expected_sample_number = max(expected_sample_number, length)
    if length < expected_sample_number:
        print("error in calling pop data_buf\n")

    segments = stats.output_data_buf
    if len(segments) == 0 or first_frm_is_start_point:
        segments.append(E2EVadSpeechBufWithDoa())
        segments[-1].Reset()
        segments[-1].start_ms = start_frm * opts.frame_in_ms
        segments[-1].end_ms = segments[-1].start_ms
        segments[-1].doa = 0
    cur_seg = segments[-1]
    if cur_seg.end_ms != start_frm * opts.frame_in_ms:
        print("warning\n")
    if end_point_is_sent_end:
        data_to_pop = expected_sample_number
    else:
        data_to_pop = int(frm_cnt * opts.frame_in_ms * opts.sample_rate / 1000)
    if data_to_pop > length:
        print('VAD data_to_pop is bigger than cache["stats"].data_buf.size()!!!\n')

    cur_seg.doa = 0
    if cur_seg.end_ms != start_frm * opts.frame_in_ms:
        print("Something wrong with the VAD algorithm\n")
    stats.data_buf_start_frame += frm_cnt
    cur_seg.end_ms = (start_frm + frm_cnt) * opts.frame_in_ms
    if first_frm_is_start_point:
        cur_seg.contain_seg_start_point = True
    if last_frm_is_end_point:
        cur_seg.contain_seg_end_point = True
