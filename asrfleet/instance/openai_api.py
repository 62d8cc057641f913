"""`POST /v1/audio/transcriptions`, compatible with OpenAI's audio API (and its Python client).

Form fields: `file`, `model` (accepted, any name: the instance serves its own model), `language`,
`prompt` (hotwords where the model supports them), `response_format` (json, text, srt, vtt,
verbose_json), `timestamp_granularities[]` (segment). Errors come as OpenAI-style JSON with the
right status: 400 for what the client sent (bad audio, a malformed form), 413 too large, 415 a
`Content-Encoding` we do not take, 503 with Retry-After when busy or loading. A refusal is logged
as one line; a traceback is logged only for a fault of the server's own.

An upload is stored under a name of the server's choosing (a fresh folder, `audio` and a cleaned
suffix): the client's file name is data, never part of a path, whatever bytes it holds.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from asrfleet.engines.base import TranscribeOptions
from asrfleet.errors import AsrError, BadRequest, Busy, TooLarge, Unsupported, user_message
from asrfleet.instance.service import TranscriptionService, remove_upload
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
            form = await _read_form(request)
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
            if err.status < 500 or isinstance(err, Busy):
                log.info("refused a /v1 request: %d %s: %s", err.status, err.code, err.message)
            return error_response(err)
        except Exception:
            log.exception("transcription through /v1 failed")
            return error_response(AsrError(user_message(RuntimeError())))
        finally:
            if path is not None:
                remove_upload(path)


def _check_length(request: Request, max_bytes: int) -> None:
    """Refuse an upload that announces itself too large before reading it."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes + _FORM_OVERHEAD:
        raise TooLarge(f"the upload is {format_size(int(length))}; the limit is {format_size(max_bytes)}")


async def _read_form(request: Request) -> FormData:
    """The multipart form, or the client's mistake named: a compressed body, a form the parser
    refuses (no boundary, garbage, too many fields, a field over its size limit)."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise Unsupported(
            f"the request body is sent with Content-Encoding {encoding[:40]!r}, which this server "
            "does not take; send the file as it is (audio is compressed already)"
        )
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise BadRequest("the request must be a multipart/form-data form with the recording in `file`")
    try:
        return await request.form()
    except HTTPException as err:  # starlette's answer to a form its parser refuses
        raise BadRequest(f"the form could not be read: {str(err.detail).rstrip('.')}") from None
    except ValueError as err:  # a UnicodeDecodeError among them
        raise BadRequest(f"the form could not be read: {err}") from None


def _save(upload: UploadFile, folder: Path, max_bytes: int) -> Path:
    target = folder / uuid.uuid4().hex / f"audio{upload_suffix(upload.filename)}"
    target.parent.mkdir(parents=True)
    with open(target, "wb") as out:
        shutil.copyfileobj(upload.file, out, length=1024 * 1024)
    if target.stat().st_size > max_bytes:
        remove_upload(target)
        raise TooLarge(f"the file is larger than the limit of {format_size(max_bytes)}")
    return target


def upload_suffix(name: str | None) -> str:
    """The client's file extension, if it is a plain one (".mp3"): a hint for the decoder's format
    guess; anything else (control bytes, slashes, dots only, too long) gives none."""
    _, dot, ext = (name or "").rpartition(".")
    return f".{ext.lower()}" if dot and ext.isascii() and ext.isalnum() and len(ext) <= 8 else ""


def _text(value: object) -> str | None:
    return str(value).strip() or None if value is not None else None


def _respond(t: Transcript, response_format: str, granularities: list) -> Response:
    if response_format == "text":
        return PlainTextResponse(t.text + "\n")
    if response_format == "srt":
        return PlainTextResponse(to_srt(t))
    if response_format == "vtt":
        return PlainTextResponse(to_vtt(t), media_type="text/vtt")
    # Warnings (a repaired recording, say) ride along only when there are any: OpenAI's clients
    # ignore fields they do not know.
    extra = {"warnings": list(t.warnings)} if t.warnings else {}
    if response_format == "json":
        return JSONResponse({"text": t.text, **extra})
    body = {
        "task": "transcribe",
        "language": t.language or "",
        "duration": round(t.duration, 3),
        "text": t.text,
        "model": t.model,
        "segments": [_segment(i, s) for i, s in enumerate(t.sentences)],
        **extra,
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
