"""What the UI and the APIs share: safe paths in, transcripts and download files out.

The engine's blocking `transcribe()` runs in worker threads (many at once: the engine batches
them), so the event loop stays free to answer health probes during the longest transcription.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import anyio

from asrfleet.config import InstanceConfig
from asrfleet.engines.base import TranscribeOptions, Transcriber
from asrfleet.errors import AsrError, BadRequest
from asrfleet.transcript import Transcript, render

log = logging.getLogger(__name__)

DOWNLOAD_FORMATS = ("txt", "srt", "json")
UPLOAD_GRACE_S = 10.0
_DOWNLOAD_MAX_AGE_S = 3600.0
_SWEEP_EVERY_S = 60.0


@dataclass(frozen=True)
class InstanceDirs:
    """An instance's own temp directory and the folders inside it."""

    root: Path

    @property
    def gradio(self) -> Path:
        return self.root / "gradio"

    @property
    def work(self) -> Path:
        return self.root / "work"


class TranscriptionService:
    def __init__(self, config: InstanceConfig, transcriber: Transcriber, upload_dir: Path, work_dir: Path):
        self.config = config
        self.transcriber = transcriber
        self.upload_dir = upload_dir.resolve()
        self.work_dir = work_dir.resolve()
        self.downloads_dir = self.work_dir / "downloads"
        self.downloads_dir.mkdir(parents=True, exist_ok=True)
        # One thread per request in flight: each mostly waits for its batch, so this is cheap. Room
        # for more than the engine takes, so that one request too many gets its 503 at once.
        self._limiter = anyio.CapacityLimiter(config.max_queue + 16)
        self._in_use: Counter[Path] = Counter()
        self._last_sweep = 0.0

    def check_upload(self, path: str | Path) -> Path:
        """The path, if a client uploaded it to us; `BadRequest` for any other server path.

        Gradio skips its own check when the app is mounted into FastAPI, and would otherwise read
        whatever path a request names (/etc/passwd included).
        """
        resolved = Path(path).resolve()
        if resolved.is_relative_to(self.upload_dir) and resolved != self.upload_dir:
            return resolved
        log.warning("refused a request naming a server path nobody uploaded: %s", path)
        raise BadRequest("the request names a file that was not uploaded to this server")

    async def transcribe(self, path: Path, options: TranscribeOptions, shared: bool = True) -> Transcript:
        """Transcribe an uploaded file, then delete it: uploads do not outlive their requests.

        Gradio stores uploads by content, so two clients sending the same recording share one
        file, and the second may upload before the first is done and join just after. A shared
        upload is therefore deleted once no request uses it and nobody uploaded it again for a few
        seconds (a new upload of the same content replaces the file, renewing its mtime).
        """
        self._in_use[path] += 1
        try:
            return await anyio.to_thread.run_sync(
                self.transcriber.transcribe, path, options, limiter=self._limiter
            )
        finally:
            self._in_use[path] -= 1
            if not shared:
                self._reap(path)
            else:
                asyncio.get_running_loop().call_later(UPLOAD_GRACE_S, self._reap, path)

    def _reap(self, path: Path) -> None:
        if self._in_use[path] > 0:
            return  # the last request to finish reaps it
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            self._in_use.pop(path, None)
            return
        if age < UPLOAD_GRACE_S:  # uploaded again meanwhile: its next request may be on its way
            asyncio.get_running_loop().call_later(UPLOAD_GRACE_S - age + 0.1, self._reap, path)
            return
        self._in_use.pop(path, None)
        remove_quietly(path)
        self._remove_empty_upload_dirs()

    def _remove_empty_upload_dirs(self) -> None:
        """Gradio's per-upload folders, once empty and untouched for a while."""
        cutoff = time.time() - UPLOAD_GRACE_S
        for folder in self.upload_dir.iterdir():
            try:
                if folder.is_dir() and folder.stat().st_mtime < cutoff and not any(folder.iterdir()):
                    folder.rmdir()
            except OSError:
                continue  # in use again, or gone already

    def write_downloads(self, transcript: Transcript, stem: str) -> list[Path]:
        """The transcript as .txt, .srt and .json files for the UI's download box."""
        if time.monotonic() - self._last_sweep > _SWEEP_EVERY_S:  # not a directory scan per request
            self._last_sweep = time.monotonic()
            self.sweep_downloads()
        folder = self.downloads_dir / uuid.uuid4().hex
        folder.mkdir()
        paths = []
        for fmt in DOWNLOAD_FORMATS:
            target = folder / f"{stem}.{fmt}"
            target.write_text(render(transcript, fmt), encoding="utf-8")
            paths.append(target)
        return paths

    def sweep_downloads(self, max_age_s: float = _DOWNLOAD_MAX_AGE_S) -> None:
        """Remove download folders older than an hour (Gradio has served its own copy by then)."""
        cutoff = time.time() - max_age_s
        for folder in self.downloads_dir.iterdir():
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)


def remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        log.warning("could not remove %s: %s", path, err)


def safe_stem(name: str | None) -> str:
    """A file stem for downloads, from the uploaded file's name."""
    stem = Path(name or "transcript").stem
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip("._")
    return cleaned[:80] or "transcript"


def user_message(err: BaseException) -> str:
    """What the user is told: the AsrError's own words, or a generic line (the traceback is logged)."""
    if isinstance(err, AsrError):
        return err.message
    return "the server failed to transcribe this file; the error has been logged"
