"""What the UI and the APIs share: safe paths in, transcripts out.

Transcriptions never block the event loop, which stays free to answer health probes during the
longest one: an engine in its own process (the default) is awaited through the future its pipe
reader sets; an engine in the web process runs `transcribe()` in worker threads (many at once:
the engine batches them).
"""

from __future__ import annotations

import asyncio
import logging
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
            return await self._transcribe(path, options)
        finally:
            self._in_use[path] -= 1
            if not shared:
                self._reap(path)
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
