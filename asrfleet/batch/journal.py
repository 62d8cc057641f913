"""An append-only journal in the output folder: one JSON line per finished file.

A line is written only after the file's outputs are on disk, and flushed at once, so a batch
stopped at any moment (Ctrl-C, a crash, a dead machine) restarts where it was: files whose line
says done, and whose source has not changed since, are skipped; everything else is tried again.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from asrfleet.batch.inputs import Item

JOURNAL = ".asrfleet-journal.jsonl"


@dataclass(frozen=True)
class Entry:
    relative: str
    status: str  # "done" or "failed"
    size: int
    mtime: float
    reason: str = ""
    duration_s: float = 0.0


class Journal:
    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / JOURNAL
        self.entries: dict[str, Entry] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = Entry(**json.loads(line))
                except (ValueError, TypeError):
                    continue  # a line cut short by a crash
                self.entries[entry.relative] = entry
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the batch's life

    def is_done(self, item: Item) -> bool:
        entry = self.entries.get(str(item.relative))
        stat = item.path.stat()
        return (
            entry is not None
            and entry.status == "done"
            and (entry.size, entry.mtime)
            == (
                stat.st_size,
                stat.st_mtime,
            )
        )

    def record(self, item: Item, status: str, reason: str = "", duration_s: float = 0.0) -> None:
        stat = item.path.stat()
        entry = Entry(str(item.relative), status, stat.st_size, stat.st_mtime, reason, duration_s)
        self.entries[entry.relative] = entry
        self._file.write(json.dumps(entry.__dict__, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
