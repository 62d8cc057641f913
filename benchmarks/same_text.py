"""Whether two builds give the same transcripts: each recording once through a server's `/v1`, one
request at a time (so that no batch mixes requests), written as JSON; then two such files compared.

    python -m benchmarks.same_text --url http://127.0.0.1:6006 --audio DIR --limit 320 --out a.json
    python -m benchmarks.same_text --compare a.json b.json

`--compare` prints how many recordings have the same text in both and lists the others; it exits 1
when any differs or either file lacks a recording the other has.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx

from benchmarks.workload import collect


def transcripts(url: str, files: list[Path], timeout: float = 600.0) -> dict[str, str]:
    """File name -> the text `/v1/audio/transcriptions` answered (or the error, marked as one)."""
    texts = {}
    with httpx.Client(base_url=url, timeout=timeout) as client:
        for path in files:
            with path.open("rb") as f:
                response = client.post("/v1/audio/transcriptions", files={"file": (path.name, f)})
            body = response.json()
            texts[path.name] = body["text"] if response.status_code == 200 else f"error: {body}"
    return texts


def compare(a: dict[str, str], b: dict[str, str]) -> tuple[int, list[str]]:
    """How many recordings have the same text in both, and the names of the others."""
    names = sorted(set(a) | set(b))
    differing = [name for name in names if a.get(name) != b.get(name)]
    return len(names) - len(differing), differing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.same_text", description=__doc__.split("\n")[0])
    p.add_argument("--url", help="an instance or fleet URL")
    p.add_argument("--audio", type=Path, help="a folder of recordings")
    p.add_argument("--limit", type=int, default=None, help="the first N recordings")
    p.add_argument("--out", type=Path)
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    args = p.parse_args(argv)
    if args.compare:
        a, b = (json.loads(path.read_text()) for path in args.compare)
        same, differing = compare(a, b)
        print(f"{same} of {same + len(differing)} recordings have the same text")
        for name in differing:
            print(f"  {name}: {a.get(name)!r} != {b.get(name)!r}")
        return 1 if differing else 0
    if not (args.url and args.audio and args.out):
        p.error("--url, --audio and --out are needed (or --compare A B)")
    files = [recording.path for recording in collect([args.audio], args.limit)]
    args.out.write_text(json.dumps(transcripts(args.url, files), ensure_ascii=False, indent=1))
    print(f"{len(files)} transcripts written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
