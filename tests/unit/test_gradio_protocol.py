"""The load generator's Gradio client against a stand-in server: cookies and long answers."""

from __future__ import annotations

import asyncio
import json
import ssl

from aiohttp import web

from benchmarks.gradio_protocol import GradioEvent, new_session

LONG_TEXT = "字" * 200_000  # its event-stream line is about 600 kB, over aiohttp's 128 KiB line limit


def _stand_in() -> tuple[web.Application, list[str]]:
    """A Gradio that routes by cookie as nginx does: every request after /config must bring it."""
    seen: list[str] = []

    def route(request: web.Request) -> None:
        seen.append(f"{request.path} {request.cookies.get('asr_route')}")

    async def config(request: web.Request) -> web.Response:
        route(request)
        response = web.json_response(
            {"dependencies": [{"api_name": "other"}, {"id": 7, "api_name": "transcribe"}]}
        )
        response.set_cookie("asr_route", "asr-1")
        return response

    async def upload(request: web.Request) -> web.Response:
        route(request)
        field = await (await request.multipart()).next()
        return web.json_response([f"/tmp/{field.filename}:{len(await field.read())}"])

    async def join(request: web.Request) -> web.Response:
        route(request)
        body = await request.json()
        assert body["fn_index"] == 7 and body["data"][0]["path"] == "/tmp/a.mp3:5"
        return web.json_response({"event_id": "e1"})

    async def data(request: web.Request) -> web.StreamResponse:
        route(request)
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await stream.prepare(request)
        await stream.write(b'data: {"msg": "estimation"}\n\n')
        done = {"msg": "process_completed", "success": True, "output": {"data": [LONG_TEXT]}}
        line = f"data: {json.dumps(done, ensure_ascii=False)}\n\n".encode()
        for start in range(0, len(line), 10_000):  # in pieces, as a network delivers it
            await stream.write(line[start : start + 10_000])
        return stream

    app = web.Application()
    app.add_routes(
        [
            web.get("/config", config),
            web.post("/gradio_api/upload", upload),
            web.post("/gradio_api/queue/join", join),
            web.get("/gradio_api/queue/data", data),
        ]
    )
    return app, seen


async def _call_twice(tmp_path) -> tuple[list[list], list[str]]:
    app, seen = _stand_in()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    audio = tmp_path / "a.mp3"
    audio.write_bytes(b"12345")
    try:
        async with new_session(f"http://127.0.0.1:{port}", 30, ssl.create_default_context()) as session:
            event = GradioEvent(session)
            answers = [await event.call(audio, ""), await event.call(audio, "")]
    finally:
        await runner.cleanup()
    return answers, seen


def test_the_client_keeps_its_routing_cookie_and_reads_long_answers(tmp_path):
    answers, seen = asyncio.run(_call_twice(tmp_path))
    assert answers == [[LONG_TEXT], [LONG_TEXT]]
    # The cookie set by /config comes back on every later request, though the host is an IP address.
    assert (
        seen
        == ["/config None"]
        + ["/gradio_api/upload asr-1", "/gradio_api/queue/join asr-1", "/gradio_api/queue/data asr-1"] * 2
    )
