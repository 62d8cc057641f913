"""Plot the committed benchmark results: throughput, speed-ups, fleet scaling and GPU memory.

    python -m benchmarks.plot benchmarks/results/one_gpu.json benchmarks/results/fleet.json \
        [more fleet runs, oldest first ...] --out benchmarks/results/benchmarks.png

The last fleet file of each API (Gradio, /v1) gives "one instance" in the throughput panel. Every
fleet file gives a point per fleet it measured, in the order given, so that repeated runs show how
much they vary: filled through nginx, hollow for the same instances at once without it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
TARGETS = {2: 1.9, 4: 3.7}  # a fleet's throughput against one instance (issue 4)


@dataclass(frozen=True)
class FleetPoint:
    """One fleet measured in one run: its speed-up over one instance, through nginx and without."""

    run: str  # the file's short name
    host: str  # "2× H200, 32 CPUs"
    api: str
    instances: int
    via_nginx: float
    direct: float | None  # older runs did not measure the instances at once without nginx


def _level(run: dict, concurrency: int | None = None) -> dict:
    levels = run["levels"]
    return next(lv for lv in levels if concurrency is None or lv["concurrency"] == concurrency)


def _instance_peak(level: dict, prefix: str) -> float:
    peaks = [v for k, v in level["gpu_peak_bytes_by_process"].items() if k.startswith(prefix)]
    return max(peaks) / GIB if peaks else 0.0


def _counted(fleet: dict, config: str) -> dict | None:
    """The run's measurement of `config` that counts: the last one not measured again."""
    kept = [r for r in fleet["runs"] if r["config"] == config and "superseded" not in r]
    return kept[-1] if kept else None


def _one_instance(fleet: dict) -> float:
    """One instance, measured in the fleet run: the mean of every instance alone (older runs: one)."""
    return fleet.get("one_instance_rtfx") or fleet["runs"][0]["levels"][0]["rtfx"]


def _speed_up(fleet: dict, run: dict, single: float) -> float:
    """The mean over the fleet run's rounds where it has several (benchmarks/fleet.py --rounds);
    else against its instances measured alone just before and after it where the run did that,
    else against the run's one instance."""
    rounds = fleet.get("speed_ups", {}).get(run["config"])
    if rounds:
        return rounds["mean"]
    return run.get("vs_alone_around") or run["levels"][0]["rtfx"] / single


def _host(fleet: dict) -> str:
    gpus = fleet["hardware"]["gpus"]
    return f"{len(gpus)}× {gpus[0].removeprefix('NVIDIA ')}, {fleet['hardware']['cpus']} CPUs"


def fleet_points(fleets: list[tuple[str, dict]]) -> list[FleetPoint]:
    """Every fleet that a run measured through nginx, in the order of the files, with the same
    instances at once without nginx where the run measured them."""
    points = []
    for name, fleet in fleets:
        single = _one_instance(fleet)
        for n in (2, 4):
            via = _counted(fleet, f"fleet of {n} via nginx")
            if via is None:
                continue
            direct = _counted(fleet, f"{n} instances at once (direct)")
            points.append(
                FleetPoint(
                    run=name,
                    host=_host(fleet),
                    api=fleet.get("api", "gradio"),
                    instances=n,
                    via_nginx=_speed_up(fleet, via, single),
                    direct=_speed_up(fleet, direct, single) if direct else None,
                )
            )
    return points


def _last_of_each_api(fleets: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The last fleet file given for each API: its "one instance" goes in the throughput panel."""
    last: dict[str, tuple[str, dict]] = {}
    for name, fleet in fleets:
        last[fleet.get("api", "gradio")] = (name, fleet)
    return list(last.values())


def _throughput_panel(ax, one: dict, fleets: list[tuple[str, dict]]) -> None:
    t = one["throughput"]
    names, values, colors = [], [], []
    for c in (1, 8, 32):
        names += [f"baseline\nc={c}", f"ours\nc={c}"]
        values += [_level(t["baseline"], c)["rtfx"], _level(t["ours"], c)["rtfx"]]
        colors += ["#999999", "#1f77b4"]
    names += ["ours /v1\nc=32", "limit\n(ASR only)"]
    values += [_level(t["ours_openai_api"])["rtfx"], t["limit"]["rtfx"]]
    colors += ["#17becf", "#2ca02c"]
    for name, fleet in _last_of_each_api(fleets):
        names.append(f"one\ninstance\n{fleet['api']}\n({_wrap(name)})")
        values.append(_one_instance(fleet))
        colors.append("#ff7f0e")
    ax.bar(names, values, color=colors)
    ax.set_title(
        f"One GPU: audio seconds per wall second\n(blue, green: one GPU of {_host(one)}; orange: fleet runs)"
    )
    ax.set_ylabel("× real time")
    ax.tick_params(axis="x", labelsize=7)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)


def _one_gpu_speed_up_panel(ax, one: dict) -> None:
    t = one["throughput"]
    base32 = _level(t["baseline"], 32)["rtfx"]
    gradio, v1 = _level(t["ours"], 32)["rtfx"], _level(t["ours_openai_api"])["rtfx"]
    labels = ["vs baseline\n(Gradio)", "vs baseline\n(/v1)", "vs limit\n(Gradio)", "vs limit\n(/v1)"]
    speed = [gradio / base32, v1 / base32, gradio / t["limit"]["rtfx"], v1 / t["limit"]["rtfx"]]
    bars = ax.bar(labels, speed, color=["#1f77b4", "#17becf"] * 2)
    for bar, target, value in zip(bars, [8, 8, 0.6, 0.6], speed, strict=True):
        x = bar.get_x()
        ax.hlines(target, x, x + bar.get_width(), colors="red", linestyles="--")
        ax.text(x + bar.get_width() / 2, value, f"{value:.2f}×", ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_title("One GPU, c=32: speed-up\n(red: target)")
    ax.tick_params(axis="x", labelsize=7)


def host_colors(points: list[FleetPoint]) -> dict[str, str]:
    """One colour per host, the same in every panel."""
    hosts = sorted({p.host for p in points})
    palette = ["#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    return {host: palette[i % len(palette)] for i, host in enumerate(hosts)}


def _fleet_panel(ax, points: list[FleetPoint], instances: int, colors: dict[str, str]) -> None:
    """A fleet's speed-up over one instance, run by run: how far it scatters around its target."""
    mine = [p for p in points if p.instances == instances]
    hosts = sorted({p.host for p in mine})
    for x, p in enumerate(mine):
        color = colors[p.host]
        ax.plot(x, p.via_nginx, "o", color=color, markersize=7)
        if p.direct is not None:
            ax.plot(x, p.direct, "o", markerfacecolor="none", markeredgecolor=color, markersize=7)
        ax.annotate(
            f"{p.via_nginx:.2f}",
            (x, p.via_nginx),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=6,
        )
    ax.axhline(TARGETS[instances], color="red", linestyle="--", linewidth=1)
    ax.set_xticks(
        range(len(mine)),
        [f"{p.run} ({p.api})" for p in mine],
        rotation=60,
        ha="right",
        rotation_mode="anchor",
        fontsize=7,
    )
    ax.set_xlim(-0.7, max(len(mine), 1) - 0.3)
    handles = [ax.plot([], [], "o", color=colors[h], label=f"through nginx, {h}")[0] for h in hosts]
    handles.append(
        ax.plot(
            [],
            [],
            "o",
            markerfacecolor="none",
            markeredgecolor="#555555",
            label="the same instances at once, without nginx",
        )[0]
    )
    handles.append(
        ax.axhline(
            TARGETS[instances],
            color="red",
            linestyle="--",
            linewidth=1,
            label=f"target {TARGETS[instances]}×",
        )
    )
    ax.legend(handles=handles, fontsize=7, loc="lower left")
    ax.set_ylabel("× one instance (its instances alone around it)")
    ax.set_title(f"Fleet of {instances} against one instance, run by run (oldest left)")
    ax.grid(axis="y", alpha=0.3)


def _memory_panel(ax, one: dict) -> None:
    t, long = one["throughput"], one["long_recording"]
    names = [
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
    ax.bar(names, mem, color=["#999999", "#1f77b4", "#1f77b4", "#d62728"])
    ax.axhline(4 * 10**9 / GIB, color="red", linestyle="--", label="4 GB target (3 h)")
    for i, v in enumerate(mem):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("peak GPU memory per process, GiB (NVML)")
    ax.set_title("GPU memory")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=7)


def figure(one: dict, fleets: list[tuple[str, dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(20, 12))
    grid = fig.add_gridspec(2, 6, height_ratios=[1, 1.15])
    _throughput_panel(fig.add_subplot(grid[0, 0:3]), one, fleets)
    _one_gpu_speed_up_panel(fig.add_subplot(grid[0, 3]), one)
    _memory_panel(fig.add_subplot(grid[0, 4:6]), one)
    points = fleet_points(fleets)
    colors = host_colors(points)
    _fleet_panel(fig.add_subplot(grid[1, 0:4]), points, 2, colors)
    _fleet_panel(fig.add_subplot(grid[1, 4:6]), points, 4, colors)
    fig.suptitle(
        "Paraformer-large (real sizes, random weights) + fsmn-vad, fp16, no punctuation", fontsize=11
    )
    fig.tight_layout()
    fig.savefig(out, dpi=100)


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
