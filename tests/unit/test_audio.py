"""Decoding every common container to 16 kHz mono, and a clear error for each kind of bad file."""

from __future__ import annotations

import struct

import av
import numpy as np
import pytest

import media
from asrfleet import audio
from asrfleet.audio import AudioLimits, check_not_silent, decode_audio
from asrfleet.errors import BadAudio, NoSpeech, TooLarge

LIMITS = AudioLimits(max_bytes=50 * 2**20, max_duration_s=600)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return media.conversation(media.ZH_SENTENCES[:2])


@pytest.mark.parametrize("suffix", sorted(media.AUDIO_FORMATS))
def test_decodes_each_format_to_16k_mono(tmp_path, speech, suffix):
    path = media.write_format(tmp_path, speech, suffix)
    samples = decode_audio(path, LIMITS)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(samples.size - speech.size) / 16000 < 0.1  # codec padding only
    # the same speech, not just the same length: the loud parts line up
    n = min(samples.size, speech.size)
    envelope = lambda x: np.abs(x[: n - n % 1600]).reshape(-1, 1600).mean(axis=1)  # noqa: E731
    assert np.corrcoef(envelope(samples), envelope(speech))[0, 1] > 0.9


@pytest.mark.parametrize("name,video,audio", [("clip.mp4", "h264", "aac"), ("clip.mkv", "mpeg4", "libopus")])
def test_decodes_the_audio_track_of_a_video(tmp_path, speech, name, video, audio):
    path = media.write_video(tmp_path / name, speech, video, audio)
    assert abs(decode_audio(path, LIMITS).size - speech.size) / 16000 < 0.1


def test_not_audio(tmp_path):
    path = tmp_path / "notes.mp3"
    path.write_text("these are meeting notes, not a recording\n" * 50)
    with pytest.raises(BadAudio, match="could not be decoded"):
        decode_audio(path, LIMITS)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(BadAudio, match="empty"):
        decode_audio(path, LIMITS)


def test_truncated_wav(tmp_path, speech):
    path = media.write_audio(tmp_path / "cut.wav", speech)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(BadAudio, match="truncated"):
        decode_audio(path, LIMITS)


def test_header_only_wav(tmp_path, speech):
    path = media.write_audio(tmp_path / "cut.wav", speech)
    path.write_bytes(path.read_bytes()[:44])
    with pytest.raises(BadAudio):
        decode_audio(path, LIMITS)


def test_video_without_audio(tmp_path):
    with pytest.raises(BadAudio, match="no audio track"):
        decode_audio(media.write_video_only(tmp_path / "silent.mp4"), LIMITS)


def test_over_the_size_limit(tmp_path, speech):
    path = media.write_audio(tmp_path / "big.wav", speech)
    with pytest.raises(TooLarge, match="limit"):
        decode_audio(path, AudioLimits(max_bytes=1000, max_duration_s=600))


def test_over_the_duration_limit(tmp_path, speech):
    path = media.write_audio(tmp_path / "long.flac", speech, codec="flac")
    with pytest.raises(TooLarge, match=r"0:00:1\d long; the limit is 0:00:05"):
        decode_audio(path, AudioLimits(max_bytes=2**30, max_duration_s=5))


def test_silence_is_no_speech(tmp_path):
    samples = decode_audio(media.write_audio(tmp_path / "quiet.wav", media.silence(3)), LIMITS)
    with pytest.raises(NoSpeech, match="silent"):
        check_not_silent(samples)


# Ogg declares no total length anywhere, so a cut Ogg file is indistinguishable from a short one.
@pytest.mark.parametrize("suffix", ["mp3", "m4a", "flac"])
def test_truncated_compressed_files_fail_clearly(tmp_path, speech, suffix):
    path = media.write_format(tmp_path, np.tile(speech, 4), suffix)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(BadAudio, match="truncated|could not be decoded"):
        decode_audio(path, LIMITS)


@pytest.mark.parametrize(
    "codec,fmt", [("pcm_s16le", "s16"), ("flac", "s16"), ("mp3", "fltp"), ("pcm_f32le", "flt")]
)
def test_16k_mono_skips_the_resampler_with_the_same_samples(tmp_path, speech, monkeypatch, codec, fmt):
    suffix = {"pcm_s16le": "wav", "pcm_f32le": "wav", "flac": "flac", "mp3": "mp3"}[codec]
    path = media.write_audio(tmp_path / f"speech.{suffix}", speech, codec, fmt, 16000, 1)
    direct = []
    real = audio.direct_samples

    def spy(frame):
        direct.append(real(frame))
        return direct[-1]

    monkeypatch.setattr(audio, "direct_samples", spy)
    fast = decode_audio(path, LIMITS)
    assert direct and all(d is not None for d in direct)  # every frame took the direct path
    monkeypatch.setattr(audio, "direct_samples", lambda frame: None)
    assert np.array_equal(fast, decode_audio(path, LIMITS))


def test_other_rates_and_stereo_go_through_the_resampler(tmp_path, speech):
    for name, rate, channels in (("rate.wav", 44100, 1), ("stereo.wav", 16000, 2)):
        path = media.write_audio(tmp_path / name, speech, "pcm_s16le", "s16", rate, channels)
        with av.open(str(path)) as container:
            frame = next(container.decode(audio=0))
        assert audio.direct_samples(frame) is None


def _with_latin1_title(wav: bytes) -> bytes:
    """The WAV with a LIST/INFO title in Latin-1 ("Réunion"), as some recorders write it."""
    title = "Réunion d'équipe".encode("latin-1") + b"\0"
    info = b"INFO" + b"INAM" + struct.pack("<I", len(title)) + title
    chunk = b"LIST" + struct.pack("<I", len(info)) + info
    body = wav[12:] + chunk
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body


def test_a_tag_in_another_encoding_does_not_fail_the_file(tmp_path, speech):
    path = media.write_audio(tmp_path / "meeting.wav", speech)
    path.write_bytes(_with_latin1_title(path.read_bytes()))
    assert decode_audio(path, LIMITS).size == speech.size
    assert audio.probe_duration(path) == pytest.approx(speech.size / 16000)


def _wav(path, samples: bytes, rate: int = 16000, channels: int = 1, bits: int = 16, fmt: int = 1):
    """A WAV written byte by byte, so that its header can say anything."""
    block = channels * bits // 8
    header = struct.pack("<4sI4s", b"RIFF", 36 + len(samples), b"WAVE")
    header += struct.pack("<4sIHHIIHH", b"fmt ", 16, fmt, channels, rate, rate * block, block, bits)
    path.write_bytes(header + struct.pack("<4sI", b"data", len(samples)) + samples)
    return path


LIMITS = AudioLimits(100 * 2**20, 6 * 3600)


def _float_wav(tmp_path, samples: np.ndarray):
    return _wav(tmp_path / "f.wav", samples.astype("<f4").tobytes(), bits=32, fmt=3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_samples_that_are_not_numbers_are_named_with_where_they_start(tmp_path, bad):
    samples = (0.3 * np.sin(np.arange(16000) / 5)).astype(np.float32)
    samples[8000:8010] = bad
    with pytest.raises(BadAudio, match=r"^10 of 16000 samples .* not numbers .* first at 0\.50 s"):
        decode_audio(_float_wav(tmp_path, samples), LIMITS)


def test_samples_beyond_full_scale_are_scaled_and_others_left_exact(tmp_path):
    loud = (1e30 * np.sin(np.arange(16000) / 5)).astype(np.float32)
    decoded = decode_audio(_float_wav(tmp_path, loud), LIMITS)
    assert np.isfinite(decoded).all() and np.max(np.abs(decoded)) == pytest.approx(1.0)
    normal = (0.5 * np.sin(np.arange(16000) / 5)).astype(np.float32)
    assert np.array_equal(decode_audio(_float_wav(tmp_path, normal), LIMITS), normal)


@pytest.mark.parametrize(("samples", "words"), [(1, "0 ms"), (80, "5 ms"), (1599, "100 ms")])
def test_too_short_to_hold_speech_says_how_long(tmp_path, samples, words):
    path = _wav(tmp_path / "short.wav", np.full(samples, 3000, "<i2").tobytes())
    with pytest.raises(NoSpeech, match=rf"^the recording is {words} long, too short to hold speech"):
        decode_audio(path, LIMITS)


@pytest.mark.parametrize(("rate", "words"), [(1, "1 Hz"), (1000, "1000 Hz"), (1_000_000, "1000000 Hz")])
def test_absurd_sample_rates_are_refused_from_the_header(tmp_path, rate, words):
    path = _wav(tmp_path / "rate.wav", np.zeros(18000, "<i2").tobytes(), rate=rate)
    with pytest.raises(BadAudio, match=rf"declares a sample rate of {words}; recordings are taken at 4 kHz"):
        decode_audio(path, LIMITS)


def test_a_hundred_channels_are_refused_from_the_header(tmp_path):
    path = _wav(tmp_path / "many.wav", np.zeros(100 * 1600, "<i2").tobytes(), channels=100)
    with pytest.raises(BadAudio, match="declares 100 channels; at most 32"):
        decode_audio(path, LIMITS)


def test_more_audio_than_the_bytes_can_carry_is_refused(tmp_path, monkeypatch):
    # No real codec goes under 256 bit/s (FLAC of a constant signal takes about 1.5 kbit/s), so the
    # floor is raised here to a WAV's own rate: what its 2 s declare is more than 0.5 s can carry.
    path = _wav(tmp_path / "two.wav", np.full(32000, 3000, "<i2").tobytes())
    monkeypatch.setattr(audio, "MIN_BITS_PER_SECOND", 4 * 16 * 16000)
    with pytest.raises(BadAudio, match=r"more audio \(0:00:02\) than its size can carry"):
        decode_audio(path, LIMITS)
