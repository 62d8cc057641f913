"""The service's upload reaping: the file after its request, Gradio's folder for it after that."""

from __future__ import annotations

import asyncio
import os
import time

from fake_engine import FakeEngine

import asrfleet.instance.service as service_module
from asrfleet.config import InstanceConfig
from asrfleet.engines.base import TranscribeOptions
from asrfleet.instance.service import TranscriptionService


def test_an_upload_and_its_folder_are_removed_after_the_request(tmp_path, monkeypatch):
    monkeypatch.setattr(service_module, "UPLOAD_GRACE_S", 0.2)
    uploads = tmp_path / "gradio"
    folder = uploads / "3f2a9c"  # Gradio's folder per upload, named by the content's hash
    folder.mkdir(parents=True)
    upload = folder / "ok.wav"
    upload.write_bytes(b"RIFF")
    old = time.time() - 5
    os.utime(upload, (old, old))
    config = InstanceConfig(model="fake", vad_model=None, punc_model=None)
    engine = FakeEngine(config)
    engine.load()
    service = TranscriptionService(config, engine, uploads, tmp_path / "work")

    async def scenario() -> str:
        transcript = await service.transcribe(upload, TranscribeOptions())
        await asyncio.sleep(0.5)
        file_gone = not upload.exists()
        await asyncio.sleep(1.2)
        return f"{transcript.text} file_gone={file_gone} folder_gone={not folder.exists()}"

    assert asyncio.run(scenario()) == "heard ok.wav file_gone=True folder_gone=True"
    assert uploads.exists()
