"""A lean asynchronous client for one Gradio event (upload, queue/join, event stream).

gradio_client runs a thread per request; a load generator with hundreds of requests in flight
needs something lighter. This speaks the same protocol (Gradio 6), with cookies kept per virtual
user so that nginx's sticky routing sees what a browser or gradio_client would send.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx


class GradioError(RuntimeError):
    pass


class GradioEvent:
    def __init__(self, client: httpx.AsyncClient, api_name: str = "transcribe") -> None:
        self.client = client
        self.api_name = api_name
        self.fn_index: int | None = None
        self.session = uuid.uuid4().hex  # one per client, as gradio_client and a browser tab keep it

    async def connect(self) -> None:
        """Read the app's config (this also picks up the routing cookie) and find the event."""
        config = (await self.client.get("/config")).raise_for_status().json()
        for index, dep in enumerate(config.get("dependencies", [])):
            if dep.get("api_name") == self.api_name:
                self.fn_index = dep.get("id", index)
                return
        raise GradioError(f"no event with api_name {self.api_name!r}")

    async def call(self, path: Path, *extra: object) -> list:
        if self.fn_index is None:
            await self.connect()
        with open(path, "rb") as f:
            response = await self.client.post("/gradio_api/upload", files={"files": (path.name, f)})
        if response.status_code != 200:
            raise GradioError(f"upload: HTTP {response.status_code} {response.text[:200]}")
        file_data = {"path": response.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}
        join = await self.client.post(
            "/gradio_api/queue/join",
            json={
                "data": [file_data, *extra],
                "fn_index": self.fn_index,
                "session_hash": self.session,
                "event_data": None,
                "trigger_id": None,
            },
        )
        if join.status_code != 200:
            raise GradioError(f"join: HTTP {join.status_code} {join.text[:200]}")
        return await self._result(self.session)

    async def _result(self, session: str) -> list:
        async with self.client.stream("GET", f"/gradio_api/queue/data?session_hash={session}") as stream:
            async for line in stream.aiter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    if not message.get("success"):
                        raise GradioError(str(message.get("output", {}).get("error") or message)[:300])
                    return message["output"]["data"]
                if message.get("msg") == "unexpected_error":
                    raise GradioError(str(message.get("message"))[:300])
        raise GradioError("the event stream ended without a result")
