"""Errors a client can cause or meet, each with the HTTP status and a message meant for people.

Everything raised to a user (UI toast, API error body) is one of these; any other exception is a
bug, logged with its traceback and answered with a generic message, never the traceback itself.
"""

from __future__ import annotations


class AsrError(Exception):
    """Base class: `str(err)` is shown to the user as it is."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadAudio(AsrError):
    """The upload is not audio we can decode: not a recording, empty, truncated, damaged."""

    status = 400
    code = "bad_audio"


class NoSpeech(AsrError):
    """The recording decodes but holds no speech (silence, or noise the VAD rejects)."""

    status = 400
    code = "no_speech"


class TooLarge(AsrError):
    """Over the upload size limit or the duration limit."""

    status = 413
    code = "too_large"


class Unsupported(AsrError):
    """A request in an encoding the server does not take (a compressed body, say)."""

    status = 415
    code = "unsupported_media_type"


class BadRequest(AsrError):
    """A request that names something we refuse: a server path nobody uploaded, a bad parameter."""

    status = 400
    code = "bad_request"


class Busy(AsrError):
    """The instance's queue is full; the client should retry later."""

    status = 503
    code = "busy"

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(Busy):
    """The models are still loading."""

    code = "not_ready"


def user_message(err: BaseException) -> str:
    """What the user is told: the AsrError's own words, or a generic line (the traceback is logged)."""
    if isinstance(err, AsrError):
        return err.message
    return "the server failed to transcribe this file; the error has been logged"


def first_line(err: BaseException) -> str:
    """An exception in one line, for logs and status: its message's first line, or its type."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
