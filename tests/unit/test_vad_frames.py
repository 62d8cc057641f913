"""`vad_frames` decides every frame, moves the detector and keeps its waveform buffer as FunASR's
`FsmnVADStreaming` does (the real fsmn-vad)."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import pytest
import torch

from asrfleet.audio import AudioLimits, decode_audio
from asrfleet.engines.funasr import vad_frames
from asrfleet.testing.random_models import random_audio

FRAMES = 60


@pytest.fixture(scope="module")
def vad(vad_dir):
    from funasr import AutoModel

    quiet = {"disable_update": True, "disable_pbar": True, "disable_log": True}
    return AutoModel(model=str(vad_dir), device="cpu", **quiet)


def _case(model: torch.nn.Module, seed: int, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A recording's state as the detector sees it, with options and values drawn around every
    threshold: scores near both edges, loud and quiet frames, frames past the end."""
    rng = np.random.default_rng(seed)
    opts = model.vad_opts
    ids = [0, 1] if seed % 3 == 0 else [0]
    monkeypatch.setattr(opts, "silence_pdf_num", len(ids))
    monkeypatch.setattr(opts, "decibel_thres", float(rng.choice([-100.0, -40.0])))
    monkeypatch.setattr(opts, "snr_thres", float(rng.choice([-100.0, 5.0])))
    monkeypatch.setattr(opts, "speech_2_noise_ratio", float(rng.choice([1.0, 0.6])))
    monkeypatch.setattr(opts, "output_frame_probs", bool(seed % 2))
    cache: dict = {}
    model.init_cache(cache)
    stats = cache["stats"]
    stats.sil_pdf_ids = ids
    stats.speech_noise_thres = float(rng.uniform(-0.3, 0.8))
    stats.decibel = rng.uniform(-110.0, 0.0, FRAMES).tolist()
    scores = rng.uniform(0.0, 1.0, (1, FRAMES, 248)).astype(np.float32)
    scores[0, :, : len(ids)] = rng.uniform(0.001, 0.999 / len(ids), (FRAMES, len(ids)))
    stats.scores = torch.from_numpy(scores)
    return cache


def test_every_branch_is_taken(vad, monkeypatch):
    """The cases `block_states` is compared on (those without FunASR's frame probabilities) reach
    each way out: past the end, too quiet, speech, speech too close to the noise, and silence with
    the noise level started and then updated; with one silence id and with two. Told apart by
    FunASR's own `GetFrameState`, which the test below shows `block_states` agrees with."""
    from funasr.models.fsmn_vad_streaming.model import FrameState, FsmnVADStreaming

    model = vad.model
    seen: Counter = Counter()
    for seed in range(12):
        with monkeypatch.context() as patch:
            cache = _case(model, seed, patch)
            stats, opts = cache["stats"], model.vad_opts
            if opts.output_frame_probs:
                continue
            for t in range(FRAMES + 2):
                noise_before = stats.noise_average_decibel
                state = FsmnVADStreaming.GetFrameState(model, t, cache=cache)
                if t >= FRAMES:
                    seen["past the end"] += 1
                elif stats.decibel[t] < opts.decibel_thres:
                    seen["quiet"] += 1
                elif state == FrameState.kFrameStateSpeech:
                    seen["speech"] += 1
                elif stats.noise_average_decibel == noise_before:
                    seen["speech under the SNR threshold"] += 1
                elif noise_before < -99.9:
                    seen["noise level started"] += 1
                else:
                    seen["noise level updated"] += 1
            seen[f"{len(stats.sil_pdf_ids)} silence ids"] += 1
    assert len(seen) == 8 and min(seen.values()) > 0, seen


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("dropped", [0, 7])
def test_a_block_is_decided_as_funasr_decides_it_frame_by_frame(vad, seed, dropped, monkeypatch):
    """`block_states` over a block gives each frame's `GetFrameState`, and leaves the same noise
    level; frames already dropped shift where the block is read, frames past the end are silence."""
    from funasr.models.fsmn_vad_streaming.model import FsmnVADStreaming

    model = vad.model
    theirs = _case(model, seed, monkeypatch)
    theirs["stats"].last_drop_frames = dropped
    ours = copy.deepcopy(theirs)
    first, count = dropped + 3, FRAMES
    expected = [
        FsmnVADStreaming.GetFrameState(model, first + k - dropped, cache=theirs) for k in range(count)
    ]
    states = vad_frames.block_states(model, ours["stats"], first, count)
    if model.vad_opts.output_frame_probs:  # FunASR collects probabilities frame by frame: left to it
        assert states is None
        return
    assert states == expected
    assert ours["stats"].noise_average_decibel == theirs["stats"].noise_average_decibel


def test_a_block_starting_before_the_kept_frames_is_left_to_funasr(vad, monkeypatch):
    cache = _case(vad.model, 2, monkeypatch)
    cache["stats"].last_drop_frames = 10
    assert vad_frames.block_states(vad.model, cache["stats"], 5, FRAMES) is None


_FUNASR_METHODS = (
    "DetectCommonFrames",
    "DetectLastFrames",
    "PopDataBufTillFrame",
    "PopDataToOutputBuf",
)


def _funasr_own(model: torch.nn.Module) -> None:
    for name in _FUNASR_METHODS:
        model.__dict__.pop(name, None)


def _detector(cache: dict) -> dict:
    """Everything FunASR's per-frame code reads or writes, after a block: the state machine, the
    window, the segments so far and the waveform buffer."""
    stats, window = cache["stats"], cache["windows_detector"]
    fields = {k: v for k, v in vars(stats).items() if isinstance(v, (int, float, bool, str))}
    fields["vad_state_machine"] = stats.vad_state_machine
    fields["window"] = (window.win_sum, list(window.win_state), window.cur_win_pos, window.pre_frame_state)
    fields["segments"] = [
        (s.start_ms, s.end_ms, s.contain_seg_start_point, s.contain_seg_end_point, s.doa)
        for s in stats.output_data_buf
    ]
    fields["data_buf"] = stats.data_buf.clone()
    return fields


def _blocks(vad, samples: np.ndarray) -> tuple[list, list]:
    """The detector after each block, and the segments."""
    model, seen = vad.model, []

    def watched(detect):
        def after(cache=None):
            result = detect(cache=cache)
            seen.append(_detector(cache))
            return result

        return after

    common, last = model.DetectCommonFrames, model.DetectLastFrames
    model.DetectCommonFrames, model.DetectLastFrames = watched(common), watched(last)
    try:
        segments = vad.generate(input=samples)[0]["value"]
    finally:
        model.DetectCommonFrames, model.DetectLastFrames = common, last
    return seen, segments


def _same_detector(ours: dict, theirs: dict) -> bool:
    a, b = dict(ours), dict(theirs)
    return torch.equal(a.pop("data_buf"), b.pop("data_buf")) and a == b


def _recordings() -> list[np.ndarray]:
    """Short ones, and one over the VAD's 60 s chunk, whose scores FunASR concatenates chunk by chunk."""
    return [random_audio(seconds, seed) for seed, seconds in enumerate((4.0, 11.0, 130.0))]


def _compare(vad, recordings: list[np.ndarray], capsys) -> list[list]:
    """Run the recordings with FunASR's own methods, then with this module's: the state machine,
    its window, the segments and the waveform buffer after every block, and what FunASR prints,
    must be the same. FunASR's segments."""
    _funasr_own(vad.model)
    theirs = [_blocks(vad, samples) for samples in recordings]
    their_output = capsys.readouterr().out
    assert vad_frames.install(vad.model)
    ours = [_blocks(vad, samples) for samples in recordings]
    assert capsys.readouterr().out == their_output
    for (our_blocks, our_segments), (their_blocks, their_segments) in zip(ours, theirs, strict=True):
        assert our_segments == their_segments
        assert len(our_blocks) == len(their_blocks)
        assert all(_same_detector(a, b) for a, b in zip(our_blocks, their_blocks, strict=True))
    return [segments for _, segments in theirs]


@pytest.mark.parametrize("longest_ms", [60_000, 1_500])
def test_every_block_leaves_the_detector_as_funasr_leaves_it(vad, longest_ms, capsys, monkeypatch):
    """With FunASR's options, and with segments cut at the longest a segment may last (the bursts
    last 0.8-3 s)."""
    monkeypatch.setattr(vad.model.vad_opts, "max_single_segment_time", longest_ms)
    segments = _compare(vad, _recordings(), capsys)
    assert all(segments) and any(len(s) > 2 for s in segments)  # the detector was reset between segments
    cut = [end - start for found in segments for start, end in found if end - start >= longest_ms]
    assert bool(cut) == (longest_ms < 60_000)


@pytest.mark.parametrize(
    "options",
    [
        {"detect_mode": 0},  # one utterance: the detector stops after the first segment
        {"detect_mode": 0, "max_start_silence_time": 300},  # ... or after 0.3 s of silence first
        {"do_extend": 0},  # no look-back before a segment, no look-ahead after it
        {"lookahead_time_end_point": 0, "max_end_silence_time": 300},
        {"fe_prior_thres": 2.0},  # speech frames count as silence: no segments
    ],
)
def test_other_options_leave_the_detector_as_funasr_leaves_it(vad, options, capsys, monkeypatch):
    for name, value in options.items():
        monkeypatch.setattr(vad.model.vad_opts, name, value)
    _compare(vad, _recordings()[:2], capsys)


def _detector_case(model: torch.nn.Module, seed: int, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A detector somewhere in a recording, with options drawn around the steady frames' edges."""
    from funasr.models.fsmn_vad_streaming.model import FrameState, VadStateMachine

    rng = np.random.default_rng(seed)
    opts = model.vad_opts
    monkeypatch.setattr(opts, "detect_mode", int(rng.integers(0, 2)))
    monkeypatch.setattr(opts, "do_extend", int(rng.integers(0, 2)))
    monkeypatch.setattr(opts, "fe_prior_thres", float(rng.choice([0.0001, 2.0])))
    monkeypatch.setattr(opts, "lookahead_time_end_point", int(rng.choice([0, 50, 100])))
    monkeypatch.setattr(opts, "max_single_segment_time", int(rng.choice([400, 60_000])))
    monkeypatch.setattr(opts, "max_start_silence_time", int(rng.choice([100, 3000])))
    cache: dict = {}
    model.init_cache(cache)
    stats, window = cache["stats"], cache["windows_detector"]
    stats.vad_state_machine = rng.choice(
        [VadStateMachine.kVadInStateStartPointNotDetected, VadStateMachine.kVadInStateInSpeechSegment]
    )
    stats.max_end_sil_frame_cnt_thresh = int(rng.choice([0, 150, 650]))
    stats.data_buf_start_frame = stats.latest_confirmed_speech_frame = stats.confirmed_start_frame = 30
    if stats.vad_state_machine == VadStateMachine.kVadInStateStartPointNotDetected:
        stats.confirmed_start_frame, stats.latest_confirmed_speech_frame = -1, 0
    stats.frm_cnt, stats.decibel, stats.scores = 600, [0.0] * 600, torch.zeros(1, 600, 248)
    stats.data_buf_all = torch.zeros(160 * 600)
    stats.data_buf = stats.data_buf_all[160 * 30 :]
    window.win_state = rng.integers(0, 2, window.win_size_frame).tolist()
    window.win_sum = sum(window.win_state)
    window.pre_frame_state = (
        FrameState.kFrameStateSpeech if window.win_sum > 10 else FrameState.kFrameStateSil
    )
    return cache


def _frames(vad, seed: int, monkeypatch: pytest.MonkeyPatch, capsys) -> Counter:
    """Frame by frame from a drawn detector: steady frames taken here, the rest by FunASR's
    DetectOneFrame, against FunASR's DetectOneFrame for every frame; the detector, the buffer and
    what FunASR prints compared after each. Which steady frames were taken."""
    from funasr.models.fsmn_vad_streaming.model import FrameState, FsmnVADStreaming

    model = vad.model
    theirs = _detector_case(model, seed, monkeypatch)
    ours = copy.deepcopy(theirs)
    rng = np.random.default_rng(1000 + seed)
    speech_share = rng.uniform(0.1, 0.9)
    vad_frames.install(model)
    steady = vad_frames._Steady(model, ours)
    taken: Counter = Counter()
    for idx in range(15, 315):  # crossing the look-back before a segment (20 or 40 frames)
        state = FrameState.kFrameStateSpeech if rng.random() < speech_share else FrameState.kFrameStateSil
        _funasr_own(model)
        FsmnVADStreaming.DetectOneFrame(model, state, idx, False, cache=theirs)
        their_output = capsys.readouterr().out
        vad_frames.install(model)
        stats = ours["stats"]
        before = (str(stats.vad_state_machine), str(ours["windows_detector"].pre_frame_state))
        voiced = stats.latest_confirmed_speech_frame
        if steady.frame(state, idx):
            taken[(*before, stats.latest_confirmed_speech_frame != voiced)] += 1
        else:
            model.DetectOneFrame(state, idx, False, cache=ours)
        vad_frames._slice_data_buf(stats)
        assert capsys.readouterr().out == their_output
        assert _same_detector(_detector(ours), _detector(theirs)), idx
    return taken


@pytest.mark.parametrize("seed", range(24))
def test_every_frame_moves_the_detector_as_funasr_moves_it(vad, seed, monkeypatch, capsys):
    _frames(vad, seed, monkeypatch, capsys)


def test_every_kind_of_steady_frame_is_taken(vad, monkeypatch, capsys):
    """The cases above take each steady way: silence before a segment, speech inside one, and a
    pause inside one, voiced (within the look-ahead) and not."""
    taken: Counter = Counter()
    for seed in range(24):
        with monkeypatch.context() as patch:
            taken += _frames(vad, seed, patch, capsys)
    before, inside = "kVadInStateStartPointNotDetected", "kVadInStateInSpeechSegment"
    kinds = {
        "silence before a segment": (before, "Sil", False),
        "speech inside a segment": (inside, "Speech", True),
        "a pause, voiced": (inside, "Sil", True),
        "a pause, not voiced": (inside, "Sil", False),
    }
    for kind, (machine, window, voiced) in kinds.items():
        count = sum(
            n for (m, w, v), n in taken.items() if m.endswith(machine) and w.endswith(window) and v == voiced
        )
        assert count > 0, kind


def test_with_frame_probabilities_frames_are_decided_one_by_one(vad, monkeypatch):
    """FunASR's option to keep every frame's probabilities: the same segments and probabilities."""
    monkeypatch.setattr(vad.model.vad_opts, "output_frame_probs", True)
    samples = random_audio(9.0, 3)
    kept: list = []
    for install in (False, True):
        _funasr_own(vad.model)
        if install:
            vad_frames.install(vad.model)
        blocks, segments = _blocks(vad, samples)
        kept.append((segments, [_detector_probs(b) for b in blocks]))
    assert kept[0] == kept[1] and kept[0][0]


def _detector_probs(block: dict) -> dict:
    return {k: v for k, v in block.items() if k != "data_buf"}


def test_the_buffer_running_out_is_an_error_not_a_hang(vad):
    cache: dict = {}
    vad.model.init_cache(cache)
    stats = cache["stats"]
    stats.data_buf_all = torch.zeros(160 * 3)
    stats.data_buf = stats.data_buf_all
    with pytest.raises(RuntimeError, match="ran out"):
        vad_frames.pop_till_frame(vad.model, 10, cache)
    assert stats.data_buf_start_frame == 3


def test_real_recordings_keep_their_segments(vad, shared_audio):
    """Utterances, the other examples and the 3-minute recording (several of the VAD's chunks)."""
    limits = AudioLimits(max_bytes=100_000_000, max_duration_s=3600)
    utterances = sorted((shared_audio / "zh-aishell-S0150").glob("*.mp3"))[:40]
    files = utterances + sorted(shared_audio.glob("misc/*.wav")) + sorted(shared_audio.glob("long/*.mp3"))
    recordings = [decode_audio(path, limits) for path in files]
    _funasr_own(vad.model)
    theirs = [vad.generate(input=samples)[0]["value"] for samples in recordings]
    vad_frames.install(vad.model)
    assert [vad.generate(input=samples)[0]["value"] for samples in recordings] == theirs


def test_other_models_are_left_alone():
    model = torch.nn.Linear(2, 2)
    assert not vad_frames.install(model) and not hasattr(model, "GetFrameState")
