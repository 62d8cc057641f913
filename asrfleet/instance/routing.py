"""Two things nginx needs from every response: who answered (a cookie), and how busy we are.

* The `asr_route` cookie names this instance; nginx sends a client that carries it back here, so
  every request of one Gradio session (upload, join, event stream) reaches the same process.
* Requests in flight, the time since the last one, and uploads whose transcription has not
  started yet: the launcher drains an instance before a restart by waiting until all three say it
  is quiet (reported by /stats). A Gradio client uploads, then joins the queue in a second
  request; an instance stopped between the two would lose an upload it had accepted.
"""

from __future__ import annotations

import time
from collections import deque
from http.cookies import SimpleCookie

from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "asr_route"
# Probes, and Gradio's per-page heartbeat (open for as long as a browser tab is), are not work.
_NOT_WORK = ("/healthz", "/readyz", "/gradio_api/heartbeat/")
_UPLOAD = "/gradio_api/upload"
_STARTS = ("/gradio_api/queue/join", "/gradio_api/call/")  # a Gradio event starts: the queue, REST
# An upload whose event has not started by then counts as abandoned: a client joins the queue
# moments after its upload, and a browser whose user has not pressed Transcribe within this long
# must not hold up a restart for longer (its upload stays in Gradio's cache either way).
UPLOAD_WAIT_S = 10.0


class Activity:
    def __init__(self) -> None:
        self.active = 0
        self.last = time.monotonic()
        self._uploads: deque[float] = deque()  # when each upload with no event started yet ended

    def idle_s(self) -> float:
        return 0.0 if self.active else time.monotonic() - self.last

    def uploaded(self) -> None:
        self._uploads.append(time.monotonic())

    def event_started(self) -> None:
        """An event began; it uses (as far as we can tell) the oldest upload still waiting."""
        if self._uploads:
            self._uploads.popleft()

    def pending_uploads(self) -> int:
        """Uploads from the last `UPLOAD_WAIT_S` seconds whose event has not started."""
        cutoff = time.monotonic() - UPLOAD_WAIT_S
        while self._uploads and self._uploads[0] < cutoff:
            self._uploads.popleft()
        return len(self._uploads)


class RouteCookie:
    """ASGI middleware: set the route cookie and count the work in flight."""

    def __init__(self, app: ASGIApp, name: str, activity: Activity) -> None:
        self.app = app
        self.name = name
        self.activity = activity
        self.header = f"{COOKIE}={name}; Path=/; HttpOnly; SameSite=Lax".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(_NOT_WORK):
            await self.app(scope, receive, send)
            return
        has_cookie = _cookie(scope) == self.name
        status = 0

        async def send_with_cookie(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if not has_cookie:
                    message["headers"] = [*message.get("headers", []), (b"set-cookie", self.header)]
            await send(message)

        path = scope["path"]
        if any(start in path for start in _STARTS):
            self.activity.event_started()
        self.activity.active += 1
        try:
            await self.app(scope, receive, send_with_cookie)
        finally:
            self.activity.active -= 1
            self.activity.last = time.monotonic()
            if path.endswith(_UPLOAD) and status == 200:
                self.activity.uploaded()


def _cookie(scope: Scope) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            morsel = SimpleCookie(value.decode("latin-1")).get(COOKIE)
            if morsel is not None:
                return morsel.value
    return None
