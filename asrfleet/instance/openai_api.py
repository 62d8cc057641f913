"""`POST /v1/audio/transcriptions`, compatible with OpenAI's audio API (and its Python client).

Form fields: `file`, `model` (accepted, any name: the instance serves its own model), `language`,
`prompt` (hotwords where the model supports them), `response_format` (json, text, srt, vtt,
verbose_json), `timestamp_granularities[]` (segment). Errors come as OpenAI-style JSON with the
right status: 400 bad audio, 413 too large, 503 with Retry-After when busy or loading.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import UploadFile

from asrfleet.engines.base import TranscribeOptions
from asrfleet.errors import AsrError, BadRequest, Busy, TooLarge, user_message
from asrfleet.instance.service import TranscriptionService, remove_quietly, safe_stem
from asrfleet.sizes import format_size
from asrfleet.transcript import Sentence, Transcript, to_srt, to_vtt

log = logging.getLogger(__name__)

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
_FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the other fields, on top of the file


def add_openai_routes(app: FastAPI, service: TranscriptionService) -> None:
    uploads = service.work_dir / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        path: Path | None = None
        try:
            _check_length(request, service.config.max_file_size)
            form = await request.form()
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise BadRequest("the request has no `file` field with the recording")
            response_format = str(form.get("response_format") or "json")
            if response_format not in RESPONSE_FORMATS:
                raise BadRequest(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}")
            path = _save(upload, uploads, service.config.max_file_size)
            options = TranscribeOptions(
                hotwords=_text(form.get("prompt")), language=_text(form.get("language"))
            )
            transcript = await service.transcribe(path, options, shared=False)
            path = None  # the service deleted it
            return _respond(transcript, response_format, form.getlist("timestamp_granularities[]"))
        except AsrError as err:
            return error_response(err)
        except Exception:
            log.exception("transcription through /v1 failed")
            return error_response(AsrError(user_message(RuntimeError())))
        finally:
            if path is not None:
                remove_quietly(path)


def _check_length(request: Request, max_bytes: int) -> None:
    """Refuse an upload that announces itself too large before reading it."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes + _FORM_OVERHEAD:
        raise TooLarge(f"the upload is {format_size(int(length))}; the limit is {format_size(max_bytes)}")


def _save(upload: UploadFile, folder: Path, max_bytes: int) -> Path:
    target = folder / uuid.uuid4().hex / safe_stem(upload.filename)
    target = target.with_suffix(Path(upload.filename or "").suffix[:10])
    target.parent.mkdir(parents=True)
    with open(target, "wb") as out:
        shutil.copyfileobj(upload.file, out, length=1024 * 1024)
    if target.stat().st_size > max_bytes:
        remove_quietly(target)
        raise TooLarge(f"the file is larger than the limit of {format_size(max_bytes)}")
    return target


def _text(value: object) -> str | None:
    return str(value).strip() or None if value is not None else None


def _respond(t: Transcript, response_format: str, granularities: list) -> Response:
    if response_format == "text":
        return PlainTextResponse(t.text + "\n")
    if response_format == "srt":
        return PlainTextResponse(to_srt(t))
    if response_format == "vtt":
        return PlainTextResponse(to_vtt(t), media_type="text/vtt")
    if response_format == "json":
        return JSONResponse({"text": t.text})
    body = {
        "task": "transcribe",
        "language": t.language or "",
        "duration": round(t.duration, 3),
        "text": t.text,
        "model": t.model,
        "segments": [_segment(i, s) for i, s in enumerate(t.sentences)],
    }
    if "word" in granularities:
        body["words"] = []  # sentence-level timestamps only; words would need the token times
    return JSONResponse(body)


def _segment(index: int, sentence: Sentence) -> dict:
    return {
        "id": index,
        "seek": 0,
        "start": sentence.start,
        "end": sentence.end,
        "text": sentence.text,
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": 0.0,
        "compression_ratio": 0.0,
        "no_speech_prob": 0.0,
    }


def error_response(err: AsrError) -> JSONResponse:
    kind = "server_error" if err.status >= 500 else "invalid_request_error"
    body = {"error": {"message": err.message, "type": kind, "param": None, "code": err.code}}
    headers = {"Retry-After": str(err.retry_after_s)} if isinstance(err, Busy) else None
    return JSONResponse(body, status_code=err.status, headers=headers)
