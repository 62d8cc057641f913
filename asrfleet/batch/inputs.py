"""The recordings a batch covers, largest first, and the output names that mirror their tree."""

from __future__ import annotations

import glob
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from asrfleet.audio import AUDIO_SUFFIXES, probe_duration


@dataclass(frozen=True)
class Item:
    path: Path
    relative: Path  # where its outputs go under --out, without the format suffix
    size: int
    duration_s: float | None  # from the file's header; None when it cannot be read


def expand(inputs: list[str]) -> list[Path]:
    """Files, folders (recursively) and glob patterns, each file once."""
    found: list[Path] = []
    for spec in inputs:
        matches = sorted(glob.glob(spec, recursive=True)) if glob.has_magic(spec) else [spec]
        if not matches:
            raise FileNotFoundError(f"nothing matches {spec!r}")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                found += sorted(
                    p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                )
            elif path.is_file():
                found.append(path)
            else:
                raise FileNotFoundError(f"no such file or folder: {match}")
    return list(dict.fromkeys(p.resolve() for p in found))


def items(inputs: list[str]) -> list[Item]:
    paths = expand(inputs)
    if not paths:
        return []
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    with ThreadPoolExecutor(8) as pool:
        durations = list(pool.map(probe_duration, paths))
    relatives = _output_names([p.relative_to(root) for p in paths])
    result = [Item(p, r, p.stat().st_size, d) for p, r, d in zip(paths, relatives, durations, strict=True)]
    # Largest first: a 3-hour file started last would hold up the end of the whole batch.
    return sorted(result, key=lambda i: (-(i.duration_s or 0.0), -i.size, str(i.relative)))


def _output_names(relatives: list[Path]) -> list[Path]:
    """meeting.mp3 -> meeting; but a.mp3 and a.wav side by side keep their suffixes apart."""
    stems = [r.with_suffix("") for r in relatives]
    clashes = {s for s in stems if stems.count(s) > 1}
    return [r if s in clashes else s for r, s in zip(relatives, stems, strict=True)]
