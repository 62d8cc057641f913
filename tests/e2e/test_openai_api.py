"""The OpenAI-compatible API, used through the official `openai` client, unchanged."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

import media
import procs

pytestmark = pytest.mark.e2e


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="not-needed", max_retries=0)


@pytest.fixture(scope="module")
def english(tmp_path_factory):
    return media.write_format(
        tmp_path_factory.mktemp("en"), media.speak(media.EN_SENTENCE, voice="en-us"), "mp3"
    )


def test_whisper_text_through_the_openai_client(whisper_instance, english):
    with open(english, "rb") as f:
        result = client(whisper_instance.url).audio.transcriptions.create(model="whisper-1", file=f)
    assert result.text == media.EN_SENTENCE


def test_every_response_format(whisper_instance, english):
    api = client(whisper_instance.url).audio.transcriptions
    with open(english, "rb") as f:
        verbose = api.create(
            model="whisper-1",
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["segment"],
            prompt="Monday report",
            language="en",
        )
    assert verbose.text == media.EN_SENTENCE and verbose.language == "en" and verbose.duration > 2
    assert (
        verbose.segments[0].text == media.EN_SENTENCE and verbose.segments[0].end > verbose.segments[0].start
    )
    with open(english, "rb") as f:
        assert api.create(model="whisper-1", file=f, response_format="text").strip() == media.EN_SENTENCE
    with open(english, "rb") as f:
        srt = api.create(model="whisper-1", file=f, response_format="srt")
    assert re.match(r"1\n00:00:00,\d{3} --> 00:00:0\d,\d{3}\n" + re.escape(media.EN_SENTENCE), srt)
    with open(english, "rb") as f:
        assert api.create(model="whisper-1", file=f, response_format="vtt").startswith("WEBVTT\n\n00:00:00.")


def test_paraformer_gives_the_same_text_as_the_gradio_api(paraformer_instance, tmp_path):
    from gradio_client import Client, handle_file

    path = media.write_format(tmp_path, media.conversation(media.ZH_SENTENCES[:2]), "wav")
    gradio_text = Client(paraformer_instance.url, verbose=False).predict(
        handle_file(str(path)), "", api_name="/transcribe"
    )[0]
    with open(path, "rb") as f:
        assert (
            client(paraformer_instance.url).audio.transcriptions.create(model="paraformer", file=f).text
            == gradio_text
        )


def test_bad_audio_is_a_400_with_a_message(paraformer_instance, tmp_path):
    notes = tmp_path / "notes.mp3"
    notes.write_text("not a recording\n" * 50)
    with open(notes, "rb") as f, pytest.raises(openai.BadRequestError) as info:
        client(paraformer_instance.url).audio.transcriptions.create(model="x", file=f)
    assert info.value.status_code == 400 and "could not be decoded" in str(info.value)
    assert info.value.body["code"] == "bad_audio"


@pytest.fixture(scope="module")
def tiny_instance(paraformer_args, tmp_path_factory):
    """An instance with a 1 MiB upload limit and room for one request at a time."""
    args = [*paraformer_args, "--max-file-size", "1m", "--max-queue", "1"]
    with procs.instance(args, tmp_path_factory.mktemp("small")) as running:
        yield running


def test_too_large_is_a_413(tiny_instance, tmp_path):
    big = media.write_audio(tmp_path / "big.wav", media.conversation(media.ZH_SENTENCES))
    assert big.stat().st_size > 2**20
    with open(big, "rb") as f, pytest.raises(openai.APIStatusError) as info:
        client(tiny_instance.url).audio.transcriptions.create(model="x", file=f)
    assert info.value.status_code == 413 and "limit" in str(info.value)


def test_a_full_queue_is_a_503_with_retry_after(tiny_instance, tmp_path):
    path = media.write_format(tmp_path, media.conversation(media.ZH_SENTENCES), "m4a")

    def post(_):
        with open(path, "rb") as f:
            return httpx.post(
                tiny_instance.url + "/v1/audio/transcriptions",
                files={"file": ("a.m4a", f)},
                data={"model": "x"},
                timeout=120,
            )

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(post, range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 503 in statuses, statuses
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"].isdigit() and busy.json()["error"]["code"] == "busy"
