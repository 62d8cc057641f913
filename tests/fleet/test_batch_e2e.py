"""`launcher.py transcribe` over the real two-instance fleet: corrupt files among good ones, an
instance killed mid-batch, an interrupted batch resumed, and the outputs' formats."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import media
from asrfleet.batch.journal import JOURNAL
from asrfleet.fleet import state
from asrfleet.fleet.control import Supervisor
from procs import REPO, wait_http

pytestmark = pytest.mark.e2e

SRT_CUE = re.compile(r"^\d+\n\d\d:\d\d:\d\d,\d\d\d --> \d\d:\d\d:\d\d,\d\d\d\n.+$")


def make_folder(root: Path, count: int, formats=("mp3", "wav", "flac", "m4a")) -> list[Path]:
    """`count` recordings of 1 to 3 sentences, spread over nested folders."""
    n = len(media.ZH_SENTENCES)
    paths = []
    for i in range(count):
        folder = root / f"q{i % 3}" / ("calls" if i % 2 else "meetings")
        folder.mkdir(parents=True, exist_ok=True)
        sentences = [media.ZH_SENTENCES[(i + k) % n] for k in range(1 + i % 3)]
        paths.append(
            media.write_format(
                folder, media.conversation(sentences), formats[i % len(formats)], f"rec{i:02d}"
            )
        )
    return paths


def batch(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "launcher.py", "transcribe", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def journal_lines(out: Path) -> list[dict]:
    path = out / JOURNAL
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_done(out: Path, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while sum(e["status"] == "done" for e in journal_lines(out)) < count:
        assert time.monotonic() < deadline, "the batch made no progress"
        time.sleep(0.1)


def test_corrupt_files_are_reported_and_never_block_the_others(fleet, tmp_path):
    inputs = tmp_path / "in"
    good = make_folder(inputs, 6)
    (inputs / "q0" / "notes.mp3").write_text("not a recording\n" * 100)
    cut = media.write_audio(inputs / "q1" / "cut.wav", media.conversation(media.ZH_SENTENCES[:2]))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    media.write_audio(inputs / "q2" / "quiet.wav", media.silence(4))
    out = tmp_path / "out"
    proc = batch(str(inputs), "--out", str(out), "--url", fleet["url"])
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stdout + stderr
    assert "6 transcribed, 3 failed" in stdout
    failures = dict(re.findall(r"FAILED (\S+): (.+)", stdout))
    assert "could not be decoded" in failures["q0/notes"]
    assert "truncated" in failures["q1/cut"]
    assert "no speech" in failures["q2/quiet"]
    for path in good:
        stem = out / path.relative_to(inputs).with_suffix("")
        check_outputs(stem)


def check_outputs(stem: Path) -> None:
    data = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
    assert set(data) >= {"text", "sentences", "duration", "language", "model"}
    assert data["text"] and data["duration"] > 0
    assert all(set(s) == {"start", "end", "text"} and 0 <= s["start"] <= s["end"] for s in data["sentences"])
    cues = stem.with_suffix(".srt").read_text(encoding="utf-8").strip().split("\n\n")
    assert len(cues) == len(data["sentences"]) and all(SRT_CUE.match(c) for c in cues)
    vtt = stem.with_suffix(".vtt").read_text(encoding="utf-8")
    assert vtt.startswith("WEBVTT\n\n") and vtt.count(" --> ") == len(data["sentences"])
    assert stem.with_suffix(".txt").read_text(encoding="utf-8").splitlines() == [
        s["text"] for s in data["sentences"]
    ]


def test_a_killed_instance_does_not_stop_the_batch_and_nothing_runs_twice(fleet, tmp_path):
    inputs = tmp_path / "in"
    paths = make_folder(inputs, 30)
    out = tmp_path / "out"
    proc = batch(str(inputs), "--out", str(out), "--url", fleet["url"], "--concurrency", "4")
    wait_done(out, 3)
    supervisor = Supervisor(state.load(fleet["run_dir"]).socket_path)
    os.kill(supervisor.processes()["asr-1"].pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout + stderr
    assert "30 transcribed, 0 failed" in stdout
    lines = journal_lines(out)
    assert sorted(e["relative"] for e in lines) == sorted(
        str(p.relative_to(inputs).with_suffix("")) for p in paths
    )  # every file exactly once
    assert all(e["status"] == "done" for e in lines)


def test_an_interrupted_batch_resumes_where_it_stopped(fleet, tmp_path):
    inputs = tmp_path / "in"
    make_folder(inputs, 20)
    out = tmp_path / "out"
    proc = batch(str(inputs), "--out", str(out), "--url", fleet["url"], "--concurrency", "2")
    wait_done(out, 4)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "run the same command again" in stderr
    first = [e["relative"] for e in journal_lines(out) if e["status"] == "done"]
    assert 4 <= len(first) < 20
    proc = batch(str(inputs), "--out", str(out), "--url", fleet["url"])
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout + stderr
    assert f"{20 - len(first)} transcribed, 0 failed, {len(first)} already done (of 20)" in stdout
    done = [e["relative"] for e in journal_lines(out) if e["status"] == "done"]
    assert len(done) == len(set(done)) == 20  # nothing transcribed twice


def test_several_fleets_at_once(fleet, tmp_path):
    inputs = tmp_path / "in"
    make_folder(inputs, 8, formats=("mp3",))
    urls = [f"http://127.0.0.1:{fleet['base_port']}", f"http://127.0.0.1:{fleet['base_port'] + 1}"]
    for url in urls:  # an instance killed by a test before may still be loading (refusing connects)
        wait_http(url + "/readyz", 120)
    proc = batch(
        str(inputs), "--out", str(tmp_path / "out"), "--url", urls[0], "--url", urls[1], "--formats", "json"
    )
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout + stderr
    for url in urls:
        assert re.search(rf"{re.escape(url)}: [1-9]\d* files", stdout), stdout
    assert not list((tmp_path / "out").rglob("*.srt"))  # only the formats asked for
