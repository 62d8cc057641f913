"""Plot the current benchmark results (the files of benchmarks/results/) into one figure.

    python -m benchmarks.plot [--results benchmarks/results] [--out benchmarks/results/benchmarks.png]

Top: one GPU, one instance (`one_gpu.json`, `one_gpu_plain_paraformer.json`, `limit.json`): its
throughput by concurrency against the blog-style baseline, both model classes at c=32 beside the
ASR-only limit, and the speed-ups against their targets. Bottom: the fleets (`fleet_x2.json`,
`fleet_x4.json`) against one instance, through nginx and without it, their throughput, and the
GPU memory of a 3-hour recording.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
FLEET_TARGETS = {2: 1.9, 4: 3.7}  # a fleet's throughput against one instance
BASELINE_TARGET, LIMIT_TARGET = 8.0, 0.6  # one GPU at c=32: ours against the baseline, the limit
MEMORY_TARGET_GB = 4.0  # a 3-hour recording's peak GPU memory, fp16

GREY, BLUE, CYAN, GREEN, ORANGE, RED = "#999999", "#1f77b4", "#17becf", "#2ca02c", "#ff7f0e", "#d62728"
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class FleetPoint:
    """One fleet measured in one run: its speed-up over one instance, through nginx and without."""

    run: str  # the file's short name
    host: str  # "2× H200, 32 CPUs"
    api: str
    instances: int
    via_nginx: float
    direct: float | None  # older runs did not measure the instances at once without nginx
    rtfx: float = 0.0  # the fleet through nginx, × real time
    one_instance: float = 0.0  # the run's mean instance alone, × real time


def _level(run: dict, concurrency: int | None = None) -> dict:
    levels = run["levels"]
    return next(lv for lv in levels if concurrency is None or lv["concurrency"] == concurrency)


def _instance_peak(level: dict, prefix: str) -> float:
    peaks = [v for k, v in level["gpu_peak_bytes_by_process"].items() if k.startswith(prefix)]
    return max(peaks) / 1e9 if peaks else 0.0


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
                    rtfx=via["levels"][0]["rtfx"],
                    one_instance=single,
                )
            )
    return points


@dataclass(frozen=True)
class Results:
    """The current results, one file per benchmark."""

    one_gpu: dict  # BiCifParaformer, the model the instances serve
    plain: dict  # the same run with plain Paraformer on every side
    limit: dict  # the limit alone, several passes, both classes
    fleets: list[tuple[str, dict]]

    @classmethod
    def read(cls, folder: Path) -> Results:
        def read(name: str) -> dict:
            return json.loads((folder / name).read_text())

        fleets = [(name, read(f"{name}.json")) for name in ("fleet_x2", "fleet_x4")]
        return cls(read("one_gpu.json"), read("one_gpu_plain_paraformer.json"), read("limit.json"), fleets)


def _labels(ax, bars, fmt: str = "{:.0f}", size: int = 8) -> None:
    for bar in bars:
        value = bar.get_height()
        x = bar.get_x() + bar.get_width() / 2
        ax.text(x, value, fmt.format(value), ha="center", va="bottom", fontsize=size)


def _class_legend(ax, extra: list | None = None, loc: str = "upper left") -> None:
    """Solid bars: BiCifParaformer; hatched: plain Paraformer (whatever their colour)."""
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor="white", edgecolor="black", label="BiCifParaformer (served, with timestamps)"),
        Patch(facecolor="white", edgecolor="black", hatch="//", label="plain Paraformer"),
        *(extra or []),
    ]
    ax.legend(handles=handles, fontsize=7, loc=loc)


def _concurrency_panel(ax, one: dict) -> None:
    """Ours (Gradio API) against the baseline at each concurrency, and ours through /v1 at the top."""
    t = one["throughput"]
    levels = [lv["concurrency"] for lv in t["ours"]["levels"]]
    width = 0.38
    xs = range(len(levels))
    base = [_level(t["baseline"], c)["rtfx"] for c in levels]
    ours = [_level(t["ours"], c)["rtfx"] for c in levels]
    _labels(ax, ax.bar([x - width / 2 for x in xs], base, width, color=GREY, label="baseline (Gradio API)"))
    _labels(ax, ax.bar([x + width / 2 for x in xs], ours, width, color=BLUE, label="ours, Gradio API"))
    top = len(levels)
    v1 = _level(t["ours_openai_api"])["rtfx"]
    _labels(ax, ax.bar([top], [v1], width, color=CYAN, label="ours, /v1 (OpenAI API)"))
    ax.set_xticks([*xs, top], [f"c={c}" for c in levels] + [f"c={max(levels)}, /v1"])
    ax.set_ylabel("audio seconds per wall second (× real time)")
    ax.set_title(f"One instance on one GPU ({_host(one)}),\nby concurrency: BiCifParaformer")
    ax.legend(fontsize=8, loc="upper left")


def _model_class_panel(ax, results: Results) -> None:
    """At c=32, both model classes: baseline, ours through either API, and the limit (FunASR's
    generate, measured beside ours; and its warm pass, measured alone)."""
    names = ["baseline", "ours,\nGradio API", "ours,\n/v1", "limit\n(1st pass)", "limit\n(3rd pass)"]
    colors = [GREY, BLUE, CYAN, GREEN, GREEN]
    width = 0.38
    for offset, (run, cls, hatch) in enumerate(
        ((results.one_gpu, "BiCifParaformer", ""), (results.plain, "Paraformer", "//"))
    ):
        t = run["throughput"]
        same = [r for r in results.limit["runs"] if r["model"].startswith(cls + ",")]
        warm = next(r for r in same if r["files"] == 320)  # the utterances of the run beside it
        values = [
            _level(t["baseline"], 32)["rtfx"],
            _level(t["ours"], 32)["rtfx"],
            _level(t["ours_openai_api"])["rtfx"],
            t["limit"]["rtfx"],
            warm["passes"][-1]["rtfx"],
        ]
        xs = [i + (offset - 0.5) * width for i in range(len(names))]
        bars = ax.bar(xs, values, width, color=colors, hatch=hatch, edgecolor="white")
        _labels(ax, bars, size=7)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("× real time (log)")
    ax.set_title(
        "One GPU, c=32: the baseline, ours and the limit\n(FunASR's generate, ASR alone), both model classes"
    )
    _class_legend(ax)


def _speed_up_panel(ax, results: Results) -> None:
    """Ours against the baseline and the limit at c=32, both classes, against the targets."""
    groups = ["vs baseline,\nGradio API", "vs baseline,\n/v1", "vs limit,\nGradio API", "vs limit,\n/v1"]
    targets = [BASELINE_TARGET, BASELINE_TARGET, LIMIT_TARGET, LIMIT_TARGET]
    width = 0.38
    for offset, (run, hatch) in enumerate(((results.one_gpu, ""), (results.plain, "//"))):
        s = run["throughput"]["summary"]
        values = [
            s["ours"]["vs_baseline"],
            s["ours_openai_api"]["vs_baseline"],
            s["ours"]["vs_limit"],
            s["ours_openai_api"]["vs_limit"],
        ]
        xs = [i + (offset - 0.5) * width for i in range(len(groups))]
        bars = ax.bar(xs, values, width, color=[BLUE, CYAN] * 2, hatch=hatch, edgecolor="white")
        _labels(ax, bars, "{:.2f}×", size=7)
    for i, target in enumerate(targets):
        ax.hlines(target, i - width, i + width, colors=RED, linestyles="--")
    (line,) = ax.plot([], [], "--", color=RED, label="target: ≥ 8× the baseline, ≥ 0.6× the limit")
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_yscale("log")
    ax.set_title("One GPU, c=32: ours against the baseline and the limit\n(each side the same model class)")
    _class_legend(ax, [line], loc="upper right")


def _fleet_labels(points: list[FleetPoint]) -> list[str]:
    return [f"fleet of {p.instances}\n{p.host}\n({p.run}.json)" for p in points]


def _inside(ax, bars, fmt: str) -> None:
    """Each bar's value just under its top, clear of the target lines above it."""
    for bar in bars:
        value = bar.get_height()
        if value:
            x = bar.get_x() + bar.get_width() / 2
            ax.text(x, value * 0.97, fmt.format(value), ha="center", va="top", fontsize=8, color="black")


def _fleet_panel(ax, points: list[FleetPoint]) -> None:
    """Each fleet against its instances alone around it, through nginx and without, and its target."""
    width = 0.38
    xs = range(len(points))
    via = ax.bar([x - width / 2 for x in xs], [p.via_nginx for p in points], width, color=ORANGE)
    direct = [p.direct or 0.0 for p in points]
    without = ax.bar([x + width / 2 for x in xs], direct, width, color="#fdbf6f")
    _inside(ax, via, "{:.2f}×")
    _inside(ax, without, "{:.2f}×")
    for x, p in zip(xs, points, strict=True):
        ax.hlines(FLEET_TARGETS[p.instances], x - width, x + width, colors=RED, linestyles="--")
    via.set_label("through nginx")
    without.set_label("the same instances at once, without nginx")
    ax.plot([], [], "--", color=RED, label="target: 1.9× (2 instances), 3.7× (4)")
    ax.set_xticks(list(xs), _fleet_labels(points), fontsize=8)
    ax.set_ylabel("× one instance (its instances alone around it)")
    ax.set_title("Fleets against one instance: /v1, 32 clients an instance")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_ylim(0, max([p.via_nginx for p in points] + [4.0]) * 1.15)


def _fleet_throughput_panel(ax, points: list[FleetPoint]) -> None:
    width = 0.38
    xs = range(len(points))
    single = ax.bar([x - width / 2 for x in xs], [p.one_instance for p in points], width, color=BLUE)
    fleet = ax.bar([x + width / 2 for x in xs], [p.rtfx for p in points], width, color=ORANGE)
    _labels(ax, single)
    _labels(ax, fleet)
    single.set_label("one instance (mean alone)")
    fleet.set_label("the fleet through nginx")
    ax.set_xticks(list(xs), _fleet_labels(points), fontsize=8)
    ax.set_ylabel("× real time")
    ax.set_title("Fleets: throughput through /v1")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_ylim(0, max([p.rtfx for p in points] + [1.0]) * 1.15)


def _memory_panel(ax, one: dict) -> None:
    t, long = one["throughput"], one["long_recording"]
    names = [
        "baseline, c=32\n(its process)",
        "ours, c=32, Gradio API\n(engine process)",
        "ours, one 3-hour\nrecording",
    ]
    mem = [
        _instance_peak(_level(t["baseline"], 32), "-m benchmarks.baseline_app"),
        _instance_peak(_level(t["ours"], 32), "asr-bench"),
        _instance_peak(long["levels"][0], "asr-long"),
    ]
    _inside(ax, ax.bar(names, mem, color=[GREY, BLUE, BLUE]), "{:.2f} GB")
    bound = "4 GB bound for a 3-hour recording"
    ax.hlines(MEMORY_TARGET_GB, 1.6, 2.4, colors=RED, linestyles="--", label=bound)
    ax.set_ylabel("peak GPU memory, GB (NVML, CUDA context included)")
    ax.set_title("GPU memory, fp16, one H200")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_ylim(0, max(mem + [MEMORY_TARGET_GB]) * 1.25)
    ax.tick_params(axis="x", labelsize=8)


def figure(results: Results, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(18, 10.5))
    _concurrency_panel(axes[0][0], results.one_gpu)
    _model_class_panel(axes[0][1], results)
    _speed_up_panel(axes[0][2], results)
    points = fleet_points(results.fleets)
    _fleet_panel(axes[1][0], points)
    _fleet_throughput_panel(axes[1][1], points)
    _memory_panel(axes[1][2], results.one_gpu)
    fig.suptitle(
        "Paraformer-large at its real sizes (random weights) + fsmn-vad, fp16, no punctuation; "
        "the 320 (one GPU) and 500 (fleets) utterances of one aishell speaker",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=RESULTS, help="the folder of result files")
    p.add_argument("--out", type=Path, default=RESULTS / "benchmarks.png")
    args = p.parse_args(argv)
    figure(Results.read(args.results), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
