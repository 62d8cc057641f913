"""What every engine returns, and the file formats it is written in (txt, srt, vtt, json)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

FORMATS = ("txt", "srt", "vtt", "json")


@dataclass(frozen=True)
class Sentence:
    start: float  # seconds from the start of the recording
    end: float
    text: str


@dataclass(frozen=True)
class Transcript:
    text: str
    sentences: tuple[Sentence, ...]
    duration: float  # seconds of audio
    language: str | None = None
    model: str = ""
    # What the user should know about how the recording was read (samples repaired or scaled):
    # part of the result, so two transcripts that warn differently are not equal.
    warnings: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["sentences"] = [asdict(s) for s in self.sentences]
        data["warnings"] = list(self.warnings)
        data.pop("timings")
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Transcript:
        return cls(
            text=data["text"],
            sentences=tuple(Sentence(**s) for s in data.get("sentences", [])),
            duration=float(data.get("duration", 0.0)),
            language=data.get("language"),
            model=data.get("model", ""),
            warnings=tuple(data.get("warnings", ())),
        )


def to_txt(t: Transcript) -> str:
    """One sentence a line when there are sentences, else the whole text."""
    lines = [s.text for s in t.sentences] if t.sentences else [t.text]
    return "\n".join(lines) + "\n"


def to_srt(t: Transcript) -> str:
    blocks = []
    for i, s in enumerate(_cues(t), start=1):
        blocks.append(f"{i}\n{_stamp(s.start, ',')} --> {_stamp(s.end, ',')}\n{s.text}\n")
    return "\n".join(blocks)


def to_vtt(t: Transcript) -> str:
    blocks = ["WEBVTT\n"]
    for s in _cues(t):
        blocks.append(f"{_stamp(s.start, '.')} --> {_stamp(s.end, '.')}\n{s.text}\n")
    return "\n".join(blocks)


def to_json(t: Transcript) -> str:
    return json.dumps(t.to_dict(), ensure_ascii=False, indent=2) + "\n"


WRITERS = {"txt": to_txt, "srt": to_srt, "vtt": to_vtt, "json": to_json}


def render(t: Transcript, fmt: str) -> str:
    try:
        return WRITERS[fmt](t)
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}") from None


def _cues(t: Transcript) -> tuple[Sentence, ...]:
    """Subtitle cues: the sentences, or one cue spanning the recording when there are none."""
    if t.sentences:
        return t.sentences
    return (Sentence(0.0, t.duration, t.text),) if t.text else ()


def _stamp(seconds: float, sep: str) -> str:
    ms = max(0, int(round(seconds * 1000)))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"
