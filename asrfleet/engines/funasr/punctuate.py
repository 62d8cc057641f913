"""Stage 4, per request: join the segments, restore punctuation, split into timed sentences.

This follows what FunASR's `AutoModel.inference_with_vad` does after recognition for Paraformer
models, using FunASR's own helpers, so the text and sentences are the same as its pipeline's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from asrfleet.engines.funasr.segments import SegmentText, Span
from asrfleet.errors import NoSpeech
from asrfleet.transcript import Sentence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Assembled:
    text: str
    sentences: tuple[Sentence, ...]


class Punctuator:
    """Joins recognised segments into one text with sentences; punctuates when it has a model."""

    def __init__(self, punc_model: torch.nn.Module | None = None, punc_kwargs: dict | None = None) -> None:
        self.model = punc_model
        self.kwargs = punc_kwargs or {}

    def assemble(self, results: list[SegmentText], segments: list[Span]) -> Assembled:
        """`results[i]` was recognised from `segments[i]` ([start_ms, end_ms] in the recording)."""
        from funasr.auto.auto_model import _join_vad_texts, _vad_segment_sentences
        from funasr.utils.timestamp_tools import timestamp_sentence

        texts = [r.text for r in results]
        timestamps = [
            [s + start, e + start]
            for r, (start, _) in zip(results, segments, strict=True)
            for s, e in r.timestamps
        ]
        raw_text = " ".join(texts)
        if not raw_text.strip():
            raise NoSpeech("no speech was recognised in the recording")
        if self.model is None:
            restored = [
                {"text": r.text, "timestamp": [[s + start, e + start] for s, e in r.timestamps]}
                for r, (start, _) in zip(results, segments, strict=True)
            ]
            return Assembled(raw_text, _sentences(_vad_segment_sentences(restored, segments)))

        punc_input = _join_vad_texts(texts)
        text, punc_array = self._punctuate(punc_input)
        if punc_array is None or len(punc_array) != len(timestamps):
            # FunASR's fallback when punctuation and timestamps do not line up: VAD segments.
            restored = [{"text": r.text, "timestamp": []} for r in results]
            return Assembled(text, _sentences(_vad_segment_sentences(restored, segments)))
        return Assembled(text, _sentences(timestamp_sentence(punc_array, timestamps, punc_input)))

    @torch.inference_mode()
    def _punctuate(self, text: str) -> tuple[str, list[int] | None]:
        results, _ = self.model.inference(data_in=[text], key=["punc"], **self.kwargs)
        punc_array = results[0].get("punc_array")
        return results[0]["text"], (punc_array.tolist() if punc_array is not None else None)


def _sentences(items: list[dict]) -> tuple[Sentence, ...]:
    return tuple(
        Sentence(start=item["start"] / 1000.0, end=item["end"] / 1000.0, text=_text(item["text"]))
        for item in items
    )


def _text(text: str | list[str]) -> str:
    return " ".join(text) if isinstance(text, list) else text
