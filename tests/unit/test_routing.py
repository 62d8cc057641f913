"""What the instance tells the launcher's drain: work in flight, and uploads still waiting."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

import asrfleet.instance.routing as routing
from asrfleet.fleet.probes import is_quiet
from asrfleet.instance.routing import Activity, RouteCookie


def client(activity: Activity) -> TestClient:
    app = FastAPI()

    @app.post("/gradio_api/upload")
    async def upload(ok: bool = True) -> JSONResponse:
        return JSONResponse(["/tmp/x/a.mp3"], status_code=200 if ok else 413)

    @app.post("/gradio_api/queue/join")
    async def join() -> dict:
        return {"event_id": "e1"}

    app.add_middleware(RouteCookie, name="asr-1", activity=activity)
    return TestClient(app)


def test_an_upload_waits_until_its_event_starts():
    activity = Activity()
    http = client(activity)
    http.post("/gradio_api/upload")
    http.post("/gradio_api/upload")
    http.post("/gradio_api/upload?ok=false")  # refused: nothing was accepted
    assert activity.pending_uploads() == 2
    http.post("/gradio_api/queue/join")
    assert activity.pending_uploads() == 1
    http.post("/gradio_api/queue/join")
    http.post("/gradio_api/queue/join")  # one join too many counts nothing
    assert activity.pending_uploads() == 0 and activity.active == 0


def test_an_upload_nobody_uses_is_abandoned_after_a_while(monkeypatch):
    activity = Activity()
    client(activity).post("/gradio_api/upload")
    assert activity.pending_uploads() == 1
    monkeypatch.setattr(routing, "UPLOAD_WAIT_S", 0.0)
    assert activity.pending_uploads() == 0


def test_an_instance_with_an_upload_waiting_is_not_quiet():
    quiet = {"active_requests": 0, "idle_s": 3.0, "pending_uploads": 0}
    assert is_quiet(quiet, 0.5)
    assert not is_quiet({**quiet, "pending_uploads": 1}, 0.5)
    assert not is_quiet({**quiet, "active_requests": 1}, 0.5)
    assert not is_quiet({**quiet, "idle_s": 0.1}, 0.5)
