"""One real instance process (small Paraformer on the CPU), driven over HTTP and with gradio_client."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file

import media
from asrfleet.audio import AudioLimits, decode_audio
from asrfleet.instance.service import UPLOAD_GRACE_S
from procs import REPO, free_port, kill_tree, wait_http

pytestmark = pytest.mark.e2e

MAX_FILE_MB = 100
MAX_DURATION_S = 4000


@pytest.fixture(scope="module")
def server(paraformer_args, tmp_path_factory):
    """Started by hand (not procs.instance) to watch its port while the model loads."""
    folder = tmp_path_factory.mktemp("instance")
    temp_dir = folder / "temp"
    port = free_port()
    log = folder / "instance.log"
    cmd = [
        sys.executable,
        "-m",
        "instances",
        "--port",
        str(port),
        *paraformer_args,
        "--temp-dir",
        str(temp_dir),
        "--max-file-size",
        f"{MAX_FILE_MB}m",
        "--max-duration",
        str(MAX_DURATION_S),
        "--name",
        "asr-test",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        loading = port_while_loading(port, proc, log)
        wait_http(url + "/readyz", 180, proc)
        yield {"url": url, "proc": proc, "temp_dir": temp_dir, "log": log, "port_while_loading": loading}
    finally:
        kill_tree(proc)


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server["url"], verbose=False)


@pytest.fixture(scope="module")
def meeting(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("meeting")
    return media.write_format(folder, media.conversation(media.ZH_SENTENCES[:4]), "mp3", "meeting")


def transcribe(client: Client, path: Path) -> tuple:
    return client.predict(handle_file(str(path)), "", api_name="/transcribe")


def port_while_loading(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> dict:
    """Once the instance says it is loading: what a client connecting meanwhile meets, and
    whether another process could bind its port."""
    deadline = time.monotonic() + timeout
    while "once ready" not in log.read_text(errors="replace"):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise TimeoutError("the instance never said it was loading")
        time.sleep(0.05)
    try:
        answer: object = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code
    except httpx.ConnectError:
        answer = "refused"
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            bindable = True
        except OSError:
            bindable = False
    return {"bindable": bindable, "answer": answer}


def test_its_port_is_taken_at_once_but_refuses_connections_until_ready(server):
    # nginx then passes a restarting instance by (a refused connection moves a request to the
    # next instance) instead of handing its clients a 503.
    assert server["port_while_loading"] == {"bindable": False, "answer": "refused"}
    ready = httpx.get(server["url"] + "/readyz").json()
    assert ready == {"status": "ready", "name": "asr-test", "model": ready["model"]} and ready["model"]


def test_stats_hold_the_diagnostics(server, client, meeting):
    transcribe(client, meeting)
    stats = httpx.get(server["url"] + "/stats").json()
    assert stats["name"] == "asr-test" and stats["ready"] is True
    assert set(stats["activity"]) == {"active_requests", "idle_s", "pending_uploads"}
    assert stats["engine"]["engine_pid"] > 0 and stats["engine"]["stage_s"]["requests"] >= 1


def test_the_engine_process_gets_growable_gpu_memory_segments(server):
    if "PYTORCH_CUDA_ALLOC_CONF" in os.environ:
        pytest.skip("PYTORCH_CUDA_ALLOC_CONF is set here: the instance keeps the user's")
    pid = httpx.get(server["url"] + "/stats").json()["engine"]["engine_pid"]
    environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in environment


def test_listens_on_loopback_only(server):
    out = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
    port = server["url"].rsplit(":", 1)[1]
    listening = [
        line.split()[3]
        for line in out.splitlines()
        if line.split()[3:4] and line.split()[3].endswith(":" + port)
    ]
    assert listening == [f"127.0.0.1:{port}"]


def test_transcript_equals_funasr(server, client, meeting, reference_pipeline):
    text, table, links, details = transcribe(client, meeting)
    samples = decode_audio(meeting, AudioLimits(2**30, 36000))
    ref = reference_pipeline.generate(input=samples, batch_size_s=300, sentence_timestamp=True)[0]
    assert text == ref["text"]
    assert [(round(s["start"] * 1000), round(s["end"] * 1000), s["text"]) for s in details["sentences"]] == [
        (s["start"], s["end"], s["text"]) for s in ref["sentence_info"]
    ]
    assert [row[2] for row in table["data"]] == [s["text"] for s in ref["sentence_info"]]
    assert abs(details["duration"] - samples.size / 16000) < 1e-6
    hrefs = re.findall(r'href="([^"]+)"', links)
    assert [h.rsplit(".", 1)[1] for h in hrefs] == ["txt", "srt", "vtt", "json"]
    assert all(h.startswith("downloads/") and "/meeting." in h for h in hrefs)  # relative: any prefix
    srt = httpx.get(f"{server['url']}/{hrefs[1]}")
    assert srt.status_code == 200 and "attachment" in srt.headers["content-disposition"]
    assert srt.text.startswith("1\n00:00:") and ref["sentence_info"][0]["text"] in srt.text
    assert httpx.get(f"{server['url']}/{hrefs[3]}").json()["text"] == text
    assert httpx.get(f"{server['url']}/downloads/{'0' * 32}/meeting.srt").status_code == 404
    assert httpx.get(f"{server['url']}/{hrefs[1][:-4]}.exe").status_code == 404


def bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the error must say)"""
    speech = media.conversation(media.ZH_SENTENCES[:1])
    not_audio = folder / "notes.wav"
    not_audio.write_text("minutes of the meeting\n" * 100)
    empty = folder / "empty.mp3"
    empty.write_bytes(b"")
    truncated = media.write_audio(folder / "cut.wav", speech)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    quiet = media.write_audio(folder / "quiet.wav", media.silence(5))
    too_long = media.write_audio(
        folder / "long.flac", media.silence(MAX_DURATION_S + 60) + 0.01, codec="flac"
    )
    return {
        "not audio": (not_audio, "could not be decoded"),
        "empty": (empty, "empty"),
        "truncated": (truncated, "truncated"),
        "silence": (quiet, "no speech"),
        "too long": (too_long, "limit is 1:06:40"),
        "no audio track": (media.write_video_only(folder / "slides.mp4"), "no audio track"),
    }


def test_bad_inputs_get_clear_errors_and_the_instance_keeps_serving(server, client, meeting, tmp_path):
    pid = server["proc"].pid
    for name, (path, message) in bad_inputs(tmp_path).items():
        with pytest.raises(Exception) as info:
            transcribe(client, path)
        assert message in str(info.value), f"{name}: {info.value}"
        assert "Traceback" not in str(info.value)
        text, *_ = transcribe(client, meeting)  # the next good request still succeeds
        assert text
    assert server["proc"].poll() is None and server["proc"].pid == pid


def test_upload_over_the_size_limit_is_refused(server, tmp_path):
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * ((MAX_FILE_MB + 1) * 2**20))
    with open(big, "rb") as f:
        r = httpx.post(server["url"] + "/gradio_api/upload", files={"files": ("big.wav", f)}, timeout=60)
    assert r.status_code == 413


def test_no_uploads_are_left_behind(server, client, meeting, tmp_path):
    bad_inputs(tmp_path)  # make sure there were failures too (test above); and one more success:
    transcribe(client, meeting)
    audio = {".wav", ".mp3", ".flac", ".mp4", ".m4a"}
    deadline = time.monotonic() + UPLOAD_GRACE_S + 5
    while True:
        leftovers = [p for p in server["temp_dir"].rglob("*") if p.is_file() and p.suffix in audio]
        if not leftovers or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert leftovers == []


def test_a_server_path_nobody_uploaded_is_refused(server):
    session = uuid.uuid4().hex
    payload = {
        "data": [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, ""],
        "fn_index": 0,
        "session_hash": session,
    }
    assert httpx.post(server["url"] + "/gradio_api/queue/join", json=payload).status_code == 200
    with httpx.stream(
        "GET", server["url"] + f"/gradio_api/queue/data?session_hash={session}", timeout=30
    ) as s:
        for line in s.iter_lines():
            if "process_completed" in line:
                assert '"success":false' in line and "not uploaded" in line
                assert "root:" not in line
                return
    pytest.fail("no answer")


def test_an_hour_long_recording_while_probes_answer_at_once(server, client, tmp_path):
    hour = np.tile(media.conversation(media.ZH_SENTENCES), 1)
    hour = np.tile(hour, int(np.ceil(3600 * 16000 / hour.size)))[: 3630 * 16000]
    path = media.write_audio(tmp_path / "hour.flac", hour, codec="flac")
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(out=transcribe(client, path)))
    worker.start()
    probes = []
    while worker.is_alive():
        for route in ("/healthz", "/readyz"):
            started = time.perf_counter()
            assert httpx.get(server["url"] + route, timeout=5).status_code == 200
            probes.append(time.perf_counter() - started)
        time.sleep(0.5)
    worker.join()
    text, table, files, details = result["out"]
    assert abs(details["duration"] - 3630) < 1
    assert len(details["sentences"]) > 100 and details["sentences"][-1]["end"] > 3500
    assert len(probes) > 10 and max(probes) < 1.0, f"slowest probe {max(probes):.2f} s"


def test_an_upload_counts_as_work_until_its_request_starts(server, client, meeting, tmp_path):
    """The launcher drains an instance until /stats says nothing waits: a Gradio client's upload
    and the queue/join that follows are two requests, and a restart between them would lose it."""
    transcribe(client, meeting)
    assert httpx.get(server["url"] + "/stats").json()["activity"]["pending_uploads"] == 0
    note = tmp_path / "note.txt"  # not audio: test_no_uploads_are_left_behind looks for audio
    note.write_text("an upload whose request never comes")
    with note.open("rb") as f:
        httpx.post(server["url"] + "/gradio_api/upload", files={"files": f}).raise_for_status()
    assert httpx.get(server["url"] + "/stats").json()["activity"]["pending_uploads"] == 1
    transcribe(client, meeting)  # its join takes the oldest waiting upload, then its own is waiting
    assert httpx.get(server["url"] + "/stats").json()["activity"]["pending_uploads"] == 1
