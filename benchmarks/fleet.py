"""Several GPUs: the fleet through nginx against one instance, started by the real launcher.

    python -m benchmarks.fleet --audio DIR --vad-model DIR --nginx PATH --out benchmarks/results/fleet.json

One fleet of N instances (one per GPU) is started; one instance is measured directly on its port
at concurrency C, then the fleet through nginx at C x N; for N = 4 the fleet is then reconciled to
2 instances and measured at C x 2, then to 1 and measured through nginx at C (what the nginx hop
costs). The same recordings everywhere, repeated --repeat times per instance, so that every
measurement lasts about as long (a short one weighs its ramp at start and end more: session 4's
fleet of 4, with the same 6 000 requests as one instance, lasted 17 s against 58 s, and latency
then decides throughput at a fixed number of clients). Before the first measurement every
instance transcribes the distinct recordings at concurrency C until a pass records no new CUDA
graph (the first batch of a new shape records one, about 0.1 s; the measurements are of the
steady state), and each measurement follows an uncounted warm-up of 2 x its concurrency requests.
Each measurement also reports the CPU seconds of every role (`benchmarks/cpu.py`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import cpu, load
from benchmarks.one_gpu import build_model, load_stats
from benchmarks.servers import exit_on_sigterm
from benchmarks.workload import collect, total_s

REPO = Path(__file__).resolve().parents[1]
BASE_PORT = 6006  # the launcher's default: instance i listens on BASE_PORT + i


def launcher(*args: str) -> str:
    result = subprocess.run([sys.executable, "launcher.py", *args], cwd=REPO, capture_output=True, text=True)
    print(result.stdout[-1500:], result.stderr[-1500:], flush=True)
    if result.returncode != 0:
        raise RuntimeError(f"launcher {args[:1]} exited {result.returncode}")
    return result.stdout


def confine_clients(count: int) -> str:
    """Pin this process, and the client processes it starts from now on, to the last CPUs.

    The fleet was started before, so it keeps all CPUs: the clients' own CPU use (on a real
    deployment, other machines') stays off most of the cores that serve the fleet.
    """
    cpus = sorted(os.sched_getaffinity(0))[-count:]
    os.sched_setaffinity(0, cpus)
    return f"load generator on CPUs {cpus[0]}-{cpus[-1]} of {os.cpu_count()}; the fleet on all"


def engine_stats(instances: int) -> list[dict]:
    """Each instance's scheduler counters (cumulative), from its readiness probe."""
    return [load_stats(f"http://127.0.0.1:{BASE_PORT + i}") for i in range(instances)]


def engine_deltas(before: list[dict], after: list[dict], wall_s: float) -> list[dict]:
    """What each instance's GPU thread did during one measurement: batches, mean size, busy share."""
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
                "graphs_recorded": a.get("cuda_graphs", 0) - b.get("cuda_graphs", 0),
                "graphs_in_all": a.get("cuda_graphs", 0),
                "eager_batches": a.get("eager_batches", 0) - b.get("eager_batches", 0),
            }
        )
    return out


def warm_up(url: str, recordings: list, concurrency: int, procs: int, passes: int = 5) -> int:
    """Transcribe `recordings` until a pass records no new graph; the graphs recorded."""

    def graphs() -> int:
        return load_stats(url).get("cuda_graphs", 0)

    first = graphs()
    for _ in range(passes):
        before = graphs()
        load.run(url, recordings, [concurrency], procs=procs)
        if graphs() == before:
            break
    return graphs() - first


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fleet")
    p.add_argument("--audio", type=Path, required=True)
    p.add_argument("--vad-model", type=Path, required=True)
    p.add_argument("--nginx", default="nginx")
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--per-instance-concurrency", type=int, default=32)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--procs", type=int, default=8)
    p.add_argument("--size", choices=("large", "tiny"), default="large")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--work", type=Path, default=Path("/tmp/asr-bench"))
    p.add_argument(
        "--client-cpus",
        type=int,
        default=0,
        help="run the load generator on the host's last N CPUs only (0: anywhere)",
    )
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    exit_on_sigterm()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    model = build_model(args.work, args.size)
    distinct = collect([args.audio])
    recordings = distinct * args.repeat
    run_dir = args.work / "fleet-run"
    common = [
        "--run-dir",
        str(run_dir),
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
    c = args.per_instance_concurrency
    result = {
        "hardware": {**load.hardware(), "topology": cpu.topology()},
        "files_per_instance": len(recordings),
        "audio_s_per_instance": round(total_s(recordings), 1),
        "per_instance_concurrency": c,
        "runs": [],
    }

    def measure(config: str, instances: int, url: str) -> None:
        users = c * instances
        load.run(url, recordings[: 2 * users], [users], procs=args.procs)  # warm-up, not counted
        workload = recordings * instances
        before, cpu_before = engine_stats(instances), cpu.snapshot()
        measured = load.run(url, workload, [users], procs=args.procs)
        cpu_used = cpu.used(cpu_before, cpu.snapshot())
        wall = measured["levels"][0]["wall_s"]
        run = {"config": config, "instances": instances, **measured}
        run["engines"] = engine_deltas(before, engine_stats(instances), wall)
        run["cpu_s"] = cpu_used
        roles = {role: s for role, s in cpu_used.items() if role != "host_busy_share"}
        run["cpu_ms_per_request"] = {role: round(1000 * s / len(workload), 1) for role, s in roles.items()}
        result["runs"].append(run)
        print(f"{config}: {run['levels'][0]['rtfx']}x real time", flush=True)

    try:
        result["launcher_output"] = launcher("--instances", str(args.gpus), *common)
        if args.client_cpus:
            result["client_cpus"] = confine_clients(args.client_cpus)
        result["warm_up_graphs"] = [
            warm_up(f"http://127.0.0.1:{BASE_PORT + i}", distinct, c, args.procs) for i in range(args.gpus)
        ]
        measure("1 instance (direct)", 1, f"http://127.0.0.1:{BASE_PORT}")
        measure(f"fleet of {args.gpus} via nginx", args.gpus, "http://127.0.0.1:8000")
        if args.gpus >= 4:
            launcher("--instances", "2", *common)
            measure("fleet of 2 via nginx", 2, "http://127.0.0.1:8000")
        if args.gpus >= 2:
            launcher("--instances", "1", *common)
            measure("1 instance via nginx", 1, "http://127.0.0.1:8000")
    finally:
        subprocess.run([sys.executable, "launcher.py", "stop", "--run-dir", str(run_dir)], cwd=REPO)
        args.out.write_text(json.dumps(result, indent=2))
    single = result["runs"][0]["levels"][0]["rtfx"]
    for run in result["runs"]:
        rtfx = run["levels"][0]["rtfx"]
        print(f"{run['config']:<24} {rtfx:>9.1f}x real time  {rtfx / single:5.2f}x one instance", flush=True)
        busy = run["cpu_s"]["host_busy_share"]
        print(f"    CPU ms a request: {run['cpu_ms_per_request']}; host CPUs busy {busy:.0%}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
