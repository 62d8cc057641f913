"""The Gradio page: upload or record, Transcribe, read the sentences, download txt/srt/vtt/json.

The same event is the Gradio API endpoint `/transcribe` (gradio_client: `api_name="/transcribe"`).
It returns the text, the sentence table, the download links (HTML) and the transcript as JSON.
"""

from __future__ import annotations

import logging

import gradio as gr

from asrfleet.engines.base import TranscribeOptions
from asrfleet.errors import AsrError, user_message
from asrfleet.instance.downloads import Downloads, links_html
from asrfleet.instance.service import TranscriptionService, safe_stem
from asrfleet.transcript import Transcript

log = logging.getLogger(__name__)

INTRO = """# Speech recognition
Upload a recording (wav, mp3, m4a, flac, ogg, webm, a video's audio track…) or record one, then
press **Transcribe**. The transcript is punctuated and split into timed sentences; download it as
text, subtitles or JSON."""


def build_ui(service: TranscriptionService, downloads: Downloads) -> gr.Blocks:
    model = service.transcriber.model_name
    with gr.Blocks(title="Speech recognition", delete_cache=(600, 3600), analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=2):
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Recording")
                hotwords = gr.Textbox(
                    label="Hotwords (optional)", placeholder="names, terms… separated by spaces"
                )
                button = gr.Button("Transcribe", variant="primary")
            with gr.Column(scale=3):
                text = gr.Textbox(label="Transcript", lines=10, buttons=["copy"], elem_id="transcript")
                links = gr.HTML(elem_id="downloads")
        sentences = gr.Dataframe(
            headers=["start", "end", "sentence"], label="Sentences", wrap=True, elem_id="sentences"
        )
        details = gr.JSON(label="Details", visible=False)
        gr.Markdown(f"<small>Model: `{model}`</small>")

        async def transcribe(recording: str | None, words: str | None) -> tuple[str, list, str, dict]:
            if not recording:
                raise gr.Error("Upload or record a recording first.", title="No recording")
            transcript = await _run(service, recording, words)
            for warning in transcript.warnings:
                gr.Warning(warning)
            links_to = links_html(downloads.save(transcript), safe_stem(recording))
            return transcript.text, _table(transcript), links_to, transcript.to_dict()

        button.click(
            transcribe,
            inputs=[audio, hotwords],
            outputs=[text, sentences, links, details],
            api_name="transcribe",
            concurrency_limit=service.config.max_queue,
        )
    demo.queue(max_size=service.config.max_queue, default_concurrency_limit=service.config.max_queue)
    return demo


async def _run(service: TranscriptionService, recording: str, words: str | None) -> Transcript:
    try:
        path = service.check_upload(recording)
        return await service.transcribe(path, TranscribeOptions(hotwords=(words or "").strip() or None))
    except AsrError as err:
        raise gr.Error(user_message(err), title="Cannot transcribe", print_exception=False) from err
    except Exception as err:
        log.exception("transcription failed")
        raise gr.Error(user_message(err), title="Server error", print_exception=False) from err


def _table(t: Transcript) -> list[list[str]]:
    return [[_clock(s.start), _clock(s.end), s.text] for s in t.sentences]


def _clock(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000 // 100:d}"
