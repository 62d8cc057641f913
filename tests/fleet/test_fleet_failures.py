"""The launcher's answers when things go wrong: offline with a hub id, a crash-looping instance."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from fleetctl import launcher, teardown

from procs import free_port

pytestmark = pytest.mark.e2e


def test_offline_hub_id_fails_fast_and_names_model_dir(tmp_path):
    result = launcher(
        "--instances", "1", "--run-dir", str(tmp_path / "run"), "--device", "cpu", check=False, timeout=120
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "--model DIR" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "supervisord.pid").exists()  # nothing was started


def test_a_crash_loop_ends_fatal_and_status_says_why(tmp_path, vad_dir):
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    run_dir = tmp_path / "run"
    args = [
        "--instances",
        "1",
        "--run-dir",
        str(run_dir),
        "--lb-port",
        str(free_port()),
        "--base-port",
        str(free_port()),
        "--model",
        str(broken),
        "--vad-model",
        str(vad_dir),
        "--no-punc",
        "--ready-timeout",
        "240",
    ]
    try:
        up = launcher(*args, check=False, timeout=300)
        assert up.returncode == 5, up.stdout + up.stderr
        assert "asr-0 failed to start (FATAL" in up.stderr
        assert "exiting: --model" in up.stderr and "not a FunASR model directory" in up.stderr
        status = launcher("status", "--run-dir", str(run_dir), check=False)
        assert status.returncode == 1
        assert "FATAL" in status.stdout and "last log lines" in status.stdout
        assert "exiting: --model" in status.stdout
    finally:
        teardown(run_dir)


def test_a_taken_port_is_refused_before_anything_starts(tmp_path, paraformer_args):
    """A stale process on an instance's port would answer our readiness probes in its place."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        run_dir = tmp_path / "run"
        args = ["--instances", "1", "--run-dir", str(run_dir), "--device", "cpu", *paraformer_args]
        up = launcher(*args, "--lb-port", str(free_port()), "--base-port", str(port), check=False)
    assert up.returncode == 4, up.stdout + up.stderr
    assert f"port {port} (asr-0) is already in use" in up.stderr and "Traceback" not in up.stderr
    assert not (run_dir / "supervisord.pid").exists()


def test_readiness_comes_from_the_named_instance_only():
    from asrfleet.fleet.probes import probe
    from asrfleet.fleet.spec import InstanceSpec

    answer = json.dumps({"status": "ready", "name": "asr-long"}).encode()

    class Stale(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Stale)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        spec = InstanceSpec(
            name="asr-1",
            index=1,
            port=port,
            gpu=None,
            command=("true",),
            environment={"CUDA_VISIBLE_DEVICES": "", "TMPDIR": "/tmp", "GRADIO_TEMP_DIR": "/tmp"},
            temp_dir=Path("/tmp"),
            log_file=Path("/tmp/asr-1.log"),
        )
        readiness = probe(spec)
        assert not readiness.ready and readiness.status == "foreign"
    finally:
        server.shutdown()
