"""Plot the committed benchmark results: throughput, speed-up and GPU memory per configuration.

    python -m benchmarks.plot benchmarks/results/one_gpu.json benchmarks/results/fleet.json \
        [more fleet runs ...] --out benchmarks/results/benchmarks.png

The first fleet file of each API (Gradio, /v1) gives "one instance" in the throughput panel;
every fleet file gives its fleets' speed-ups, so that repeated runs show how much they vary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

GIB = 2**30


def _level(run: dict, concurrency: int | None = None) -> dict:
    levels = run["levels"]
    return next(lv for lv in levels if concurrency is None or lv["concurrency"] == concurrency)


def _instance_peak(level: dict, prefix: str) -> float:
    peaks = [v for k, v in level["gpu_peak_bytes_by_process"].items() if k.startswith(prefix)]
    return max(peaks) / GIB if peaks else 0.0


def _fleet_runs(fleets: list[tuple[str, dict]]) -> list[tuple[str, dict, dict]]:
    """(name, fleet file, run) of every counted fleet measurement (not one instance through
    nginx, not one measured again)."""
    return [
        (name, fleet, run)
        for name, fleet in fleets
        for run in fleet["runs"]
        if run["config"].startswith("fleet of") and "superseded" not in run
    ]


def _first_of_each_api(fleets: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The first fleet file given for each API: its "one instance" goes in the throughput panel."""
    first: dict[str, tuple[str, dict]] = {}
    for name, fleet in fleets:
        first.setdefault(fleet.get("api", "gradio"), (name, fleet))
    return list(first.values())


def _one_instance(fleet: dict) -> float:
    """One instance, measured in the fleet run: the mean of every instance alone (older runs: one)."""
    return fleet.get("one_instance_rtfx") or fleet["runs"][0]["levels"][0]["rtfx"]


def _fleet_speed_up(run: dict, single: float) -> float:
    """Against its instances measured alone just before and after it where the run did that
    (benchmarks/fleet.py), else against the run's one instance."""
    return run.get("vs_alone_around") or run["levels"][0]["rtfx"] / single


def figure(one: dict, fleets: list[tuple[str, dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = one["throughput"]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(19, 6.8))
    gpu = one["hardware"]["gpus"][0]

    names, values, colors = [], [], []
    for c in (1, 8, 32):
        names += [f"baseline\nc={c}", f"ours\nc={c}"]
        values += [_level(t["baseline"], c)["rtfx"], _level(t["ours"], c)["rtfx"]]
        colors += ["#999999", "#1f77b4"]
    names += ["ours /v1\nc=32", "limit\n(ASR only)"]
    values += [_level(t["ours_openai_api"])["rtfx"], t["limit"]["rtfx"]]
    colors += ["#17becf", "#2ca02c"]
    for name, fleet in _first_of_each_api(fleets):
        names.append(f"one\ninstance\n{fleet['api']}\n({_wrap(name)})")
        values.append(_one_instance(fleet))
        colors.append("#ff7f0e")
    ax1.bar(names, values, color=colors)
    ax1.set_title(f"One {gpu}: audio seconds per wall second")
    ax1.set_ylabel("× real time")
    ax1.tick_params(axis="x", labelsize=7)
    for i, v in enumerate(values):
        ax1.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)

    labels = [
        "ours / baseline\nc=32 (Gradio)",
        "ours / baseline\nc=32 (/v1)",
        "ours / limit\n(Gradio)",
        "ours / limit\n(/v1)",
    ]
    base32 = _level(t["baseline"], 32)["rtfx"]
    speed = [
        _level(t["ours"], 32)["rtfx"] / base32,
        _level(t["ours_openai_api"])["rtfx"] / base32,
        _level(t["ours"], 32)["rtfx"] / t["limit"]["rtfx"],
        _level(t["ours_openai_api"])["rtfx"] / t["limit"]["rtfx"],
    ]
    targets = [8, 8, 0.6, 0.6]
    for name, fleet, run in _fleet_runs(fleets):
        labels.append(f"{run['instances']} / 1, {name} ({fleet['api']})")
        speed.append(_fleet_speed_up(run, _one_instance(fleet)))
        targets.append(3.7 if run["instances"] == 4 else 1.9)
    bars = ax2.bar(
        labels, speed, color=["#1f77b4", "#17becf", "#1f77b4", "#17becf"] + ["#ff7f0e"] * (len(labels) - 4)
    )
    for bar, target, value in zip(bars, targets, speed, strict=True):
        x = bar.get_x()
        ax2.hlines(target, x, x + bar.get_width(), colors="red", linestyles="--")
        ax2.text(x + bar.get_width() / 2, value, f"{value:.2f}×", ha="center", va="bottom", fontsize=8)
    ax2.set_yscale("log")
    ax2.set_title("Speed-up (red: target)")
    ax2.tick_params(axis="x", labelsize=7)
    # fleet bars: "N / 1" is the fleet of N against one instance, then the run's file and its API
    plt.setp(ax2.get_xticklabels(), rotation=60, ha="right", rotation_mode="anchor")

    long = one["long_recording"]
    mem_names = [
        "baseline\n(per request)",
        "ours, throughput\nrun",
        "ours, 3 h\nrecording (fp16)",
        "FunASR 60 min\n(FACTS.md)",
    ]
    mem = [
        _instance_peak(_level(t["baseline"], 32), "-m benchmarks.baseline_app"),
        _instance_peak(_level(t["ours"], 32), "asr-bench"),
        _instance_peak(long["levels"][0], "asr-long"),
        5.44,
    ]
    ax3.bar(mem_names, mem, color=["#999999", "#1f77b4", "#1f77b4", "#d62728"])
    ax3.axhline(4 * 10**9 / GIB, color="red", linestyle="--", label="4 GB target (3 h)")
    for i, v in enumerate(mem):
        ax3.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax3.set_ylabel("peak GPU memory per process, GiB (NVML)")
    ax3.set_title("GPU memory")
    ax3.legend(fontsize=8)
    ax3.tick_params(axis="x", labelsize=8)
    fig.suptitle(
        "Paraformer-large (real sizes, random weights) + fsmn-vad, fp16, no punctuation; "
        f"{len(one['hardware']['gpus'])}× {gpu}, {one['hardware']['cpus']} CPUs",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def _wrap(name: str, width: int = 8) -> str:
    """A run's name over several lines, broken after underscores, for a narrow bar."""
    lines = [""]
    for part in name.split("_"):
        piece = part if not lines[-1] else "_" + part
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append(part)
        else:
            lines[-1] += piece
    return "\n".join(lines)


def _run_name(path: Path) -> str:
    """A short bar label: the file's name less "fleet_" (fleet_x2_v1.json: "x2_v1")."""
    return path.stem.removeprefix("fleet_") if path.stem != "fleet" else path.name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plot")
    p.add_argument("one_gpu", type=Path)
    p.add_argument("fleet", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    fleets = [(_run_name(path), json.loads(path.read_text())) for path in args.fleet]
    figure(json.loads(args.one_gpu.read_text()), fleets, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
