"""Test recordings made on the fly: speech synthesised by espeak-ng, written in any container.

Nothing binary is committed: every test makes the files it needs in its temp directory.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

RATE = 16000

ZH_SENTENCES = [
    "今天天气很好，我们一起去公园散步吧。",
    "会议将在下午三点开始，请大家准时参加。",
    "这个季度的销售额比去年增长了百分之二十。",
    "请把报告发给我，我明天上午看一下。",
    "语音识别系统可以把录音转换成文字。",
    "北京和上海是中国最大的两个城市。",
    "我们需要更多的显卡来处理这些音频文件。",
    "谢谢大家的参与，今天的会议到此结束。",
]
EN_SENTENCE = "Please send me the report before the meeting on Monday."


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def require_espeak() -> None:
    if not have_espeak():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng); .ci/run installs it")


def speak(text: str, voice: str = "cmn", speed: int = 160) -> np.ndarray:
    """Speech for `text` from espeak-ng, as 16 kHz mono float32."""
    require_espeak()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text],
            check=True,
            capture_output=True,
        )
        return read_samples(wav)


def read_samples(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        chunks = [
            f.to_ndarray().reshape(-1)
            for frame in container.decode(audio=0)
            for f in resampler.resample(frame)
        ]
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(chunks)


def conversation(sentences: list[str], pause_s: float = 0.6, repeat: int = 1) -> np.ndarray:
    """Sentences one after another with pauses, like a meeting: something for the VAD to cut."""
    pause = np.zeros(int(pause_s * RATE), dtype=np.float32)
    parts = [np.concatenate([speak(s), pause]) for s in sentences]
    return np.concatenate(parts * repeat)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


# container suffix -> (codec, sample format, sample rate, channels): all unlike what the model eats.
AUDIO_FORMATS = {
    "wav": ("pcm_s16le", "s16", 44100, 2),
    "flac": ("flac", "s16", 48000, 1),
    "mp3": ("mp3", "fltp", 44100, 2),
    "m4a": ("aac", "fltp", 22050, 1),
    "ogg": ("libopus", "flt", 48000, 2),
    "webm": ("libopus", "flt", 48000, 1),
    "aiff": ("pcm_s16be", "s16", 8000, 1),
}


def write_audio(
    path: Path,
    samples: np.ndarray,
    codec: str = "pcm_s16le",
    fmt: str = "s16",
    rate: int = RATE,
    channels: int = 1,
) -> Path:
    """Encode 16 kHz mono `samples` into `path` with the given codec, rate and channel count."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout="stereo" if channels == 2 else "mono")
        _encode_audio(out, stream, samples, fmt, rate, channels)
    return path


def write_format(folder: Path, samples: np.ndarray, suffix: str, name: str = "speech") -> Path:
    codec, fmt, rate, channels = AUDIO_FORMATS[suffix]
    return write_audio(folder / f"{name}.{suffix}", samples, codec, fmt, rate, channels)


def write_video(path: Path, samples: np.ndarray, video_codec: str = "h264", audio_codec: str = "aac") -> Path:
    """A small video (grey frames) whose audio track is `samples`: mp4 or mkv by suffix."""
    with av.open(str(path), "w") as out:
        video = out.add_stream(video_codec, rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream(audio_codec, rate=48000, layout="mono")
        frames = int(len(samples) / RATE * 10)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 128, dtype=np.uint8), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, 10)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        _encode_audio(out, audio, samples, "fltp", 48000, 1)
    return path


def write_video_only(path: Path, seconds: float = 1.0) -> Path:
    with av.open(str(path), "w") as out:
        video = out.add_stream("h264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        for i in range(int(seconds * 10)):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), dtype=np.uint8), format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
    return path


def _encode_audio(out, stream, samples: np.ndarray, fmt: str, rate: int, channels: int) -> None:
    layout = "stereo" if channels == 2 else "mono"
    resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate)
    source = av.AudioFrame.from_ndarray(
        samples.reshape(1, -1).astype(np.float32), format="flt", layout="mono"
    )
    source.sample_rate = RATE
    frame_size = stream.codec_context.frame_size or 1024
    converted = resampler.resample(source) + resampler.resample(None)
    data = np.concatenate([f.to_ndarray() for f in converted], axis=1)
    planar = fmt.endswith("p")
    for start in range(0, data.shape[1] if planar else data.shape[1] // channels, frame_size):
        if planar:
            chunk = data[:, start : start + frame_size]
        else:
            chunk = data[:, start * channels : (start + frame_size) * channels]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=fmt, layout=layout)
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


def wav_bytes(
    samples: bytes,
    rate: int = RATE,
    channels: int = 1,
    bits: int = 16,
    fmt: int = 1,
    data_size: int | None = None,
) -> bytes:
    """A WAV built byte by byte, so that its header can say anything (fields too large for their
    width wrap, as a hostile writer's would)."""
    size = len(samples) if data_size is None else data_size
    block = channels * bits // 8
    header = struct.pack("<4sI4s", b"RIFF", (36 + size) & 0xFFFFFFFF, b"WAVE")
    fields = (fmt, channels, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
    header += struct.pack("<4sIHHIIHH", b"fmt ", 16, *fields)
    return header + struct.pack("<4sI", b"data", size) + samples


def noise_bursts(minutes: int) -> np.ndarray:
    """Bursts of noise (1 s) between pauses (0.5 s): minutes of work for the VAD and the decoder."""
    rng = np.random.default_rng(0)
    burst = np.concatenate([rng.uniform(-0.3, 0.3, RATE), silence(0.5)])
    return np.tile(burst, minutes * 40).astype(np.float32)
