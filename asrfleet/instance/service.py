"""What the UI and the APIs share: safe paths in, transcripts out.

Transcriptions never block the event loop, which stays free to answer health probes during the
longest one: an engine in its own process (the default) is awaited through the future its pipe
reader sets; an engine in the web process runs `transcribe()` in worker threads (many at once:
the engine batches them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import anyio

from asrfleet.config import InstanceConfig
from asrfleet.engines.base import TranscribeOptions, Transcriber
from asrfleet.errors import BadRequest
from asrfleet.transcript import Transcript

log = logging.getLogger(__name__)

UPLOAD_GRACE_S = 10.0
# An upload no request has used for this long was abandoned (a client that uploaded and went away,
# a request an engine restart cut short): the sweep removes it. A Gradio client joins the queue
# within a second of its upload, so this leaves room for a long wait in a full queue.
ABANDONED_AFTER_S = 600.0
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
        # One thread per request in flight: each mostly waits for its batch, so this is cheap. Room
        # for more than the engine takes, so that one request too many gets its 503 at once.
        self._limiter = anyio.CapacityLimiter(config.max_queue + 16)
        self._in_use: Counter[Path] = Counter()
        self._last_sweep = time.monotonic()

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
        self._sweep_now_and_then()
        try:
            return await self._transcribe(path, options)
        finally:
            self._in_use[path] -= 1
            if not shared:
                self._in_use.pop(path, None)
                remove_upload(path)
            else:
                asyncio.get_running_loop().call_later(UPLOAD_GRACE_S, self._reap, path)

    async def _transcribe(self, path: Path, options: TranscribeOptions) -> Transcript:
        submit = getattr(self.transcriber, "submit", None)
        if submit is not None:  # an engine process answers through a future: no thread waits
            return await asyncio.wrap_future(submit(path, options))
        return await anyio.to_thread.run_sync(
            self.transcriber.transcribe, path, options, limiter=self._limiter
        )

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
        if path.parent != self.upload_dir:  # Gradio's folder for this upload, named by its hash
            # later than the grace, or the unlink just now would keep the folder's mtime too young
            asyncio.get_running_loop().call_later(UPLOAD_GRACE_S + 1.0, self._remove_if_empty, path.parent)

    def _remove_if_empty(self, folder: Path) -> None:
        """An upload's folder, once empty and untouched for a while (an upload of the same content
        that is on its way would write into it)."""
        try:
            if time.time() - folder.stat().st_mtime >= UPLOAD_GRACE_S:
                folder.rmdir()  # refused while not empty
        except OSError:
            pass  # in use again, or gone already

    def _sweep_now_and_then(self) -> None:
        if time.monotonic() - self._last_sweep < _SWEEP_EVERY_S:  # not a directory walk a request
            return
        self._last_sweep = time.monotonic()
        in_use = {path for path, n in self._in_use.items() if n > 0}
        for root in (self.upload_dir, self.work_dir / "uploads"):
            asyncio.get_running_loop().run_in_executor(None, sweep_abandoned, root, in_use)


def sweep_abandoned(root: Path, in_use: set[Path], max_age_s: float = ABANDONED_AFTER_S) -> int:
    """Remove the files under `root` untouched for `max_age_s` and not in use, then the folders
    left empty; how many files went. Whatever a request, a crash or a client left behind ends here."""
    cutoff = time.time() - max_age_s
    removed = 0
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            path = Path(folder) / name
            try:
                if path not in in_use and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError:
                continue  # removed meanwhile
        if Path(folder) != root:
            try:
                if Path(folder).stat().st_mtime < time.time() - UPLOAD_GRACE_S:
                    Path(folder).rmdir()  # refused while not empty
            except OSError:
                pass
    return removed


def remove_upload(path: Path) -> None:
    """An upload of one request and the folder it got to itself (`/v1` gives each its own)."""
    remove_quietly(path)
    try:
        path.parent.rmdir()
    except OSError:
        pass  # not empty, or gone already


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
