"""Stage 1 of the pipeline: any common audio or video file -> 16 kHz mono float32 samples.

Decoding is done by FFmpeg through PyAV (its wheels bundle FFmpeg, so there is no system
dependency). Everything a user can get wrong with a file ends here as a `BadAudio`, `TooLarge` or
`NoSpeech` with a sentence a person can act on.

What is refused from the header, before any decoding work: sample rates outside 4 kHz-384 kHz,
more than 32 channels, and more audio than the file's bytes can hold (an average under 256 bit/s:
an hour at that rate is 115 KB, while speech codecs need several kbit/s). The same bytes bound
stops the decoding of a file whose header declares no duration (a FLAC of a constant signal takes
under 50 bit/s), as the duration limit does. A few bytes cannot buy hours of decoding.

What is refused after decoding: a recording under 0.1 s, too short to hold speech, and one whose
samples are more than 1 % not numbers (NaN or infinite): such a file is damaged. Up to 1 % (a few
damaged samples in a float WAV) are replaced by silence before resampling, whose filter would
spread each over dozens of samples, and the recording is transcribed with a warning that says how
many there were. Samples beyond full scale (a float file may hold any value) are scaled down to
full scale, linearly, which keeps the content; recordings within it are left as they are, bit for
bit. The warnings travel with the samples (`Decoded`) to the transcript.
"""

from __future__ import annotations

import math
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
# What real recordings are taken at; a header beyond these is damaged or made to overload us (a
# 1 Hz rate in a 36 KB WAV upsamples to hours of audio).
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 384000
MAX_CHANNELS = 32
# The lowest average bit rate a real recording has; speech codecs need several kbit/s.
MIN_BITS_PER_SECOND = 256
# One VAD or ASR analysis frame is 25 ms; no word fits in less than this.
MIN_DURATION_S = 0.1
# Above this share of samples that are not numbers a file is damaged, not a recording with a few
# bad samples.
MAX_NON_FINITE_SHARE = 0.01
# Decoders of lossy codecs overshoot full scale a little on loud recordings, as does resampling a
# clipped one: scaled down without a word up to this peak (+6 dBFS); beyond it the user is told.
_WARN_PEAK = 2.0
_FLOAT_FORMATS = frozenset({"flt", "fltp", "dbl", "dblp"})
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


@dataclass(frozen=True)
class Decoded:
    """A recording as the engines take it, and what the user should be told about its repair."""

    samples: np.ndarray  # 16 kHz mono float32 in [-1, 1]
    warnings: tuple[str, ...] = ()

    @property
    def duration(self) -> float:
        return self.samples.size / SAMPLE_RATE


def decode_audio(path: str | Path, limits: AudioLimits) -> np.ndarray:
    """The samples of `decode_recording`, for callers that have nobody to warn (tests, benchmarks)."""
    return decode_recording(path, limits).samples


def decode_recording(path: str | Path, limits: AudioLimits) -> Decoded:
    """Decode the first audio stream of `path`, resampled to 16 kHz mono float32 in [-1, 1]."""
    budget = _Budget(limits.max_duration_s, check_file_size(path, limits.max_bytes))
    _check_wav_complete(path)
    samples = _decode_file(path, budget)
    _check_long_enough(samples)
    warnings: list[str] = []
    if not math.isfinite(_peak(samples)):
        samples, repaired = _without_non_finite(path, budget)
        warnings += repaired
    samples, scaled = _within_full_scale(samples)
    return Decoded(samples, tuple(warnings + scaled))


@dataclass(frozen=True)
class _Budget:
    """The most audio a file may decode to: the configured limit, and what its bytes justify."""

    limit_s: float
    size: int  # bytes

    @property
    def justified_s(self) -> float:
        return self.size * 8 / MIN_BITS_PER_SECOND

    @property
    def max_s(self) -> float:
        return min(self.limit_s, self.justified_s)

    def refusal(self, seconds: float, declared: bool) -> AsrError:
        """Over the limit: the user can cut the recording. Over what the bytes justify: the file
        itself is wrong, whatever the limit."""
        if self.justified_s >= self.limit_s:
            return TooLarge(_too_long_message(seconds, self.limit_s))
        size = format_size(self.size)
        if declared:
            return BadAudio(
                f"the file declares {_clock(seconds)} of audio in only {size}, less than any real "
                "recording that long takes: it is damaged"
            )
        return BadAudio(
            f"the file's {size} decode to more than {_clock(self.justified_s)} of audio, more than a "
            "real recording that small holds: it is damaged"
        )


def _decode_file(path: str | Path, budget: _Budget, non_finite: _NonFinite | None = None) -> np.ndarray:
    try:
        with open_input(path) as container:
            return _decode_container(container, budget, non_finite)
    except av.FFmpegError as err:
        raise BadAudio(
            "this file could not be decoded as audio: it is not a recording or it is damaged"
        ) from err
    except (UnicodeDecodeError, ValueError, IndexError) as err:
        raise BadAudio("this file could not be decoded as audio") from err


def _decode_container(
    container: av.container.InputContainer, budget: _Budget, non_finite: _NonFinite | None
) -> np.ndarray:
    stream = _audio_stream(container)
    declared = _declared_duration(container, stream)
    if declared is not None:
        _check_declared(declared, budget)

    max_samples = int(budget.max_s * SAMPLE_RATE)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    for frame in container.decode(stream):
        if non_finite is not None:
            frame = non_finite.repaired(frame)
        direct = direct_samples(frame)
        converted = [direct] if direct is not None else _resampled(resampler, frame)
        chunks += converted
        total += sum(chunk.size for chunk in converted)
        if total > max_samples:  # stopped as soon as it is over: no hours of decoding for nothing
            raise budget.refusal(total / SAMPLE_RATE, declared=False)
    chunks += _resampled(resampler, None)

    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    _check_complete(samples, declared)
    return samples


def _audio_stream(container: av.container.InputContainer) -> av.audio.AudioStream:
    """The first audio stream, if its header describes something a recording can be."""
    if not container.streams.audio:
        raise BadAudio("the file has no audio track")
    stream = container.streams.audio[0]
    if stream.codec_context is None:  # PyAV has no context for a codec FFmpeg cannot decode
        raise BadAudio("this file could not be decoded as audio: its audio is in an encoding we cannot read")
    rate = stream.codec_context.sample_rate
    if rate and not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:  # 0: unknown until decoded
        raise BadAudio(
            f"the file declares a sample rate of {rate} Hz; recordings are taken at "
            f"{MIN_SAMPLE_RATE // 1000} kHz to {MAX_SAMPLE_RATE // 1000} kHz"
        )
    channels = len(stream.codec_context.layout.channels)
    if channels > MAX_CHANNELS:
        raise BadAudio(f"the file declares {channels} channels; at most {MAX_CHANNELS} are taken")
    return stream


def _check_declared(declared: float, budget: _Budget) -> None:
    if declared > budget.max_s:
        raise budget.refusal(declared, declared=True)


def _check_long_enough(samples: np.ndarray) -> None:
    if samples.size < MIN_DURATION_S * SAMPLE_RATE:
        ms = samples.size * 1000 // SAMPLE_RATE  # rounded down: 99.9 ms is not "100 ms, too short"
        length = f"{ms} ms" if ms else "less than 1 ms"
        raise NoSpeech(
            f"the recording is {length} long, too short to hold speech "
            f"(the shortest taken is {1000 * MIN_DURATION_S:.0f} ms)"
        )


def _peak(samples: np.ndarray) -> float:
    """The largest magnitude; NaN or infinite when any sample is."""
    return float(np.max(np.abs(samples)))


@dataclass
class _NonFinite:
    """Counts the decoded values that are not numbers and zeroes them, frame by frame, before the
    resampler: its filter would smear each over dozens of output samples (NaN times anything is
    NaN), and the share that decides whether the file is damaged is of the file's own samples."""

    bad: int = 0
    total: int = 0  # values of every channel

    def repaired(self, frame: av.AudioFrame) -> av.AudioFrame:
        self.total += frame.samples * len(frame.layout.channels)
        if frame.format.name not in _FLOAT_FORMATS:  # integer samples are always numbers
            return frame
        values = frame.to_ndarray()
        bad = ~np.isfinite(values)
        count = int(np.count_nonzero(bad))
        if not count:
            return frame
        self.bad += count
        values[bad] = 0
        fixed = av.AudioFrame.from_ndarray(values, format=frame.format.name, layout=frame.layout.name)
        fixed.sample_rate = frame.sample_rate
        fixed.pts, fixed.time_base = frame.pts, frame.time_base
        return fixed

    def warnings(self) -> list[str]:
        """What the user is told; `BadAudio` when too many were not numbers to call it a recording."""
        if not self.bad:
            return []
        share = _percent(self.bad / self.total)
        if self.bad > MAX_NON_FINITE_SHARE * self.total:
            raise BadAudio(f"{share} of the samples are not numbers (NaN or infinite): the file is damaged")
        return [
            f"{self.bad} samples ({share}) were not numbers (NaN or infinite) and were replaced by silence"
        ]


def _without_non_finite(path: str | Path, budget: _Budget) -> tuple[np.ndarray, list[str]]:
    """The file decoded again, its samples that are not numbers silenced before resampling.

    Only a damaged file takes this second pass: checking every frame of every file would cost
    every recording a share of its decoding time, for files that are almost never damaged.
    """
    non_finite = _NonFinite()
    samples = _decode_file(path, budget, non_finite)
    return samples, non_finite.warnings()


def _within_full_scale(samples: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Samples beyond full scale scaled down to it, so that the features cannot overflow."""
    peak = _peak(samples)
    if not math.isfinite(peak):  # finite samples whose resampling overflowed float32
        raise BadAudio("the samples are far beyond any recording's range: the file is damaged")
    if peak <= 1.0:
        return samples, []
    samples /= np.float32(peak)  # our own array; linear, so the content is kept
    if peak <= _WARN_PEAK:
        return samples, []
    return samples, [
        f"the samples reach {peak:.3g} times full scale (the file may be damaged); "
        "the recording was scaled down to full scale, which keeps its content"
    ]


def _percent(share: float) -> str:
    percent = 100 * share
    if percent < 0.01:
        return "less than 0.01 %"
    return f"{percent:.0f} %" if percent >= 10 else f"{percent:.2f} %"


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
    """Seconds of audio from the container's header, without decoding; None if unreadable, or if
    `decode_recording` would refuse the header (its rate, its channels, more audio than its bytes
    justify)."""
    try:
        budget = _Budget(math.inf, os.path.getsize(path))
        with open_input(path) as container:
            stream = _audio_stream(container)
            declared = _declared_duration(container, stream)
            if declared is not None:
                _check_declared(declared, budget)
            return declared
    except (AsrError, av.FFmpegError, OSError, ValueError, UnicodeDecodeError):
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
