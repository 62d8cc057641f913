"""The benchmarks, run for real on the CPU with small models, so that they never rot."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import media
from procs import REPO, free_ports

pytestmark = pytest.mark.e2e


def run_benchmark(
    module: str, *argv: str, out: Path, timeout: float = 300
) -> tuple[subprocess.CompletedProcess, dict]:
    """`python -m module argv --out out`, which must succeed; its result and the JSON it wrote."""
    command = [sys.executable, "-m", module, *argv, "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result, json.loads(out.read_text())


@pytest.mark.parametrize("api", ["gradio", "openai"])
def test_load_generator_smoke(paraformer_instance, tmp_path, api):
    folder = tmp_path / "audio"
    folder.mkdir()
    for i in range(3):
        media.write_format(folder, media.conversation(media.ZH_SENTENCES[i : i + 1]), "mp3", f"u{i}")
    argv = ["--url", paraformer_instance.url, "--audio", str(folder), "--concurrency", "1,3", "--api", api]
    result, data = run_benchmark("benchmarks.load", *argv, out=tmp_path / "result.json")
    assert data["files"] == 3 and [lv["concurrency"] for lv in data["levels"]] == [1, 3]
    for level in data["levels"]:
        assert level["errors"] == 0 and level["requests"] == 3
        assert level["rtfx"] > 0 and level["latency_s"]["p95"] >= level["latency_s"]["p50"] > 0
        assert level["audio_s"] == pytest.approx(data["audio_s"])
    assert "c=  3" in result.stdout


@pytest.mark.parametrize("model_class", ["BiCifParaformer", "Paraformer"])
def test_limit_benchmark_smoke(tmp_path, model_class):
    """The limit alone, on the CPU with the tiny model of either class, timed over two passes."""
    folder = tmp_path / "audio"
    folder.mkdir()
    for i in range(3):
        media.write_format(folder, media.conversation(media.ZH_SENTENCES[i : i + 1]), "mp3", f"u{i}")
    argv = ["--audio", str(folder), "--limit", "2", "--passes", "2", "--batch", "2", "--size", "tiny"]
    argv += ["--model-class", model_class, "--device", "cpu", "--work", str(tmp_path / "models")]
    _, data = run_benchmark("benchmarks.limit", *argv, out=tmp_path / "limit.json")
    assert data["model"].startswith(f"{model_class}, ") and data["files"] == 2
    assert len(data["passes"]) == 2 and data["rtfx"] == data["passes"][0]["rtfx"] > 0
    built = list((tmp_path / "models").glob("*/config.yaml"))
    assert len(built) == 1 and f"model: {model_class}\n" in built[0].read_text()


def test_one_gpu_benchmark_smoke(vad_dir, tmp_path):
    """The one-GPU benchmark's throughput part on the CPU with the tiny model: the limit, the
    blog-style baseline and ours, each server warmed up, the top level sent twice."""
    folder = tmp_path / "audio"
    folder.mkdir()
    for i in range(3):
        media.write_format(folder, media.conversation(media.ZH_SENTENCES[i : i + 1]), "mp3", f"u{i}")
    long = media.write_format(tmp_path, media.conversation(media.ZH_SENTENCES[:3]), "mp3", "long")
    base_port = free_ports(4)
    argv = [
        *("--audio", str(folder), "--long", str(long), "--vad-model", str(vad_dir), "--device", "cpu"),
        *("--size", "tiny", "--parts", "throughput", "--concurrency", "1,2", "--procs", "1"),
        *("--warm-up", "1", "--repeat", "2", "--base-port", str(base_port), "--work", str(tmp_path / "work")),
    ]
    result, data = run_benchmark("benchmarks.one_gpu", *argv, out=tmp_path / "one_gpu.json", timeout=600)

    runs = data["throughput"]
    assert [level["requests"] for level in runs["baseline"]["levels"]] == [3, 3]
    assert [level["requests"] for level in runs["ours"]["levels"]] == [3, 6]  # the top level twice
    assert [level["requests"] for level in runs["ours_openai_api"]["levels"]] == [6]
    assert [level["requests"] for level in runs["ours_mixed"]["levels"]] == [2 * (3 + 2)]
    for run in ("baseline", "ours", "ours_openai_api", "ours_mixed"):
        assert all(level["errors"] == 0 and level["rtfx"] > 0 for level in runs[run]["levels"]), run
    for level in runs["ours"]["levels"]:  # no CUDA graphs on the CPU
        assert level["graphs_recorded"] == level["warm_up_graphs"] == 0
    assert runs["ours"]["repeat_at_top"] == 2
    # each level of ours warmed up first, a request a client: 1 + 2 (Gradio), 2 (/v1), 2 (mixed)
    measured = 3 + 6 + 6 + 10
    assert runs["instance_stats"]["stage_s"]["requests"] == measured + 1 + 2 + 2 + 2
    summary = runs["summary"]
    assert summary["limit_rtfx"] > 0 and summary["baseline_rtfx"] == runs["baseline"]["levels"][-1]["rtfx"]
    assert summary["ours_openai_api"]["vs_baseline"] > 0 and summary["ours"]["vs_limit"] > 0
    assert "the baseline" in result.stdout
    for port in range(base_port, base_port + 4):  # every server it started is stopped
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"


def test_fleet_benchmark_smoke(vad_dir, tmp_path):
    """The fleet benchmark end to end: the real launcher, supervisord, nginx and two CPU instances
    of the tiny model, every configuration measured, the fleet stopped at the end."""
    folder = tmp_path / "audio"
    folder.mkdir()
    for i in range(3):
        media.write_format(folder, media.conversation(media.ZH_SENTENCES[i : i + 1]), "mp3", f"u{i}")
    base_port = free_ports(3)  # the two instances, then nginx
    lb_port = base_port + 2
    argv = [
        *("--audio", str(folder), "--vad-model", str(vad_dir), "--gpus", "2", "--device", "cpu"),
        *("--size", "tiny", "--repeat", "1", "--procs", "2", "--per-instance-concurrency", "2"),
        *("--warm-up", "1", "--retries", "0", "--api", "openai", "--work", str(tmp_path / "work")),
        *("--base-port", str(base_port), "--lb-port", str(lb_port)),
    ]
    result, data = run_benchmark("benchmarks.fleet", *argv, out=tmp_path / "fleet.json", timeout=600)

    alone = ["instance 0 alone (direct)", "instance 1 alone (direct)"]
    fleet = ["fleet of 2 via nginx", "2 instances at once (direct)"]
    assert [run["config"] for run in data["runs"]] == [*alone, *fleet, *alone, "1 instance via nginx"]
    for run in data["runs"]:
        level = run["levels"][0]
        assert level["errors"] == 0 and level["requests"] == 3 * run["instances"], run["config"]
        assert level["rtfx"] > 0 and len(run["engines"]) == run["instances"]
        assert all(engine["batches"] > 0 and "gc_pause_ms" in engine for engine in run["engines"])
        assert run["cpu_ms_per_request"]["workers"] > 0
    assert data["one_instance_rtfx"] > 0
    assert set(data["speed_ups"]) == {*fleet, "1 instance via nginx"}
    assert all(speed_up["mean"] > 0 for speed_up in data["speed_ups"].values())
    assert f"127.0.0.1:{base_port + 1}" in data["runs"][1]["url"]
    assert "its members alone around it" in result.stdout
    # The benchmark stopped its fleet: nothing listens on its ports any more.
    for port in (lb_port, base_port, base_port + 1):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
