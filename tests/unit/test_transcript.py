import json
import re

from asrfleet.transcript import Sentence, Transcript, render, to_srt, to_txt, to_vtt

T = Transcript(
    text="你好。今天开会。",
    sentences=(Sentence(0.25, 1.5, "你好。"), Sentence(3661.0, 3662.345, "今天开会。")),
    duration=3663.0,
    language="zh",
    model="m",
)

SRT_CUE = re.compile(r"^(\d+)\n(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)\n(.+)$")


def test_srt_parses_back():
    cues = [SRT_CUE.match(block) for block in to_srt(T).strip().split("\n\n")]
    assert [c.groups() for c in cues] == [
        ("1", "00:00:00,250", "00:00:01,500", "你好。"),
        ("2", "01:01:01,000", "01:01:02,345", "今天开会。"),
    ]


def test_vtt():
    assert to_vtt(T).startswith("WEBVTT\n\n00:00:00.250 --> 00:00:01.500\n你好。\n")


def test_txt_one_sentence_per_line():
    assert to_txt(T) == "你好。\n今天开会。\n"


def test_json_round_trip():
    data = json.loads(render(T, "json"))
    assert data["sentences"][1] == {"start": 3661.0, "end": 3662.345, "text": "今天开会。"}
    assert Transcript.from_dict(data) == T


def test_no_sentences_gives_one_cue():
    t = Transcript(text="hello", sentences=(), duration=2.0)
    assert to_srt(t) == "1\n00:00:00,000 --> 00:00:02,000\nhello\n"
