"""Two things nginx needs from every response: who answered (a cookie), and how busy we are.

* The `asr_route` cookie names this instance; nginx sends a client that carries it back here, so
  every request of one Gradio session (upload, join, event stream) reaches the same process.
* Requests in flight and the time since the last one: the launcher drains an instance before a
  restart by waiting until both say it is quiet (reported by /readyz).
"""

from __future__ import annotations

import time
from http.cookies import SimpleCookie

from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "asr_route"
# Probes, and Gradio's per-page heartbeat (open for as long as a browser tab is), are not work.
_NOT_WORK = ("/healthz", "/readyz", "/gradio_api/heartbeat/")


class Activity:
    def __init__(self) -> None:
        self.active = 0
        self.last = time.monotonic()

    def idle_s(self) -> float:
        return 0.0 if self.active else time.monotonic() - self.last


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

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start" and not has_cookie:
                message["headers"] = [*message.get("headers", []), (b"set-cookie", self.header)]
            await send(message)

        self.activity.active += 1
        try:
            await self.app(scope, receive, send_with_cookie)
        finally:
            self.activity.active -= 1
            self.activity.last = time.monotonic()


def _cookie(scope: Scope) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            morsel = SimpleCookie(value.decode("latin-1")).get(COOKIE)
            if morsel is not None:
                return morsel.value
    return None
