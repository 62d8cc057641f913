"""ASR features cut from the VAD's filterbank frames are exactly the ASR frontend's own."""

from __future__ import annotations

import numpy as np
import pytest

import media
from asrfleet.audio import AudioLimits, decode_audio
from asrfleet.engines.funasr import features
from asrfleet.engines.funasr.features import segment_features
from asrfleet.engines.funasr.prepare import Features, Preparer, PrepareSettings, Segmented

LIMITS = AudioLimits(2**30, 36000)


@pytest.fixture(scope="module")
def preparer(model_dirs, vad_dir) -> Preparer:
    return Preparer(PrepareSettings(asr_dir=str(model_dirs["asr"]), vad_dir=str(vad_dir), limits=LIMITS))


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speech")
    return media.write_format(folder, media.conversation(media.ZH_SENTENCES[:3], pause_s=1.5), "mp3", "three")


def _prepared(preparer: Preparer, path) -> tuple[list[tuple[int, int]], list[np.ndarray]]:
    messages = list(preparer.prepare(path))
    assert isinstance(messages[0], Segmented)
    return messages[0].segments, [f for m in messages[1:] if isinstance(m, Features) for f in m.feats]


def test_the_startup_check_turns_reuse_on_for_funasr_frontends(preparer):
    assert preparer.fbank.enabled


def test_reused_features_equal_the_asr_frontends_bit_for_bit(preparer, recording, monkeypatch):
    cuts = []
    cut = preparer.fbank._cut
    monkeypatch.setattr(preparer.fbank, "_cut", lambda *a: cuts.append(cut(*a)) or cuts[-1])
    segments, feats = _prepared(preparer, recording)
    assert len(segments) >= 2 and segments[1][0] > 0 and len(cuts) == len(segments)
    assert all(frames is not None for frames in cuts)  # every segment was cut, none recomputed
    samples = decode_audio(recording, LIMITS)
    for (start, end), got in zip(segments, feats, strict=True):
        own = segment_features(preparer.frontend, samples[start * 16 : end * 16])
        assert got.shape == own.shape and np.array_equal(got, own)


def test_long_recordings_keep_no_frames_and_get_the_same_features(preparer, recording, monkeypatch):
    _, reused = _prepared(preparer, recording)
    monkeypatch.setattr(preparer.fbank, "max_frames", 10)
    recomputed = []
    monkeypatch.setattr(features, "segment_features", lambda *a: recomputed.append(1) or segment_features(*a))
    _, direct = _prepared(preparer, recording)
    assert len(recomputed) == len(direct)
    assert all(np.array_equal(a, b) for a, b in zip(reused, direct, strict=True))


def test_segments_off_the_frame_grid_or_shorter_than_a_frame_are_computed_again(preparer):
    samples = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    preparer.fbank.start(samples.size)
    preparer.find_speech(samples)
    assert preparer.fbank._cut(16 * 100, 8000) is not None
    assert preparer.fbank._cut(16 * 105, 8000) is None  # 105 ms: between two frames
    assert preparer.fbank._cut(16 * 100, 399) is None  # FunASR shrinks the frame to fit
    assert preparer.fbank._cut(16 * 900, 4000) is None  # past the recorded frames
    got = preparer.fbank.features(samples, (105, 600))
    assert np.array_equal(got, segment_features(preparer.frontend, samples[105 * 16 : 600 * 16]))
    preparer.fbank.forget()


def test_the_startup_check_turns_reuse_off_when_frames_differ(preparer, monkeypatch):
    monkeypatch.setattr(features, "_after_fbank", lambda frontend, frames: np.zeros((1, 1), np.float32))
    try:
        assert preparer.fbank.check(preparer.find_speech) is False
        assert not preparer.fbank.enabled
    finally:
        preparer.fbank.enabled = True


def test_reuse_is_off_for_a_vad_frontend_it_does_not_know(model_dirs):
    from funasr.frontends.wav_frontend import WavFrontend, WavFrontendOnline

    asr = features.build_frontend(str(model_dirs["asr"]))
    online = WavFrontendOnline(n_mels=80, frame_length=25, frame_shift=10, dither=0.0, lfr_m=5, lfr_n=1)
    assert features._compatible(online, asr)
    assert not features._compatible(WavFrontend(n_mels=80, dither=0.0), asr)  # not the online class
    assert not features._compatible(WavFrontendOnline(n_mels=64, dither=0.0), asr)  # other settings
    online.forward_fbank = None  # as if FunASR renamed the method
    assert not features._compatible(online, asr)
