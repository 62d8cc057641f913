"""Decoding every common container to 16 kHz mono, and a clear error for each kind of bad file."""

from __future__ import annotations

import struct
from fractions import Fraction

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
    path.write_bytes(media.wav_bytes(samples, rate, channels, bits, fmt))
    return path


def _float_wav(tmp_path, samples: np.ndarray, name: str = "f.wav"):
    return _wav(tmp_path / name, samples.astype("<f4").tobytes(), bits=32, fmt=3)


def _sine(seconds: float = 2.0, amplitude: float = 0.3) -> np.ndarray:
    return (amplitude * np.sin(np.arange(int(16000 * seconds)) / 5)).astype(np.float32)


# Room enough that the hostile files below are inside the duration limit, as in production (a
# 1 Hz WAV of 36 KB declares 5 hours): what refuses them must be the header checks.
ROOMY = AudioLimits(100 * 2**20, 6 * 3600)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_few_samples_that_are_not_numbers_become_silence_with_a_warning(tmp_path, bad):
    clean = _sine()
    damaged = clean.copy()
    damaged[8000:8037] = bad
    decoded = audio.decode_recording(_float_wav(tmp_path, damaged), ROOMY)
    assert np.isfinite(decoded.samples).all()
    assert np.all(decoded.samples[8000:8037] == 0)
    assert np.array_equal(np.delete(decoded.samples, range(8000, 8037)), np.delete(clean, range(8000, 8037)))
    assert decoded.warnings == (
        "37 samples (0.12 %) were not numbers (NaN or infinite) and were replaced by silence",
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_file_mostly_not_numbers_is_damaged(tmp_path, bad):
    with pytest.raises(
        BadAudio, match=r"^100 % of the samples are not numbers \(NaN or infinite\): the file is damaged"
    ):
        decode_audio(_float_wav(tmp_path, np.full(16000, bad, np.float32)), ROOMY)


def test_one_percent_not_numbers_is_still_a_recording_and_more_is_not(tmp_path):
    samples = _sine(1.0)
    samples[:160] = np.nan  # 1 % of 16 000
    assert len(audio.decode_recording(_float_wav(tmp_path, samples), ROOMY).warnings) == 1
    samples[160] = np.nan
    with pytest.raises(BadAudio, match=r"^1\.01 % of the samples are not numbers"):
        decode_audio(_float_wav(tmp_path, samples), ROOMY)


def test_not_numbers_are_silenced_before_resampling_not_after(tmp_path):
    """The resampler's filter would turn each NaN into dozens: the file decodes as if its bad
    samples had been zeros, and the warning counts the file's own samples (both channels)."""
    stereo = np.repeat(_sine(2.0 * 44100 / 16000), 2)  # 2 s at 44.1 kHz, interleaved
    damaged, zeroed = stereo.copy(), stereo.copy()
    damaged[40000:40020], zeroed[40000:40020] = np.nan, 0.0
    write = lambda name, x: _wav(tmp_path / name, x.astype("<f4").tobytes(), 44100, 2, 32, 3)  # noqa: E731
    decoded = audio.decode_recording(write("nan.wav", damaged), ROOMY)
    assert np.array_equal(decoded.samples, decode_audio(write("zero.wav", zeroed), ROOMY))
    assert decoded.warnings == (
        "20 samples (0.01 %) were not numbers (NaN or infinite) and were replaced by silence",
    )


def test_samples_beyond_full_scale_are_scaled_linearly_with_a_warning(tmp_path):
    loud = 1e30 * _sine(1.0, amplitude=1.0)
    decoded = audio.decode_recording(_float_wav(tmp_path, loud), ROOMY)
    peak = np.max(np.abs(loud))
    assert np.array_equal(decoded.samples, loud / peak) and np.max(np.abs(decoded.samples)) == 1.0
    assert decoded.warnings == (
        "the samples reach 1e+30 times full scale (the file may be damaged); "
        "the recording was scaled down to full scale, which keeps its content",
    )


def test_samples_whose_downmix_overflows_a_float_are_damaged(tmp_path):
    """Both channels at float32's maximum: their sum in the downmix is infinite, not a recording."""
    extreme = np.full(2 * 44100, np.finfo(np.float32).max, "<f4")
    path = _wav(tmp_path / "max.wav", extreme.tobytes(), 44100, 2, 32, 3)
    with pytest.raises(BadAudio, match="far beyond any recording's range: the file is damaged"):
        decode_audio(path, ROOMY)


def test_a_codec_s_overshoot_is_scaled_without_a_warning(tmp_path):
    decoded = audio.decode_recording(_float_wav(tmp_path, _sine(1.0, amplitude=1.5)), ROOMY)
    assert np.max(np.abs(decoded.samples)) == 1.0 and decoded.warnings == ()


def test_recordings_within_full_scale_decode_bit_exactly_as_before(tmp_path):
    floats = _sine(amplitude=0.5)
    assert np.array_equal(decode_audio(_float_wav(tmp_path, floats), ROOMY), floats)
    ints = (_sine(amplitude=1.0) * 32767).astype("<i2")
    ints[100] = -32768  # exactly full scale: not "beyond" it
    decoded = audio.decode_recording(_wav(tmp_path / "i.wav", ints.tobytes()), ROOMY)
    assert np.array_equal(decoded.samples, ints.astype(np.float32) / 32768) and decoded.warnings == ()


@pytest.mark.parametrize(("samples", "words"), [(1, "less than 1 ms"), (80, "5 ms"), (1599, "99 ms")])
def test_too_short_to_hold_speech_says_how_long(tmp_path, samples, words):
    path = _wav(tmp_path / "short.wav", np.full(samples, 3000, "<i2").tobytes())
    with pytest.raises(
        NoSpeech,
        match=rf"^the recording is {words} long, too short to hold speech \(the shortest taken is 100 ms\)$",
    ):
        decode_audio(path, ROOMY)


def test_a_tenth_of_a_second_is_long_enough(tmp_path):
    path = _wav(tmp_path / "short.wav", np.full(1600, 3000, "<i2").tobytes())
    assert decode_audio(path, ROOMY).size == 1600


@pytest.mark.parametrize(("rate", "words"), [(1, "1 Hz"), (1000, "1000 Hz"), (1_000_000, "1000000 Hz")])
def test_absurd_sample_rates_are_refused_from_the_header(tmp_path, rate, words):
    path = _wav(tmp_path / "rate.wav", np.zeros(18000, "<i2").tobytes(), rate=rate)
    with pytest.raises(BadAudio, match=rf"declares a sample rate of {words}; recordings are taken at 4 kHz"):
        decode_audio(path, ROOMY)
    assert audio.probe_duration(path) is None  # nor planned for as hours of audio


def test_a_hundred_channels_are_refused_from_the_header(tmp_path):
    path = _wav(tmp_path / "many.wav", np.zeros(100 * 1600, "<i2").tobytes(), channels=100)
    with pytest.raises(BadAudio, match="declares 100 channels; at most 32 are taken"):
        decode_audio(path, ROOMY)
    assert audio.probe_duration(path) is None


@pytest.mark.parametrize("fmt", [0, 0x1234])
def test_an_encoding_without_a_decoder_is_named(tmp_path, fmt):
    path = _wav(tmp_path / "odd.wav", np.zeros(16000, "<i2").tobytes(), fmt=fmt)
    with pytest.raises(
        BadAudio, match="could not be decoded as audio: its audio is in an encoding we cannot"
    ):
        decode_audio(path, ROOMY)
    assert audio.probe_duration(path) is None


def _constant_flac(path, seconds: float, declare_length: bool = True):
    """A FLAC bomb: a constant signal in FLAC's largest blocks, 4 s of audio in a few bytes (an
    hour is 20 KB); without its length, the header declares no duration at all."""
    block = 65535
    with av.open(str(path), "w") as out:
        stream = out.add_stream("flac", rate=16000, layout="mono", options={"frame_size": str(block)})
        total = int(seconds * 16000)
        for start in range(0, total, block):
            frame = av.AudioFrame.from_ndarray(
                np.full((1, min(block, total - start)), 300, np.int16), format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts, frame.time_base = 16000, start, Fraction(1, 16000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    if not declare_length:  # STREAMINFO's 36-bit sample count, 0: unknown
        data = bytearray(path.read_bytes())
        data[21] &= 0xF0
        data[22:26] = bytes(4)
        path.write_bytes(data)
    return path


def test_more_audio_than_the_bytes_can_hold_is_refused_from_the_header(tmp_path):
    path = _constant_flac(tmp_path / "bomb.flac", 3600)
    with pytest.raises(BadAudio, match=r"declares 1:00:00 of audio in only 20\.0 KiB, less than any real"):
        decode_audio(path, ROOMY)
    assert audio.probe_duration(path) is None


def test_a_bomb_without_a_declared_duration_stops_where_its_bytes_do(tmp_path):
    path = _constant_flac(tmp_path / "bomb.flac", 3600, declare_length=False)
    assert audio.probe_duration(path) is None
    with pytest.raises(BadAudio, match=r"the file's 20\.0 KiB decode to more than 0:10:40 of audio"):
        decode_audio(path, ROOMY)


def test_within_its_bytes_the_duration_limit_still_speaks(tmp_path):
    path = _constant_flac(tmp_path / "bomb.flac", 3600, declare_length=False)
    with pytest.raises(TooLarge, match=r"the recording is 0:05:0\d long; the limit is 0:05:00"):
        decode_audio(path, AudioLimits(2**30, 300))
