"""Model ids -> local model directories, downloading from ModelScope or Hugging Face when needed.

The launcher resolves every model once, before any instance starts, so that instances never race
on the hub cache and always start from local directories. Offline, a hub id fails fast with a
message that says how to proceed (`--model DIR`).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

HUB_HOSTS = {"ms": "www.modelscope.cn", "hf": "huggingface.co"}
HUB_NAMES = {"ms": "ModelScope", "hf": "Hugging Face"}
_PROBE_TIMEOUT_S = 5.0


class ModelUnavailable(RuntimeError):
    """A model could not be found locally nor downloaded."""


@dataclass(frozen=True)
class ModelRequest:
    """One model to resolve: `name` is a hub id, a FunASR alias or a local directory."""

    name: str
    kind: str  # "funasr" or "whisper": decides which hub client downloads it
    option: str  # the command-line option that names it, for error messages


def is_local(name: str) -> bool:
    return Path(name).expanduser().is_dir()


def resolve(request: ModelRequest, hub: str = "ms", cache_dir: Path | None = None) -> Path:
    """The local directory of the model, downloaded into `cache_dir` if it is a hub id."""
    if is_local(request.name):
        return Path(request.name).expanduser().resolve()
    if looks_like_path(request.name):
        raise ModelUnavailable(f"{request.option} {request.name}: no such directory")
    host = "huggingface.co" if request.kind == "whisper" else HUB_HOSTS[hub]
    _probe(host, request)
    try:
        return Path(_download(request, hub, cache_dir))
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelUnavailable(
            f"could not download {request.name!r}: {err}. Download it on a machine with access and "
            f"pass {request.option} DIR"
        ) from err


def looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.endswith("/")


def _probe(host: str, request: ModelRequest) -> None:
    """Fail in seconds, not minutes of retries, when the hub cannot be reached at all."""
    try:
        with socket.create_connection((host, 443), timeout=_PROBE_TIMEOUT_S):
            return
    except OSError as err:
        raise ModelUnavailable(
            f"{request.option} {request.name!r} is a hub id, but {host} cannot be reached ({err}); "
            f"this machine looks offline. Copy the model directory here and pass {request.option} DIR"
        ) from err


def _download(request: ModelRequest, hub: str, cache_dir: Path | None) -> str:
    cache = str(cache_dir) if cache_dir else None
    if request.kind == "whisper":
        from faster_whisper.utils import download_model

        return download_model(request.name, cache_dir=cache)
    model_id = _funasr_alias(request.name, hub)
    log.info("downloading %s from %s", model_id, HUB_NAMES[hub])
    if hub == "hf":
        from huggingface_hub import snapshot_download

        return snapshot_download(model_id, cache_dir=cache)
    from modelscope import snapshot_download as ms_snapshot_download

    return ms_snapshot_download(model_id, cache_dir=cache)


def _funasr_alias(name: str, hub: str) -> str:
    """FunASR's short names ("fsmn-vad", "ct-punc") to their hub ids."""
    from funasr.download.name_maps_from_hub import name_maps_hf, name_maps_ms

    return (name_maps_hf if hub == "hf" else name_maps_ms).get(name, name)
