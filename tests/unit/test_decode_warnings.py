"""What decoding repaired reaches the user: `audio.Decoded.warnings` end up in `Transcript.warnings`,
through the Paraformer engine's worker processes and through the Whisper engine, on the CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest

import media
from asrfleet.config import InstanceConfig
from asrfleet.engines.base import TranscribeOptions
from asrfleet.engines.funasr.transcriber import FunasrTranscriber
from asrfleet.engines.whisper import WhisperTranscriber
from asrfleet.transcript import Sentence, Transcript, render

NAN_WARNING = "were not numbers (NaN or infinite) and were replaced by silence"


def _damaged_and_clean(folder, speech: np.ndarray) -> tuple:
    """The speech as a 16 kHz float WAV twice: with 40 NaN samples in it, and without."""
    damaged = speech.copy()
    damaged[speech.size // 3 : speech.size // 3 + 40] = np.nan
    write = lambda name, x: media.write_audio(folder / name, x, "pcm_f32le", "flt")  # noqa: E731
    return write("damaged.wav", damaged), write("clean.wav", speech)


def test_warnings_survive_the_json_round_trip():
    t = Transcript("你好。", (Sentence(0.0, 1.0, "你好。"),), 1.0, "zh", "m", warnings=("a", "b"))
    data = json.loads(render(t, "json"))
    assert data["warnings"] == ["a", "b"] and Transcript.from_dict(data) == t
    assert Transcript.from_dict({"text": "x"}).warnings == ()  # as written before there were any
    assert t != Transcript(t.text, t.sentences, t.duration, t.language, t.model)


@pytest.fixture(scope="module")
def paraformer(model_dirs, vad_dir):
    config = InstanceConfig(
        model=str(model_dirs["asr"]),
        vad_model=str(vad_dir),
        punc_model=str(model_dirs["punc"]),
        device="cpu",
        threads=1,
        workers=1,
    )
    transcriber = FunasrTranscriber(config)
    transcriber.load()
    yield transcriber
    transcriber.close()


def test_paraformer_transcripts_carry_the_decoder_s_warnings(paraformer, tmp_path):
    damaged, clean = _damaged_and_clean(tmp_path, media.conversation(media.ZH_SENTENCES[:2]))
    (warning,) = paraformer.transcribe(damaged, TranscribeOptions()).warnings
    assert warning.startswith("40 samples (") and NAN_WARNING in warning
    assert paraformer.transcribe(clean, TranscribeOptions()).warnings == ()


def test_whisper_transcripts_carry_the_decoder_s_warnings(whisper_dir, tmp_path):
    config = InstanceConfig(
        engine="whisper", model=str(whisper_dir), vad_model=None, punc_model=None, device="cpu", threads=1
    )
    transcriber = WhisperTranscriber(config)
    transcriber.load()
    try:
        speech = media.speak(media.EN_SENTENCE, voice="en-us")
        damaged, clean = _damaged_and_clean(tmp_path, speech)
        transcript = transcriber.transcribe(damaged, TranscribeOptions())
        assert transcript.text and len(transcript.warnings) == 1 and NAN_WARNING in transcript.warnings[0]
        assert transcriber.transcribe(clean, TranscribeOptions()).warnings == ()
    finally:
        transcriber.close()
