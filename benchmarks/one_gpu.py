"""One GPU: our instance against the blog-style baseline and against the ASR-only limit, the same
workload side by side; then a 3-hour recording's peak GPU memory, and fp16 against fp32.

    python -m benchmarks.one_gpu --audio DIR --long FILE --vad-model DIR --out benchmarks/results/one_gpu.json

With --warm-up N, each of ours' levels is warmed up first (its CUDA graphs recorded before it is
measured); with --repeat N, its top level sends the workload N times, long enough to measure at
thousands of times real time.

Paraformer-large is built at its real sizes with FunASR's own classes and random weights (its
compute per audio second is the real model's); VAD is FunASR's real fsmn-vad. ct-punc's real
configuration could not be established, so punctuation is left out on both sides.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from asrfleet.testing.random_models import MODEL_CLASSES, built_paraformer
from benchmarks import limit, load
from benchmarks.servers import exit_on_sigterm, server
from benchmarks.workload import Recording, collect, total_s, write_wav


def instance_args(model: Path, vad: Path, port: int, device: str, fp16: bool, name: str) -> list[str]:
    args = [
        "-m",
        "asrfleet.instance",
        "--port",
        str(port),
        "--name",
        name,
        "--model",
        str(model),
        "--vad-model",
        str(vad),
        "--no-punc",
        "--device",
        device,
        "--max-queue",
        "1024",
    ]
    return args + (["--fp16"] if fp16 else [])


@dataclass(frozen=True)
class Ports:
    """Where each server of a run listens: ours on `base`, then the others above it."""

    base: int = 6006

    @property
    def ours(self) -> int:
        return self.base

    @property
    def long(self) -> int:
        return self.base + 1

    @property
    def in_process(self) -> int:
        return self.base + 2

    @property
    def baseline(self) -> int:
        return self.base + 3


def throughput(
    args, model: Path, utterances: list[Recording], mixed: list[Recording], logs: Path, out: dict
) -> None:
    """Fills `out` as it goes, so that a run cut short keeps what it measured."""
    levels = [int(c) for c in args.concurrency.split(",")]
    top = max(levels)
    ports = Ports(args.base_port)
    device = "cuda:0" if args.device == "cuda" else "cpu"
    out["limit"] = limit.measure(str(model), utterances, batch=128, device=device)
    print("limit:", out["limit"], flush=True)
    baseline = [
        "-m",
        "benchmarks.baseline_app",
        "--port",
        str(ports.baseline),
        "--model",
        str(model),
        "--vad-model",
        str(args.vad_model),
        "--device",
        device,
    ]
    with server(baseline, ports.baseline, logs / "baseline.log", "/config") as url:
        # It has no CUDA graphs to record: a request a client warms it up.
        warm_up(url, utterances, top, min(args.warm_up, 1), "gradio", args.procs)
        out["baseline"] = load.run(url, utterances, levels, procs=args.procs, label="baseline")
    ours = instance_args(model, args.vad_model, ports.ours, args.device, args.fp16, "asr-bench")
    with server(ours, ports.ours, logs / "instance.log", "/readyz") as url:
        out["ours"] = measured(url, utterances, levels, args, "gradio", "ours")
        out["ours_openai_api"] = measured(url, utterances, [top], args, "openai", "ours /v1")
        out["ours_mixed"] = measured(url, mixed, [top], args, "gradio", "ours mixed")
        out["instance_stats"] = load_stats(url)
    if args.compare_in_process:  # the same instance with its engine inside the web process
        in_process = instance_args(
            model, args.vad_model, ports.in_process, args.device, args.fp16, "asr-inproc"
        )
        with server(
            [*in_process, "--in-process"], ports.in_process, logs / "instance-in-process.log", "/readyz"
        ) as url:
            out["ours_in_process"] = measured(
                url, utterances, [top], args, "gradio", "ours, engine in the web process"
            )
    out["summary"] = summarize(out)


def warm_up(
    url: str, workload: list[Recording], concurrency: int, per_client: int, api: str, procs: int
) -> int:
    """Send `per_client` requests for each of `concurrency` clients, uncounted, taken in order from
    the workload (repeated as needed); the CUDA graphs the server recorded meanwhile."""
    if per_client < 1:
        return 0
    count = per_client * concurrency
    sent = (workload * math.ceil(count / len(workload)))[:count]
    before = graph_count(url)
    load.run(url, sent, [concurrency], api=api, procs=procs, label="warm-up")
    return graph_count(url) - before


def measured(url: str, workload: list[Recording], levels: list[int], args, api: str, label: str) -> dict:
    """`load.run` level by level, each after its own warm-up (`args.warm_up` requests a client at
    its concurrency through its API, uncounted: each level meets batch shapes of its own, and
    recording a CUDA graph stalls the GPU thread about 0.1 s). At the top level the workload goes
    `args.repeat` times (at 2 000x real time one pass of 320 utterances lasts well under a second,
    too short to measure a steady state), below it once. Each level says how many graphs the
    server recorded in its warm-up and during it."""
    top = max(levels)
    result: dict = {}
    for concurrency in levels:
        warmed = warm_up(url, workload, concurrency, args.warm_up, api, args.procs)
        sent = workload * (args.repeat if concurrency == top else 1)
        before = graph_count(url)
        run = load.run(url, sent, [concurrency], api=api, procs=args.procs, label=label)
        run["levels"][0].update(warm_up_graphs=warmed, graphs_recorded=graph_count(url) - before)
        if result:
            result["levels"] += run["levels"]
        else:
            result = {**run, "files": len(workload), "audio_s": round(total_s(workload), 2)}
    result["repeat_at_top"] = args.repeat
    return result


def graph_count(url: str) -> int:
    return load_stats(url).get("cuda_graphs", 0)


def summarize(out: dict) -> dict:
    """At the highest concurrency: each of ours against the baseline and against the limit."""

    def top(run: dict) -> float:
        return run["levels"][-1]["rtfx"]

    baseline, limit_rtfx = top(out["baseline"]), out["limit"]["rtfx"]
    summary = {"baseline_rtfx": baseline, "limit_rtfx": limit_rtfx}
    for key in ("ours", "ours_openai_api", "ours_in_process"):
        if key in out:
            rtfx = top(out[key])
            summary[key] = {
                "rtfx": rtfx,
                "vs_baseline": round(rtfx / baseline, 2),
                "vs_limit": round(rtfx / limit_rtfx, 2),
            }
            print(
                f"{out[key]['label']:>32}: {rtfx:7.1f}x real time = {rtfx / baseline:5.2f}x the baseline "
                f"({baseline}x), {rtfx / limit_rtfx:4.2f}x the limit ({limit_rtfx}x)",
                flush=True,
            )
    return summary


def load_stats(url: str) -> dict:
    import httpx

    return httpx.get(url + "/stats", timeout=10).json().get("engine", {})


def long_recording(args, model: Path, logs: Path, work: Path) -> dict:
    """A 3-hour recording through a fresh fp16 instance: its peak GPU memory."""
    import numpy as np

    from asrfleet.audio import AudioLimits, decode_audio

    samples = decode_audio(args.long, AudioLimits(2**31, 36000))
    hours = args.long_hours
    repeats = int(np.ceil(hours * 3600 * 16000 / samples.size))
    path = write_wav(work / f"long-{hours}h.wav", np.tile(samples, repeats)[: int(hours * 3600 * 16000)])
    recording = [Recording(path, hours * 3600)]
    port = Ports(args.base_port).long
    ours = instance_args(model, args.vad_model, port, args.device, True, "asr-long")
    ours += ["--max-duration", str(hours * 3600 + 60), "--max-file-size", "4g"]
    with server(ours, port, logs / "instance-long.log", "/readyz") as url:
        started = time.perf_counter()
        result = load.run(url, recording, [1], procs=1, label=f"{hours} h recording")
        result["wall_s"] = round(time.perf_counter() - started, 1)
        result["instance_stats"] = load_stats(url)
    return result


def precision(args, model: Path, utterances: list[Recording]) -> dict:
    """fp16 against fp32 (ours), and ours in fp32 against FunASR's own pipeline, on the GPU."""
    from funasr import AutoModel

    from asrfleet.config import InstanceConfig
    from asrfleet.engines.funasr.transcriber import FunasrTranscriber

    # FunASR first: loading our engine puts its integrate-and-fire in FunASR's timestamp code.
    device = "cuda:0" if args.device == "cuda" else "cpu"
    reference = AutoModel(
        model=str(model),
        vad_model=str(args.vad_model),
        device=device,
        disable_update=True,
        disable_pbar=True,
        disable_log=True,
    )
    funasr_texts = [reference.generate(input=str(r.path), batch_size_s=300)[0]["text"] for r in utterances]
    texts = {}
    for fp16 in (False, True):
        config = InstanceConfig(
            model=str(model),
            vad_model=str(args.vad_model),
            punc_model=None,
            device=args.device,
            fp16=fp16,
            max_queue=1024,
        )
        transcriber = FunasrTranscriber(config)
        transcriber.load()
        texts[fp16] = transcribe_all(transcriber, utterances)
        transcriber.close()
    return {
        "files": len(utterances),
        "fp16_vs_fp32": compare(texts[True], texts[False]),
        "ours_fp32_vs_funasr_fp32": compare(texts[False], funasr_texts),
        "note": "random weights: near-tied logits make rounding flip tokens far more than in a trained model",
    }


def transcribe_all(transcriber, recordings: list[Recording]) -> list[str]:
    from concurrent.futures import ThreadPoolExecutor

    from asrfleet.engines.base import TranscribeOptions

    with ThreadPoolExecutor(32) as pool:
        return list(pool.map(lambda r: transcriber.transcribe(r.path, TranscribeOptions()).text, recordings))


def compare(a: list[str], b: list[str]) -> dict:
    chars = sum(len(y.replace(" ", "")) for y in b)
    edits = sum(levenshtein(x.replace(" ", ""), y.replace(" ", "")) for x, y in zip(a, b, strict=True))
    return {
        "identical": sum(x == y for x, y in zip(a, b, strict=True)),
        "of": len(a),
        "character_difference_rate": round(edits / max(chars, 1), 4),
    }


def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.one_gpu")
    p.add_argument("--audio", type=Path, required=True, help="folder of utterances")
    p.add_argument("--long", type=Path, required=True, help="a long recording (repeated for --long-hours)")
    p.add_argument("--vad-model", type=Path, required=True)
    p.add_argument("--limit", type=int, default=None, help="utterances to use")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--size", choices=("large", "tiny"), default="large")
    p.add_argument(
        "--model-class",
        choices=MODEL_CLASSES,
        default=MODEL_CLASSES[0],
        help="BiCifParaformer (Paraformer-large as published, with timestamps) or plain Paraformer",
    )
    p.add_argument("--fp16", action="store_true")
    p.add_argument(
        "--compare-in-process", action="store_true", help="also measure the engine in the web process"
    )
    p.add_argument(
        "--warm-up",
        type=int,
        default=0,
        help="requests a client sends to ours, uncounted, before each level at its concurrency, while "
        "it records its CUDA graphs (the baseline gets one a client, once)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="at the top concurrency, ours sends the workload this many times",
    )
    p.add_argument(
        "--base-port",
        type=int,
        default=Ports.base,
        help="ours listens on it; the long recording's instance, the engine-in-process one and the "
        "baseline on the next three",
    )
    p.add_argument("--long-hours", type=float, default=3.0)
    p.add_argument("--parts", default="throughput,precision,long", help="which parts to run")
    p.add_argument("--precision-files", type=int, default=200)
    p.add_argument("--work", type=Path, default=Path("/tmp/asr-bench"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.repeat < 1 or args.warm_up < 0:
        p.error("--repeat must be at least 1 and --warm-up at least 0")
    exit_on_sigterm()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    logs = args.out.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    model = built_paraformer(args.work, args.size, args.model_class)
    utterances = collect([args.audio], args.limit)
    mixed = utterances + collect([args.long]) * 2
    result: dict = json.loads(args.out.read_text()) if args.out.exists() else {}
    hardware = load.hardware()
    result.update(
        model=f"{args.model_class}, Paraformer-large architecture ({args.size}), random weights",
        dtype="fp16" if args.fp16 else "fp32",
        punctuation="none (both sides)",
    )
    print(f"{result['model']} on {hardware}, {result['dtype']}", flush=True)
    parts = args.parts.split(",")
    try:  # whatever was measured is written, also when the run is cut short (SIGTERM, an error)
        if "throughput" in parts:
            # The top-level hardware and utterances describe the throughput run: a later run of
            # another part alone, maybe on another machine, leaves them as they are.
            result["hardware"] = hardware
            result["utterances"] = {"files": len(utterances), "audio_s": round(total_s(utterances), 1)}
            result["throughput"] = {}
            throughput(args, model, utterances, mixed, logs, result["throughput"])
            args.out.write_text(json.dumps(result, indent=2))
        if "precision" in parts:
            differences = precision(args, model, utterances[: args.precision_files])
            result["fp16_differences"] = {"hardware": hardware, **differences}
            print("fp16 differences:", result["fp16_differences"], flush=True)
            args.out.write_text(json.dumps(result, indent=2))
        if "long" in parts:
            result["long_recording"] = {"hardware": hardware, **long_recording(args, model, logs, args.work)}
    finally:
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
