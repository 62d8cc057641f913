"""Several GPUs: the fleet through nginx against one instance, started by the real launcher.

    python -m benchmarks.fleet --audio DIR --vad-model DIR --gpus 2 --api openai --out OUT.json

One fleet of N instances (one per GPU) is started and warmed up: the distinct recordings go
through nginx to all instances at once until a pass records no new CUDA graph anywhere (the first
batch of a new shape records one, about 0.1 s; the measurements are of the steady state). Then:

* every instance alone, directly on its port, at concurrency C;
* the fleet through nginx at C x N; the same instances at once without nginx, the clients split
  evenly over their ports (so the host's share of a fleet's loss shows apart from nginx's); then
  every instance alone again; this round --rounds times, whose speed-ups are averaged (two
  measurements of the same configuration one after the other can differ by up to 12 %);
* for N = 4 the fleet is then reconciled to 2 instances, measured at C x 2 (through nginx, then
  directly), and instances 0 and 1 measured alone again; then it is reconciled to 1 and measured
  through nginx at C (what the nginx hop costs).

One instance's throughput is the mean of every measurement of an instance alone: on a shared host the
instances differ (by up to 30 %, from where the scheduler put their processes), and a fleet is the
sum of its instances. Each fleet is compared with its members measured alone just before and just
after it ("vs_alone_around"): the host's speed drifts over minutes (the audio workers have needed
37 ms of CPU per transcription in the first measurements of a run and 32.5 ms in its last, the same
work), and measurements on both sides of the fleet cancel a steady drift. "vs_one_instance"
compares with the mean of every measurement alone in the run.

The same recordings everywhere, repeated --repeat times per instance, so that every measurement
lasts about as long (a short one weighs its ramp at start and end more). Each measurement
follows an uncounted warm-up (--warm-up x its concurrency requests, again while they record a
new CUDA graph, up to 3 times). A workload's rarer batch shapes keep bringing new CUDA graphs for
thousands of requests, and each one recorded inside a measurement costs it about 0.75 %; the
default, 40 requests a client, leaves few of them inside (with 4, the first measurements alone
recorded 10-22 and ran 8 % slower than the last ones, which flattered the fleet's ratio). Each
measurement reports the CPU seconds of every role
(`benchmarks/cpu.py`) and what each instance's GPU thread did, counted from the moment every
client process is ready.

A measurement is repeated, up to --retries times, when something other than the configuration
set its figure: the hypervisor took more than --max-steal of the host's CPU time (these hosts are
virtual machines that share physical CPUs with other tenants; /proc/stat's steal), or the instances
recorded more than --max-graphs CUDA graphs (default 0; a recording is a one-time cost of a new
batch shape, which warm-ups do not always exhaust). The disturbed one stays in the JSON, marked
"superseded" with the reason, and counts for nothing; the last attempt counts whatever it met.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from asrfleet.fleet.plan import FleetOptions
from asrfleet.testing.random_models import built_paraformer
from benchmarks import cpu, load
from benchmarks.one_gpu import load_stats
from benchmarks.servers import exit_on_sigterm
from benchmarks.workload import collect, total_s

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Ports:
    """Where the fleet under test listens: the launcher's --base-port and --lb-port (its defaults
    here; others where those ports are taken, as in CI's smoke run)."""

    base: int = FleetOptions.base_port  # instance i listens on base + i
    lb: int = FleetOptions.lb_port  # nginx

    def instance(self, i: int) -> str:
        return f"http://127.0.0.1:{self.base + i}"

    @property
    def nginx(self) -> str:
        return f"http://127.0.0.1:{self.lb}"


def launcher(*args: str) -> str:
    result = subprocess.run([sys.executable, "launcher.py", *args], cwd=REPO, capture_output=True, text=True)
    print(result.stdout[-1500:], result.stderr[-1500:], flush=True)
    if result.returncode != 0:
        raise RuntimeError(f"launcher {args[:1]} exited {result.returncode}")
    return result.stdout


def instance_stats(members: list[int], ports: Ports) -> list[dict]:
    """Each instance's engine counters (cumulative), from its `GET /stats`."""
    return [load_stats(ports.instance(i)) for i in members]


def engine_deltas(before: list[dict], after: list[dict], wall_s: float) -> list[dict]:
    """What each instance's GPU thread did during one measurement (batches, mean size, busy share),
    how busy its host thread was turning batches into text, and the mean time a request spent in
    each of its engine's stages."""
    out = []
    for b, a in zip(before, after, strict=True):
        batches = a["batches"] - b["batches"]
        segments = a["segments"] - b["segments"]
        busy = a["gpu_busy_s"] - b["gpu_busy_s"]
        out.append(
            {
                "batches": batches,
                "mean_batch": round(segments / batches, 1) if batches else 0.0,
                "gpu_thread_busy_share": round(busy / wall_s, 3) if wall_s else 0.0,
                "host_thread_busy_share": _share(a, b, "host_busy_s", wall_s),
                # the GPU thread's CPU milliseconds a batch: up where its CPU is slower
                "gpu_thread_cpu_ms_per_batch": _per_batch_ms(a, b, "gpu_thread_cpu_s", batches),
                # the GPU's own time (gpu_clock.py): working, idle mid-batch for the host's CIF,
                # idle between batches
                "gpu_work_share": _share(a, b, "gpu_work_s", wall_s),
                "gpu_cif_wait_share": _share(a, b, "gpu_cif_wait_s", wall_s),
                "gpu_between_share": _share(a, b, "gpu_between_s", wall_s),
                "graphs_recorded": a.get("cuda_graphs", 0) - b.get("cuda_graphs", 0),
                "graphs_in_all": a.get("cuda_graphs", 0),
                "eager_batches": a.get("eager_batches", 0) - b.get("eager_batches", 0),
                "graphs_borrowed": a.get("graphs_borrowed", 0) - b.get("graphs_borrowed", 0),
                "stage_ms_per_request": stage_ms(b.get("stage_s"), a.get("stage_s")),
                # the garbage collector's pauses in the engine process (`asrfleet/gc_pauses.py`)
                "gc_pause_ms": _ms(a, b, "gc_pause_s"),
                "gc_full_collections": _count(a, b, "gc_full_collections"),
            }
        )
    return out


def _count(after: dict, before: dict, key: str) -> int | None:
    return after[key] - before.get(key, 0) if key in after else None


def _share(after: dict, before: dict, key: str, wall_s: float) -> float | None:
    if key not in after or not wall_s:
        return None  # an engine from before the key existed
    return round((after[key] - before.get(key, 0.0)) / wall_s, 3)


def _ms(after: dict, before: dict, key: str) -> float | None:
    return _per_batch_ms(after, before, key, 1)


def _per_batch_ms(after: dict, before: dict, key: str, batches: int) -> float | None:
    if key not in after or not batches:
        return None
    return round(1000 * (after[key] - before.get(key, 0.0)) / batches, 2)


def stage_ms(before: dict | None, after: dict | None) -> dict[str, float]:
    """Mean milliseconds a request spent in each of the engine's stages during a measurement
    (the transcriber's stage_s); empty for engines that do not report them."""
    if not before or not after or after["requests"] <= before["requests"]:
        return {}
    requests = after["requests"] - before["requests"]
    stages = [key for key in after if key != "requests"]
    return {stage: round(1000 * (after[stage] - before[stage]) / requests, 1) for stage in stages}


def graph_counts(members: list[int], ports: Ports) -> list[int]:
    return [stats.get("cuda_graphs", 0) for stats in instance_stats(members, ports)]


def warm_up(
    members: list[int],
    ports: Ports,
    url: str | list[str],
    recordings: list,
    concurrency: int,
    procs: int,
    api: str,
    passes: int,
) -> list[int]:
    """Send the recordings at `concurrency`, again while a pass records a new CUDA graph in any
    member (at most `passes` passes); the graphs each member recorded.

    Before every measurement too: a configuration meets batch shapes that the others did not (an
    instance's batches alone differ from its batches in the fleet), and each recording costs about
    0.1 s, 1-2 % of a measurement (5 to 11 of them have come in the first measurements alone,
    after the fleet's warm-up)."""
    first = graph_counts(members, ports)
    for _ in range(passes):
        before = graph_counts(members, ports)
        load.run(url, recordings, [concurrency], api=api, procs=procs)
        if graph_counts(members, ports) == before:
            break
    return [after - start for after, start in zip(graph_counts(members, ports), first, strict=True)]


def warm_up_set(workload: list, users: int, per_client: int) -> list:
    """What a measurement's warm-up sends: `per_client` requests for each of its `users` clients,
    taken in order from the measurement's own workload, and never more than that workload."""
    return workload[: per_client * users]


def disturbance(run: dict, max_steal: float, max_graphs: int) -> str | None:
    """Why a measurement does not show the steady state, or None: the hypervisor took more than
    `max_steal` of the host's CPU time, or its instances recorded more than `max_graphs` CUDA
    graphs in all (each stalls its instance's GPU thread about 0.1 s, 2-3 % of a 4-second
    measurement: first measurements alone that recorded up to 6 have run up to 17 % slower than
    the same instance's later ones)."""
    stolen = run["cpu_s"]["host_steal_share"]
    if stolen > max_steal:
        return f"the hypervisor took {stolen:.1%} of the host's CPU time (limit {max_steal:.1%})"
    recorded = sum(engine.get("graphs_recorded", 0) for engine in run.get("engines", []))
    if recorded > max_graphs:
        return f"the instances recorded {recorded} CUDA graphs (limit {max_graphs})"
    return None


def summarise(result: dict) -> None:
    """One instance's throughput (the mean of every instance alone; see above) and each run's
    ratio to it and to its members measured alone around it. A run measured again (another tenant
    took the host's CPUs) counts for nothing."""
    counted = [r for r in result["runs"] if "superseded" not in r]
    alone = [r["levels"][0]["rtfx"] for r in counted if alone_instance(r) is not None]
    single = sum(alone) / len(alone) if alone else 0.0
    if single <= 0:
        return  # every request failed: the runs say why
    result["one_instance_rtfx"] = round(single, 1)
    result["one_instance_spread"] = [round(min(alone), 1), round(max(alone), 1)]
    for run in result["runs"]:
        run["vs_one_instance"] = round(run["levels"][0]["rtfx"] / single, 3)
    for position, run in enumerate(result["runs"]):
        if alone_instance(run) is not None or "superseded" in run:
            continue
        around = alone_around(result["runs"], position)
        if around > 0:
            run["alone_around_rtfx"] = round(around, 1)
            run["vs_alone_around"] = round(run["levels"][0]["rtfx"] / around, 3)
    result["speed_ups"] = speed_ups(counted)


def speed_ups(runs: list[dict]) -> dict[str, dict]:
    """Each configuration's speed-up against its members alone around it: the mean over the rounds
    (--rounds), and each round's."""
    each: dict[str, list[float]] = {}
    for run in runs:
        if "vs_alone_around" in run:
            each.setdefault(run["config"], []).append(run["vs_alone_around"])
    return {config: {"mean": round(sum(v) / len(v), 3), "each": v} for config, v in each.items()}


def alone_instance(run: dict) -> int | None:
    """The instance a run measured alone, directly on its port; None for runs through nginx."""
    words = run["config"].split()
    if run["config"].endswith("alone (direct)") and words[0] == "instance":
        return int(words[1])
    return None


def alone_around(runs: list[dict], position: int) -> float:
    """One instance's throughput next to runs[position]: for each of its members, the mean of its
    last measurement alone before it and its first after it (one side where the other is
    missing); then their mean. 0.0 where no member was measured alone."""
    members = range(runs[position].get("instances", 1))
    counted = [(i, r) for i, r in enumerate(runs) if "superseded" not in r]
    means = []
    for member in members:
        own = [(i, r["levels"][0]["rtfx"]) for i, r in counted if alone_instance(r) == member]
        before = [rtfx for i, rtfx in own if i < position][-1:]
        after = [rtfx for i, rtfx in own if i > position][:1]
        sides = before + after
        if sides:
            means.append(sum(sides) / len(sides))
    return sum(means) / len(means) if means else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fleet")
    p.add_argument("--audio", type=Path, required=True)
    p.add_argument("--vad-model", type=Path, required=True)
    p.add_argument("--nginx", default="nginx")
    p.add_argument(
        "--base-port", type=int, default=Ports.base, help="the launcher's --base-port (instance i on it + i)"
    )
    p.add_argument("--lb-port", type=int, default=Ports.lb, help="the launcher's --lb-port (nginx)")
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--per-instance-concurrency", type=int, default=32)
    p.add_argument(
        "--api",
        choices=("gradio", "openai"),
        default="gradio",
        help="the Gradio event (the browser's and gradio_client's) or /v1 (batch jobs')",
    )
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--procs", type=int, default=8)
    p.add_argument("--size", choices=("large", "tiny"), default="large")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--work", type=Path, default=Path("/tmp/asr-bench"))
    p.add_argument(
        "--max-steal",
        type=float,
        default=0.01,
        help="measure again when the hypervisor took more than this share of the host's CPU time",
    )
    p.add_argument(
        "--max-graphs",
        type=int,
        default=0,
        help="measure again when the instances recorded more than this many CUDA graphs in all "
        "during a measurement (default 0: the measurements are of the steady state)",
    )
    p.add_argument(
        "--instance-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="pass this option to the launcher for every instance, e.g. --instance-option=--per-gpu=2 "
        "(repeatable)",
    )
    p.add_argument(
        "--no-pin-cpus",
        action="store_true",
        help="the launcher's --no-pin-cpus: every instance on every CPU (default: each on its own block)",
    )
    p.add_argument(
        "--warm-up",
        type=int,
        default=40,
        help="requests per client sent before each measurement, uncounted (again while they record "
        "a CUDA graph, up to 3 times), so that few recordings fall inside the measurement (default "
        "40)",
    )
    p.add_argument("--retries", type=int, default=2, help="at most this many repeats of one measurement")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure the fleet (through nginx, then without) this many times, each followed by every "
        "instance alone; the speed-ups are the means over the rounds (default 1)",
    )
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.warm_up < 1:
        p.error("--warm-up must be at least 1 request per client")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.procs % args.gpus or (args.gpus >= 4 and args.procs % 2):
        p.error(
            "--procs must be a multiple of --gpus (and of 2 from 4 GPUs), so that the measurements "
            "without nginx give every instance as many client processes"
        )
    exit_on_sigterm()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    model = built_paraformer(args.work, args.size)
    distinct = collect([args.audio])
    recordings = distinct * args.repeat
    run_dir = args.work / "fleet-run"
    ports = Ports(args.base_port, args.lb_port)
    common = [
        "--run-dir",
        str(run_dir),
        "--base-port",
        str(ports.base),
        "--lb-port",
        str(ports.lb),
        "--model",
        str(model),
        "--vad-model",
        str(args.vad_model),
        "--no-punc",
        "--nginx",
        args.nginx,
        "--max-queue",
        "1024",
        "--device",
        args.device,
    ]
    if args.device == "cuda":
        common.append("--fp16")
    if args.no_pin_cpus:
        common.append("--no-pin-cpus")
    common += args.instance_option
    c = args.per_instance_concurrency
    result = {
        "command": shlex.join(
            ["python", "-m", "benchmarks.fleet", *(argv if argv is not None else sys.argv[1:])]
        ),
        "code": load.code_version(REPO),
        "hardware": {**load.hardware(), "topology": cpu.topology()},
        "files_per_instance": len(recordings),
        "audio_s_per_instance": round(total_s(recordings), 1),
        "per_instance_concurrency": c,
        "warm_up_per_client": args.warm_up,
        "api": args.api,
        "instance_options": args.instance_option,
        "pin_cpus": not args.no_pin_cpus,
        "runs": [],
    }

    def measure(config: str, members: list[int], url: str | list[str]) -> None:
        users = c * len(members)
        workload = recordings * len(members)
        sent = warm_up_set(workload, users, args.warm_up)
        graphs = warm_up(members, ports, url, sent, users, args.procs, args.api, passes=3)
        for attempt in range(1 + args.retries):
            run = measure_once(config, members, url, users, workload)
            run["warm_up_graphs"] = graphs
            result["runs"].append(run)
            print(f"{config}: {run['levels'][0]['rtfx']}x real time", flush=True)
            why = disturbance(run, args.max_steal, args.max_graphs)
            if why is None or attempt == args.retries:
                return
            run["superseded"] = f"{why}: measured again"
            print(f"{config}: {run['superseded']}", flush=True)

    def measure_once(
        config: str, members: list[int], url: str | list[str], users: int, workload: list
    ) -> dict:
        start: dict = {}

        def started() -> None:  # as the clients start, after their processes have imported
            start["stats"], start["cpu"] = instance_stats(members, ports), cpu.snapshot()
            start["at"] = time.time()

        measured = load.run(url, workload, [users], api=args.api, procs=args.procs, on_start=started)
        cpu_after = cpu.snapshot()
        before, cpu_before = start["stats"], start["cpu"]
        cpu_used = cpu.used(cpu_before, cpu_after)
        clients = measured["levels"][0]["client_cpu_s"]  # their imports excluded (see cpu.py)
        cpu_used["load generator"] = round(cpu_used["load generator"] + clients, 1)
        wall = measured["levels"][0]["wall_s"]
        run = {"config": config, "instances": len(members), **measured}
        # when, by the host's clock: to match a profile taken meanwhile (py-spy) to its measurement
        run["unix_time"] = [round(start["at"], 1), round(time.time(), 1)]
        run["engines"] = engine_deltas(before, instance_stats(members, ports), wall)
        run["cpu_s"] = cpu_used
        run["run_queue_wait_s"] = cpu.waited(cpu_before, cpu_after)
        roles = {role: s for role, s in cpu_used.items() if not role.startswith("host_")}
        run["cpu_ms_per_request"] = {role: round(1000 * s / len(workload), 1) for role, s in roles.items()}
        return run

    def measure_alone(members: list[int]) -> None:
        for i in members:
            measure(f"instance {i} alone (direct)", [i], ports.instance(i))

    def measure_fleet(members: list[int]) -> None:
        measure(f"fleet of {len(members)} via nginx", members, ports.nginx)
        # The same instances at once without nginx, the clients split evenly over their ports:
        # what the fleet loses to sharing the host, apart from what it loses to the nginx hop.
        measure(f"{len(members)} instances at once (direct)", members, [ports.instance(i) for i in members])

    everyone = list(range(args.gpus))
    try:
        result["launcher_output"] = launcher("--instances", str(args.gpus), *common)
        result["instance_cpus"] = cpu.placements()
        print(f"CPUs of the instances and nginx's workers: {result['instance_cpus']}", flush=True)
        result["warm_up_graphs"] = warm_up(
            everyone, ports, ports.nginx, distinct * args.gpus, c * args.gpus, args.procs, args.api, passes=5
        )
        measure_alone(everyone)
        for _ in range(args.rounds):
            measure_fleet(everyone)
            measure_alone(everyone)  # after the fleet too: the host's speed drifts (see above)
        if args.gpus >= 4:
            launcher("--instances", "2", *common)
            measure_fleet([0, 1])
            measure_alone([0, 1])
        if args.gpus >= 2:
            launcher("--instances", "1", *common)
            measure("1 instance via nginx", [0], ports.nginx)
    finally:
        subprocess.run([sys.executable, "launcher.py", "stop", "--run-dir", str(run_dir)], cwd=REPO)
        summarise(result)
        args.out.write_text(json.dumps(result, indent=2))
    if "one_instance_rtfx" not in result:
        print("no instance transcribed anything alone: see the errors in the runs", flush=True)
        return 1
    print(f"one instance: {result['one_instance_rtfx']}x real time (mean of {args.gpus} alone)", flush=True)
    for run in result["runs"]:
        rtfx = run["levels"][0]["rtfx"]
        note = "  (superseded: measured again)" if "superseded" in run else ""
        ratio = run["vs_one_instance"]
        around = (
            f"  {run['vs_alone_around']:5.2f}x its members alone around it"
            if "vs_alone_around" in run
            else ""
        )
        print(f"{run['config']:<28} {rtfx:>9.1f}x real time  {ratio:5.2f}x one instance{around}{note}")
        host = run["cpu_s"]
        print(
            f"    CPU ms a request: {run['cpu_ms_per_request']}; host CPUs busy "
            f"{host['host_busy_share']:.0%}, stolen by the hypervisor {host['host_steal_share']:.1%}",
            flush=True,
        )
        print(f"    waited for a CPU (s): {run['run_queue_wait_s']}", flush=True)
        threads = [
            f"batch {e['mean_batch']}, GPU thread {e['gpu_thread_busy_share']:.0%}, "
            f"host thread {e.get('host_thread_busy_share') or 0:.0%}, "
            f"GPU thread's CPU {e.get('gpu_thread_cpu_ms_per_batch') or 0:.2f} ms a batch, "
            f"graphs recorded {e.get('graphs_recorded', 0)} borrowed {e.get('graphs_borrowed', 0)}, "
            f"GPU working {e.get('gpu_work_share') or 0:.0%} idle mid-batch "
            f"{e.get('gpu_cif_wait_share') or 0:.0%} between {e.get('gpu_between_share') or 0:.0%}"
            f"{_gc_line(e)}"
            for e in run.get("engines", [])
        ]
        print(f"    busy (per instance): {'; '.join(threads)}", flush=True)
        stages = [e["stage_ms_per_request"] for e in run.get("engines", []) if e.get("stage_ms_per_request")]
        if stages:
            print(f"    engine stages, ms a request (per instance): {stages}", flush=True)
    for config, speed_up in result["speed_ups"].items():
        print(f"{config:<28} {speed_up['mean']:5.2f}x its members alone around it (each: {speed_up['each']})")
    return 0


def _gc_line(engine: dict) -> str:
    if engine.get("gc_pause_ms") is None:
        return ""
    return f", GC paused {engine['gc_pause_ms']:.1f} ms ({engine['gc_full_collections']} full)"


if __name__ == "__main__":
    raise SystemExit(main())
