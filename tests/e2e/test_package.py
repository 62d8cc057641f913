"""asrfleet installs like a package: a wheel built from the tracked files carries the templates and
the `asrfleet` command, and that command, run from another directory with only the wheel's code,
brings up a fleet that transcribes and stops."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

import media
from procs import REPO, free_ports, launcher_engine_args

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a clean copy of the tracked files (no build/ or egg-info left by other builds)."""
    root = tmp_path_factory.mktemp("package")
    source = root / "source"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, tracked):
        src, dst = REPO / name.decode(), source / name.decode()
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        elif src.exists():  # a tracked file deleted in the working tree is not part of it
            shutil.copy2(src, dst)
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, str(source), "-w", str(root)],
        check=True,
        capture_output=True,
    )
    (built,) = root.glob("asrfleet-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict[str, str]:
    """The wheel installed on its own into a folder; an environment that imports asrfleet from there
    (the dependencies come from the test environment)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    return {**os.environ, "PYTHONPATH": str(target), "TARGET": str(target)}


def test_the_wheel_holds_one_package_with_its_templates_and_command(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = {name.split("/")[0] for name in names if not name.startswith("asrfleet-")}
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert top_level == {"asrfleet"}
    assert "asrfleet/fleet/templates/nginx/nginx.conf.j2" in names
    assert "asrfleet/fleet/templates/supervisor/supervisord.conf.j2" in names
    assert "asrfleet/instance/app.py" in names
    assert "asrfleet = asrfleet.fleet.cli:main" in entry_points


def test_the_command_runs_from_the_installed_package(installed, tmp_path):
    command = Path(installed["TARGET"]) / "bin" / "asrfleet"
    result = subprocess.run(
        [str(command), "--help"], cwd=tmp_path, env=installed, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: asrfleet") and "transcribe" in result.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import asrfleet; print(asrfleet.__file__)"],
        cwd=tmp_path,
        env=installed,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(installed["TARGET"])


def test_the_installed_command_brings_up_a_fleet_that_transcribes(installed, paraformer_args, tmp_path):
    media.require_espeak()
    command = str(Path(installed["TARGET"]) / "bin" / "asrfleet")
    run_dir = tmp_path / "run"
    base_port = free_ports(2)
    lb_port = base_port + 1
    up = [command, "--instances", "1", "--run-dir", str(run_dir), "--lb-port", str(lb_port)]
    up += ["--base-port", str(base_port), *launcher_engine_args(paraformer_args)]
    try:
        started = subprocess.run(up, cwd=tmp_path, env=installed, capture_output=True, text=True, timeout=600)
        assert started.returncode == 0, started.stdout + started.stderr
        rendered = (run_dir / "supervisord.conf").read_text()
        assert "-m asrfleet.instance" in rendered and str(tmp_path) in rendered
        assert (run_dir / "nginx.conf").exists()
        speech = media.write_audio(tmp_path / "hello.wav", media.speak("欢迎大家来体验语音识别"))
        with speech.open("rb") as f:
            response = httpx.post(
                f"http://127.0.0.1:{lb_port}/v1/audio/transcriptions",
                files={"file": ("hello.wav", f, "audio/wav")},
                data={"model": "paraformer"},
                timeout=120,
            )
        assert response.status_code == 200, response.text
        assert isinstance(response.json()["text"], str)
    finally:
        stopped = subprocess.run(
            [command, "stop", "--run-dir", str(run_dir)],
            cwd=tmp_path,
            env=installed,
            capture_output=True,
            timeout=180,
        )
    assert stopped.returncode == 0
    for port in (lb_port, base_port):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
