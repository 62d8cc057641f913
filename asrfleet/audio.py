"""Stage 1 of the pipeline: any common audio or video file -> 16 kHz mono float32 samples.

Decoding is done by FFmpeg through PyAV (its wheels bundle FFmpeg, so there is no system
dependency). Everything a user can get wrong with a file ends here as a `BadAudio`, `TooLarge` or
`NoSpeech` with a sentence a person can act on.

What is refused from the header, before any decoding work: sample rates outside 4 kHz-384 kHz,
more than 32 channels, and more audio than the file's bytes can hold (an average under 256 bit/s:
an hour at that rate is 115 KB, while speech codecs need several kbit/s). The same bounds stop the
decoding of a file whose header declares nothing. A few bytes cannot buy hours of decoding.

What is refused after decoding: samples that are not numbers (NaN or infinite; the answer says how
many and where the first one is, since such a file is damaged and the user can re-export it), and
a recording under 0.1 s, too short to hold speech. Samples beyond full scale (a float file may
hold any value) are scaled down to full scale, which keeps the content; others are left as they
are.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from asrfleet.errors import AsrError, BadAudio, NoSpeech, TooLarge
from asrfleet.sizes import format_size

SAMPLE_RATE = 16000
# What a folder scan takes for recordings (anything else can still be given by name).
AUDIO_SUFFIXES = frozenset(
    {
        ".wav",
        ".mp3",
        ".flac",
        ".m4a",
        ".aac",
        ".ogg",
        ".opus",
        ".webm",
        ".aiff",
        ".aif",
        ".mp4",
        ".mkv",
        ".mov",
        ".wma",
        ".amr",
    }
)

# A decoded stream this much shorter than its header says was cut off (an interrupted upload or
# copy). The slack absorbs containers whose declared duration is only an estimate.
_TRUNCATION_TOLERANCE = 0.9
_TRUNCATION_SLACK_S = 0.5
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 384000
MAX_CHANNELS = 32
MIN_BITS_PER_SECOND = 256
MIN_DURATION_S = 0.1
# Below this peak amplitude (about -80 dBFS) a recording is digital silence.
_SILENCE_PEAK = 1e-4
# PyAV before 19 decodes a container's tags strictly unless told otherwise, so one tag in another
# encoding failed the whole file; 19 decodes them leniently itself and no longer takes the option.
_PYAV_MAJOR = int(av.__version__.split(".", 1)[0])
_OPEN_OPTIONS: dict[str, str] = {"metadata_errors": "ignore"} if _PYAV_MAJOR < 19 else {}


@dataclass(frozen=True)
class AudioLimits:
    max_bytes: int
    max_duration_s: float


def open_input(path: str | Path) -> av.container.InputContainer:
    return av.open(str(path), **_OPEN_OPTIONS)


def check_file_size(path: str | Path, max_bytes: int) -> int:
    """The file's size in bytes; `TooLarge` over the limit, `BadAudio` when empty or missing."""
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise BadAudio("the uploaded file could not be read") from err
    if size == 0:
        raise BadAudio("the file is empty")
    if size > max_bytes:
        raise TooLarge(f"the file is {format_size(size)}; the limit is {format_size(max_bytes)}")
    return size


def decode_audio(path: str | Path, limits: AudioLimits) -> np.ndarray:
    """Decode the first audio stream of `path`, resampled to 16 kHz mono float32 in [-1, 1]."""
    size = check_file_size(path, limits.max_bytes)
    _check_wav_complete(path)
    # the bytes' own bound on the duration, within the configured one
    justified = AudioLimits(limits.max_bytes, min(limits.max_duration_s, size * 8 / MIN_BITS_PER_SECOND))
    try:
        with open_input(path) as container:
            return checked_samples(_decode_container(container, justified, limits))
    except av.FFmpegError as err:
        raise BadAudio(
            "this file could not be decoded as audio: it is not a recording or it is damaged"
        ) from err
    except (UnicodeDecodeError, ValueError, IndexError) as err:
        raise BadAudio("this file could not be decoded as audio") from err


def _decode_container(
    container: av.container.InputContainer, limits: AudioLimits, configured: AudioLimits
) -> np.ndarray:
    if not container.streams.audio:
        raise BadAudio("the file has no audio track")
    stream = container.streams.audio[0]
    _check_stream_header(stream)
    declared = _declared_duration(container, stream)
    if declared is not None and declared > limits.max_duration_s:
        raise _too_long(declared, limits, configured)

    max_samples = int(limits.max_duration_s * SAMPLE_RATE)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    for frame in container.decode(stream):
        direct = direct_samples(frame)
        converted = [direct] if direct is not None else _resampled(resampler, frame)
        chunks += converted
        total += sum(chunk.size for chunk in converted)
        if total > max_samples:
            raise _too_long(total / SAMPLE_RATE, limits, configured)
    chunks += _resampled(resampler, None)

    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    _check_complete(samples, declared)
    return samples


def _check_stream_header(stream: av.audio.AudioStream) -> None:
    rate = stream.sample_rate or stream.codec_context.sample_rate or 0
    if rate and not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise BadAudio(
            f"the file declares a sample rate of {rate} Hz; recordings are taken at "
            f"{MIN_SAMPLE_RATE // 1000} kHz to {MAX_SAMPLE_RATE // 1000} kHz"
        )
    channels = stream.channels or 0
    if channels > MAX_CHANNELS:
        raise BadAudio(f"the file declares {channels} channels; at most {MAX_CHANNELS} are taken")


def _too_long(seconds: float, limits: AudioLimits, configured: AudioLimits) -> AsrError:
    if limits.max_duration_s >= configured.max_duration_s:
        return TooLarge(_too_long_message(seconds, configured.max_duration_s))
    return BadAudio(
        f"the file holds more audio ({_clock(seconds)}) than its size can carry: it is damaged or crafted"
    )


def checked_samples(samples: np.ndarray) -> np.ndarray:
    """Decoded samples as the engines take them, or the problem with them named."""
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int(samples.size - np.count_nonzero(finite))
        first = int(np.argmin(finite)) / SAMPLE_RATE
        raise BadAudio(
            f"{bad} of {samples.size} samples ({100 * bad / samples.size:.2g} %) are not numbers "
            f"(NaN or infinite), the first at {first:.2f} s: the file is damaged; export it again"
        )
    if samples.size < MIN_DURATION_S * SAMPLE_RATE:
        raise NoSpeech(
            f"the recording is {1000 * samples.size / SAMPLE_RATE:.0f} ms long, too short to hold "
            f"speech (the shortest taken is {1000 * MIN_DURATION_S:.0f} ms)"
        )
    peak = float(np.max(np.abs(samples)))
    if peak > 1.0:  # beyond full scale (a float file): scaled, so the features cannot overflow
        samples = samples / np.float32(peak)
    return samples


def direct_samples(frame: av.AudioFrame) -> np.ndarray | None:
    """A 16 kHz mono frame's samples as float32 without FFmpeg's resampler; None for others.

    Speech is mostly recorded at 16 kHz mono already (aishell, telephone bands upsampled, what
    FunASR expects), and then the resampler would only convert the sample format, frame by frame,
    at a cost close to that of decoding itself. Its conversions are exact: float stays float, and
    16-bit integers are scaled by 2^-15, which is what this does; a test checks both give the same
    samples.

    The samples are read from the frame's one plane as they lie, not through `to_ndarray`, which
    builds a 2-D array plane by plane with `np.vstack` for every frame, a large share of a worker's
    CPU a recording. A plane may be padded past its samples, hence `count`; float samples are
    copied, so that no frame outlives its turn (an hour of MP3 is 50 000 of them).
    """
    if frame.sample_rate != SAMPLE_RATE or len(frame.layout.channels) != 1:
        return None
    if frame.format.name in ("flt", "fltp"):
        return np.frombuffer(frame.planes[0], dtype=np.float32, count=frame.samples).copy()
    if frame.format.name in ("s16", "s16p"):
        samples = np.frombuffer(frame.planes[0], dtype=np.int16, count=frame.samples)
        return samples.astype(np.float32) * np.float32(1 / 32768)
    return None


def _resampled(resampler: av.AudioResampler, frame: av.AudioFrame | None) -> list[np.ndarray]:
    return [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]


def probe_duration(path: str | Path) -> float | None:
    """Seconds of audio from the container's header, without decoding; None if unreadable."""
    try:
        with open_input(path) as container:
            if not container.streams.audio:
                return None
            return _declared_duration(container, container.streams.audio[0])
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError):
        return None


def _declared_duration(container: av.container.InputContainer, stream: av.audio.AudioStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _check_complete(samples: np.ndarray, declared: float | None) -> None:
    if samples.size == 0:
        raise BadAudio("the file holds no audio samples: it is empty or truncated")
    decoded = samples.size / SAMPLE_RATE
    if declared is not None and decoded < declared * _TRUNCATION_TOLERANCE - _TRUNCATION_SLACK_S:
        raise BadAudio(
            f"the file is truncated: its header announces {declared:.1f} s of audio "
            f"but only {decoded:.1f} s could be read"
        )


def _check_wav_complete(path: str | Path) -> None:
    """A WAV whose data chunk announces more bytes than the file holds was cut off.

    FFmpeg quietly decodes what is there and reports the shorter duration, so this is checked on
    the RIFF header itself. Writers that stream (size 0 or 0xFFFFFFFF) announce nothing and pass.
    """
    with open(path, "rb") as f:
        header = f.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return
        size = os.fstat(f.fileno()).st_size
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return
            chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                missing = f.tell() + chunk_size - size
                if 0 < chunk_size < 0xFFFFFFFF and missing > 0:
                    raise BadAudio(
                        f"the file is truncated: its header announces {chunk_size} bytes of audio "
                        f"but {missing} of them are missing"
                    )
                return
            f.seek(chunk_size + (chunk_size & 1), os.SEEK_CUR)


def _too_long_message(seconds: float, limit: float) -> str:
    return f"the recording is {_clock(seconds)} long; the limit is {_clock(limit)}"


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def check_not_silent(samples: np.ndarray) -> None:
    """`NoSpeech` for digital silence, before any model time is spent on it."""
    if samples.size == 0 or float(np.max(np.abs(samples))) < _SILENCE_PEAK:
        raise NoSpeech("no speech was found: the recording is silent")
