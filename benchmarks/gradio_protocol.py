"""A lean asynchronous client for one Gradio event (upload, queue/join, event stream).

gradio_client runs a thread per request; a load generator with hundreds of requests in flight
needs something lighter. This speaks the same protocol (Gradio 6), with cookies kept per virtual
user so that nginx's sticky routing sees what a browser or gradio_client would send.

It runs on aiohttp: the load generator shares the host with the fleet it measures, and httpx
spent about twice its CPU per transcription (7-8 ms against 3.3 ms on the CI machine), CPU taken
from the instances and time added to every latency measured.
"""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp


class GradioError(RuntimeError):
    pass


def new_session(url: str, timeout: float, tls: ssl.SSLContext) -> aiohttp.ClientSession:
    """One virtual user's HTTP session: its own connections and its own cookies."""
    return aiohttp.ClientSession(
        base_url=url,
        timeout=aiohttp.ClientTimeout(total=timeout),
        connector=aiohttp.TCPConnector(ssl=tls),
        # aiohttp's default jar drops cookies from hosts given as IP addresses (127.0.0.1), and
        # nginx's sticky routing needs its asr_route cookie back.
        cookie_jar=aiohttp.CookieJar(unsafe=True),
    )


def file_form(field: str, path: Path, **fields: str) -> aiohttp.FormData:
    """A multipart form with the file's bytes as `field`, and the other fields as given."""
    form = aiohttp.FormData()
    form.add_field(field, path.read_bytes(), filename=path.name)
    for name, value in fields.items():
        form.add_field(name, value)
    return form


class GradioEvent:
    def __init__(self, session: aiohttp.ClientSession, api_name: str = "transcribe") -> None:
        self.session = session
        self.api_name = api_name
        self.fn_index: int | None = None
        self.session_hash = uuid.uuid4().hex  # one per client, as gradio_client and a browser tab keep it

    async def connect(self) -> None:
        """Read the app's config (this also picks up the routing cookie) and find the event."""
        async with self.session.get("/config") as response:
            response.raise_for_status()
            config = await response.json()
        for index, dep in enumerate(config.get("dependencies", [])):
            if dep.get("api_name") == self.api_name:
                self.fn_index = dep.get("id", index)
                return
        raise GradioError(f"no event with api_name {self.api_name!r}")

    async def call(self, path: Path, *extra: object) -> list:
        if self.fn_index is None:
            await self.connect()
        uploaded = await self._upload(path)
        file_data = {"path": uploaded, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}
        payload = {
            "data": [file_data, *extra],
            "fn_index": self.fn_index,
            "session_hash": self.session_hash,
            "event_data": None,
            "trigger_id": None,
        }
        async with self.session.post("/gradio_api/queue/join", json=payload) as join:
            if join.status != 200:
                raise GradioError(f"join: HTTP {join.status} {(await join.text())[:200]}")
            await join.read()
        return await self._result()

    async def _upload(self, path: Path) -> str:
        async with self.session.post("/gradio_api/upload", data=file_form("files", path)) as response:
            if response.status != 200:
                raise GradioError(f"upload: HTTP {response.status} {(await response.text())[:200]}")
            return (await response.json())[0]

    async def _result(self) -> list:
        url = f"/gradio_api/queue/data?session_hash={self.session_hash}"
        async with self.session.get(url) as stream:
            async for line in _lines(stream.content):
                if not line.startswith(b"data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    if not message.get("success"):
                        raise GradioError(str(message.get("output", {}).get("error") or message)[:300])
                    return message["output"]["data"]
                if message.get("msg") == "unexpected_error":
                    raise GradioError(str(message.get("message"))[:300])
        raise GradioError("the event stream ended without a result")


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The stream's lines, however long: aiohttp's own line reader refuses lines over 128 KiB, and
    the answer for an hour-long recording is one line of several MiB."""
    parts: list[bytes] = []  # the line being received
    async for chunk in content.iter_any():
        *ends, rest = chunk.split(b"\n")
        for end in ends:
            yield b"".join([*parts, end])
            parts = []
        if rest:
            parts.append(rest)
    if parts:
        yield b"".join(parts)
