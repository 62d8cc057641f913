"""The Whisper engine (faster-whisper, INT8) behind the same app: real model, exact text."""

from __future__ import annotations

import pytest
from gradio_client import Client, handle_file

import media

pytestmark = pytest.mark.e2e


def test_real_tiny_en_gives_the_exact_text(whisper_instance, tmp_path):
    path = media.write_format(tmp_path, media.speak(media.EN_SENTENCE, voice="en-us"), "m4a")
    text, table, files, details = Client(whisper_instance.url, verbose=False).predict(
        handle_file(str(path)), "", api_name="/transcribe"
    )
    assert text == media.EN_SENTENCE
    assert details["language"] == "en" and details["sentences"][0]["end"] > 2.0


def test_whisper_errors_are_the_same_as_paraformers(whisper_instance, tmp_path):
    quiet = media.write_audio(tmp_path / "quiet.wav", media.silence(3))
    with pytest.raises(Exception, match="no speech"):
        Client(whisper_instance.url, verbose=False).predict(
            handle_file(str(quiet)), "", api_name="/transcribe"
        )
