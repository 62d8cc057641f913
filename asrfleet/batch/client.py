"""One recording through the OpenAI-compatible API of one of several fleets, retried when the
failure is the server's (a dead instance, a full queue), reported when it is the file's."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from asrfleet.transcript import Sentence, Transcript

# Statuses worth another try: the gateway lost its instance, or the instance is busy or loading.
RETRY_STATUSES = {500, 502, 503, 504}
_DOWN_FOR_S = 10.0


class FileFailed(Exception):
    """The server refused this file (bad audio, too large): retrying will not help."""


class ServerUnavailable(Exception):
    """Every try failed for reasons of the servers'."""


@dataclass
class Endpoint:
    url: str
    in_flight: int = 0
    down_until: float = 0.0


@dataclass
class Fleets:
    """The URLs given with --url; each request goes to the least busy one that is up."""

    endpoints: list[Endpoint]
    attempts: int = 6
    stats: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_urls(cls, urls: list[str], attempts: int = 6) -> Fleets:
        return cls([Endpoint(u.rstrip("/")) for u in urls], attempts)

    def pick(self) -> Endpoint:
        now = time.monotonic()
        up = [e for e in self.endpoints if e.down_until <= now] or self.endpoints
        return min(up, key=lambda e: (e.in_flight, random.random()))

    async def transcribe(self, client: httpx.AsyncClient, path: Path, timeout: float) -> Transcript:
        delay = 1.0
        last = ""
        for _ in range(self.attempts):
            endpoint = self.pick()
            endpoint.in_flight += 1
            try:
                response = await _post(client, endpoint.url, path, timeout)
            except httpx.TransportError as err:  # refused, reset, timed out: that server is in trouble
                endpoint.down_until = time.monotonic() + _DOWN_FOR_S
                last = f"{endpoint.url}: {type(err).__name__}"
            else:
                if response.status_code == 200:
                    self.stats[endpoint.url] = self.stats.get(endpoint.url, 0) + 1
                    return from_verbose_json(response.json())
                message = _error_message(response)
                if response.status_code not in RETRY_STATUSES:
                    raise FileFailed(message)
                last = f"{endpoint.url}: HTTP {response.status_code} {message}"
                delay = max(delay, _retry_after(response))
            finally:
                endpoint.in_flight -= 1
            await asyncio.sleep(delay + random.random() * 0.5)
            delay = min(delay * 2, 30.0)
        raise ServerUnavailable(f"gave up after {self.attempts} tries; last: {last}")


async def _post(client: httpx.AsyncClient, url: str, path: Path, timeout: float) -> httpx.Response:
    with open(path, "rb") as f:
        return await client.post(
            url + "/v1/audio/transcriptions",
            files={"file": (path.name, f)},
            data={"model": "default", "response_format": "verbose_json"},
            timeout=httpx.Timeout(timeout, connect=10.0),
        )


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or f"HTTP {response.status_code}"


def _retry_after(response: httpx.Response) -> float:
    try:
        return float(response.headers.get("retry-after", 1.0))
    except ValueError:
        return 1.0


def from_verbose_json(data: dict) -> Transcript:
    return Transcript(
        text=data["text"],
        sentences=tuple(Sentence(s["start"], s["end"], s["text"]) for s in data.get("segments", [])),
        duration=float(data.get("duration", 0.0)),
        language=data.get("language") or None,
        model=data.get("model", ""),
    )
