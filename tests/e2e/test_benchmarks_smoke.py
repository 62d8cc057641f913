"""The load generator, run for real against a CPU instance, so that it never rots."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import media
from procs import REPO

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("api", ["gradio", "openai"])
def test_load_generator_smoke(paraformer_instance, tmp_path, api):
    folder = tmp_path / "audio"
    folder.mkdir()
    for i in range(3):
        media.write_format(folder, media.conversation(media.ZH_SENTENCES[i : i + 1]), "mp3", f"u{i}")
    out = tmp_path / "result.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.load",
            "--url",
            paraformer_instance.url,
            "--audio",
            str(folder),
            "--concurrency",
            "1,3",
            "--api",
            api,
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert data["files"] == 3 and [lv["concurrency"] for lv in data["levels"]] == [1, 3]
    for level in data["levels"]:
        assert level["errors"] == 0 and level["requests"] == 3
        assert level["rtfx"] > 0 and level["latency_s"]["p95"] >= level["latency_s"]["p50"] > 0
        assert level["audio_s"] == pytest.approx(data["audio_s"])
    assert "c=  3" in result.stdout


def test_vad_scores_benchmark_smoke(vad_dir, tmp_path):
    """The VAD network in the engine against in the worker, on the CPU: the same segments."""
    folder = tmp_path / "audio"
    folder.mkdir()
    for i in range(3):
        media.write_format(
            folder, media.conversation(media.ZH_SENTENCES[i : i + 2], pause_s=1.5), "mp3", f"u{i}"
        )
    out = tmp_path / "vad.json"
    argv = ["--audio", str(folder), "--vad-model", str(vad_dir), "--device", "cpu", "--clients", "2"]
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.vad_scores", *argv, "--work", str(tmp_path), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert data["recordings"] == data["same_segments_and_features"] == 3 and data["differing"] == []
    cpu = data["worker_cpu_ms_per_recording"]
    assert cpu["network_in_the_worker"] > 0 and cpu["network_in_the_engine"] > 0
    assert data["server"]["chunks"] >= 3
