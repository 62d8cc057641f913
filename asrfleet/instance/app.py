"""The instance's web app, built by a factory from a config: health probes, Gradio, OpenAI API."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import anyio
import gradio as gr
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from asrfleet.config import InstanceConfig
from asrfleet.engines.base import Transcriber
from asrfleet.instance.downloads import Downloads, add_download_route
from asrfleet.instance.openai_api import add_openai_routes
from asrfleet.instance.routing import Activity, RouteCookie
from asrfleet.instance.service import InstanceDirs, TranscriptionService
from asrfleet.instance.ui import build_ui

log = logging.getLogger(__name__)


@dataclass
class LoadState:
    """Where model loading stands; read by /readyz."""

    started: float
    failed: str | None = None
    exit_code: int = 0  # the instance's, once it has decided to exit


def build_app(
    config: InstanceConfig, transcriber: Transcriber, dirs: InstanceDirs, state: LoadState | None = None
) -> FastAPI:
    state = state or LoadState(started=time.time())
    service = TranscriptionService(config, transcriber, upload_dir=dirs.gradio, work_dir=dirs.work)
    app = FastAPI(title="Speech recognition instance", docs_url=None, redoc_url=None)
    activity = Activity()
    app.add_middleware(RouteCookie, name=config.name, activity=activity)
    _add_health_routes(app, config, transcriber, state, activity)
    add_openai_routes(app, service)
    downloads = Downloads(dirs.work / "downloads")
    add_download_route(app, downloads)
    demo = build_ui(service, downloads)
    app = gr.mount_gradio_app(
        app,
        demo,
        path="/",
        max_file_size=config.max_file_size,
        root_path=config.root_path or None,
        footer_links=["api"],
        enable_monitoring=False,
    )
    # gr.mount_gradio_app leaves has_launched False, and Gradio then skips its check that a file a
    # request names was uploaded by a client (a queue/join naming /etc/passwd would be read). A
    # mounted app is launched as far as that check is concerned. The UI handler checks as well.
    demo.has_launched = True
    return app


def _add_health_routes(
    app: FastAPI, config: InstanceConfig, transcriber: Transcriber, state: LoadState, activity: Activity
) -> None:
    @app.get("/healthz")
    async def healthz() -> dict:
        """Liveness: the process answers. Nothing else is checked here."""
        return {"status": "alive", "name": config.name}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: models loaded and warmed up; 503 before that, or when loading failed.

        Answered by the web process alone, so a probe never waits for the engine."""
        if transcriber.ready:
            return JSONResponse({"status": "ready", "name": config.name, "model": transcriber.model_name})
        status = "failed" if state.failed else "loading"
        body = {
            "status": status,
            "name": config.name,
            "model": transcriber.model_name,
            "error": state.failed,
            "loading_s": round(time.time() - state.started, 1),
        }
        return JSONResponse(body, status_code=503)

    @app.get("/stats")
    async def stats() -> dict:
        """Diagnostics: this web process's traffic (what a drain waits on) and the engine's counters
        (queue, batches, GPU time, memory), which cost a round trip to the engine."""
        engine = await anyio.to_thread.run_sync(transcriber.stats) if transcriber.ready else {}
        return {
            "name": config.name,
            "model": transcriber.model_name,
            "ready": transcriber.ready,
            "activity": {
                "active_requests": activity.active,
                "idle_s": round(activity.idle_s(), 2),
                "pending_uploads": activity.pending_uploads(),
            },
            "engine": engine,
        }
