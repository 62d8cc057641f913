"""benchmarks.same_text against a real instance: the transcripts it records are the server's."""

from __future__ import annotations

import httpx
import pytest

import media
from benchmarks.same_text import compare, transcripts

pytestmark = pytest.mark.e2e


def test_it_records_what_v1_answers_and_finds_no_difference_on_a_second_pass(paraformer_instance, tmp_path):
    folder = tmp_path / "speech"
    folder.mkdir()
    files = [
        media.write_format(folder, media.speak(text), "wav", name=f"{index}")
        for index, text in enumerate(["今天天气很好", "我们明天开会"])
    ]
    first = transcripts(paraformer_instance.url, files)
    for path in files:
        with path.open("rb") as f:
            direct = httpx.post(
                paraformer_instance.url + "/v1/audio/transcriptions", files={"file": f}
            ).json()
        assert first[path.name] == direct["text"]
    assert compare(first, transcripts(paraformer_instance.url, files)) == (2, [])
