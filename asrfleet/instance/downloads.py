"""Download links for a transcript (txt, srt, vtt, json), served by the instance itself.

Gradio hashes and copies every file an event returns into its cache, which would cost the web
server more than the rest of a request if the UI returned the four formats as files. Instead one
small JSON file is saved per transcript, and `/downloads/{token}/{name}.{format}` renders the
format when someone clicks. Links are relative, so they work through nginx (the routing cookie
brings the browser back to this instance), under a root path and through an SSH tunnel alike.
"""

from __future__ import annotations

import html
import json
import re
import time
import uuid
from collections import deque
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, HTTPException
from fastapi.responses import Response

from asrfleet.transcript import FORMATS, Transcript, render

_MEDIA_TYPES = {
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "json": "application/json",
}
_TOKEN = re.compile(r"^[0-9a-f]{32}$")
MAX_AGE_S = 3600.0
# However busy the instance, the saved transcripts stay within these: past them the oldest go
# first (at hundreds of requests a second, an hour of links would be millions of files).
MAX_SAVED = 10_000
MAX_SAVED_BYTES = 256 * 1024 * 1024
_SWEEP_EVERY_S = 60.0


class Downloads:
    """Saved transcripts, one JSON file each, kept for an hour or until `max_saved` newer ones (or
    `max_bytes` of them) have been saved, whichever comes first."""

    def __init__(self, folder: Path, max_saved: int = MAX_SAVED, max_bytes: int = MAX_SAVED_BYTES) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_saved = max_saved
        self.max_bytes = max_bytes
        self._saved: deque[tuple[str, int]] = deque()  # (token, bytes), oldest first
        self._bytes = 0
        self._last_sweep = 0.0

    def save(self, transcript: Transcript) -> str:
        """Keep the transcript for its download links; the token that names it."""
        if time.monotonic() - self._last_sweep > _SWEEP_EVERY_S:  # not a directory scan per request
            self._last_sweep = time.monotonic()
            self.sweep()
        token = uuid.uuid4().hex
        data = json.dumps(transcript.to_dict()).encode("utf-8")
        (self.folder / f"{token}.json").write_bytes(data)
        self._saved.append((token, len(data)))
        self._bytes += len(data)
        while len(self._saved) > self.max_saved or self._bytes > self.max_bytes:
            oldest, size = self._saved.popleft()
            self._bytes -= size
            (self.folder / f"{oldest}.json").unlink(missing_ok=True)
        return token

    def __len__(self) -> int:
        return len(self._saved)

    def load(self, token: str) -> Transcript | None:
        if not _TOKEN.match(token):
            return None
        try:
            data = json.loads((self.folder / f"{token}.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return Transcript.from_dict(data)

    def sweep(self, max_age_s: float = MAX_AGE_S) -> None:
        cutoff = time.time() - max_age_s
        for path in self.folder.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                continue  # removed meanwhile


def links_html(token: str, stem: str) -> str:
    """The UI's download links for one saved transcript."""
    links = " · ".join(
        f'<a href="downloads/{token}/{quote(stem)}.{fmt}" download="{html.escape(stem)}.{fmt}">{fmt}</a>'
        for fmt in FORMATS
    )
    return f'<div class="downloads">Download: {links}</div>'


def add_download_route(app: FastAPI, downloads: Downloads) -> None:
    @app.get("/downloads/{token}/{filename}")
    def download(token: str, filename: str) -> Response:
        stem, _, fmt = filename.rpartition(".")
        transcript = downloads.load(token)
        if transcript is None or fmt not in FORMATS or not stem:
            raise HTTPException(404, "no such transcript (links last an hour)")
        disposition = f"attachment; filename*=UTF-8''{quote(filename)}"
        return Response(
            render(transcript, fmt),
            media_type=_MEDIA_TYPES[fmt],
            headers={"Content-Disposition": disposition},
        )
