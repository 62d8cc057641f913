from __future__ import annotations

import pytest

import procs


@pytest.fixture(scope="session")
def paraformer_instance(paraformer_args, tmp_path_factory):
    with procs.instance(paraformer_args, tmp_path_factory.mktemp("paraformer")) as running:
        yield running


@pytest.fixture(scope="session")
def whisper_instance(whisper_dir, tmp_path_factory):
    args = ["--engine", "whisper", "--model", str(whisper_dir), "--device", "cpu", "--threads", "1"]
    with procs.instance(args, tmp_path_factory.mktemp("whisper")) as running:
        yield running
