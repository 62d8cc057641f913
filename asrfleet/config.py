"""One configuration object per instance, built from the command line (and back into one).

The launcher builds an `InstanceConfig` for every instance and renders it with `to_argv()` into the
supervisord program line; the instance parses that line back with `InstanceConfig.from_argv()`.
Both directions live here so the two can never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from asrfleet.cpus import format_cpu_list, parse_cpu_list
from asrfleet.sizes import parse_size

# Hub ids of the models the product serves by default (ModelScope names; FunASR aliases work too).
PARAFORMER_LARGE = "iic/speech_paraformer-large-vad-punc_asr_nat-zh-cn-16k-common-vocab8404-pytorch"
FSMN_VAD = "iic/speech_fsmn_vad_zh-cn-16k-common-pytorch"
CT_PUNC = "iic/punc_ct-transformer_cn-en-common-vocab471067-large"
WHISPER_DEFAULT = "large-v3"

ENGINES = ("paraformer", "whisper")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class InstanceConfig:
    """Everything one instance needs to know; immutable once built."""

    host: str = "127.0.0.1"
    port: int = 6006
    name: str = "asr"
    engine: str = "paraformer"
    model: str = PARAFORMER_LARGE
    vad_model: str | None = FSMN_VAD
    punc_model: str | None = CT_PUNC
    hub: str = "ms"
    model_cache: Path | None = None
    device: str = "auto"
    fp16: bool = False
    no_cuda_graphs: bool = False  # every batch op by op (debugging; slower for short segments)
    gpu_memory_share: float = 0.5  # of the GPU memory free at startup, for batches
    batch_size_s: int = 300
    max_file_size: int = 1024**3
    max_duration_s: float = 5 * 3600.0
    max_queue: int = 256
    workers: int = 0
    threads: int = 0
    in_process: bool = False  # the engine in the web server's process (debugging; slower under load)
    cpus: str = ""  # a CPU list ("0-15") this instance and its processes run on; "" = wherever allowed
    temp_dir: Path | None = None
    root_path: str = ""

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; choose from {', '.join(ENGINES)}")
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; choose from {', '.join(DEVICES)}")
        for field in ("port", "batch_size_s", "max_file_size", "max_queue"):
            if getattr(self, field) <= 0:
                raise ValueError(f"{field} must be positive")
        if self.max_duration_s <= 0:
            raise ValueError("max_duration_s must be positive")
        if not 0 < self.gpu_memory_share <= 1:
            raise ValueError("gpu_memory_share must be in (0, 1]")
        if self.cpus:
            parse_cpu_list(self.cpus)

    @classmethod
    def from_argv(cls, argv: list[str] | None = None) -> InstanceConfig:
        """The config of a command line; a value out of range exits 2 with the reason, as argparse
        does for the options it checks itself (not a traceback)."""
        parser = build_parser()
        args = parser.parse_args(argv)
        try:
            return cls.from_namespace(args)
        except ValueError as err:
            parser.error(str(err))

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> InstanceConfig:
        model = args.model or (WHISPER_DEFAULT if args.engine == "whisper" else PARAFORMER_LARGE)
        uses_vad_punc = args.engine == "paraformer"
        return cls(
            host=args.host,
            port=args.port,
            name=args.name,
            engine=args.engine,
            model=model,
            vad_model=args.vad_model if uses_vad_punc else None,
            punc_model=None if (args.no_punc or not uses_vad_punc) else args.punc_model,
            hub=args.hub,
            model_cache=Path(args.model_cache) if args.model_cache else None,
            device=args.device,
            fp16=args.fp16,
            no_cuda_graphs=args.no_cuda_graphs,
            gpu_memory_share=args.gpu_memory_share,
            batch_size_s=args.batch_size_s,
            max_file_size=parse_size(args.max_file_size),
            max_duration_s=args.max_duration,
            max_queue=args.max_queue,
            workers=args.workers,
            threads=args.threads,
            in_process=args.in_process,
            cpus=args.cpus,
            temp_dir=Path(args.temp_dir) if args.temp_dir else None,
            root_path=args.root_path,
        )

    def to_argv(self) -> list[str]:
        """The `python -m asrfleet.instance` arguments that rebuild this config (defaults left out)."""
        argv: list[str] = []
        defaults = InstanceConfig()
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in ("vad_model", "punc_model", "model") or value == getattr(defaults, field.name):
                continue
            argv += _option(field.name, value)
        argv += ["--model", self.model]
        if self.vad_model is not None:
            argv += ["--vad-model", self.vad_model]
        if self.punc_model is None:
            argv.append("--no-punc")
        else:
            argv += ["--punc-model", self.punc_model]
        return argv

    def replace(self, **changes: object) -> InstanceConfig:
        return dataclasses.replace(self, **changes)


_FLAG_NAMES = {"max_duration_s": "--max-duration"}


def _option(name: str, value: object) -> list[str]:
    flag = _FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
    if isinstance(value, bool):
        return [flag] if value else []
    return [flag, str(value)]


def option_value(argv: Sequence[str], flag: str) -> str | None:
    """The value an argv gives an option, as "--flag VALUE" or "--flag=VALUE"; the last one counts,
    as for argparse. None where it gives none (a trailing "--flag" has no value)."""
    value = None
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith(flag + "="):
            value = arg.removeprefix(flag + "=")
    return value


def _cpu_list(text: str) -> str:
    """argparse's check of --cpus: a well-formed list, written back the way Linux writes it ("": all)."""
    if not text:
        return ""
    try:
        return format_cpu_list(parse_cpu_list(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    d = InstanceConfig()
    p = argparse.ArgumentParser(
        prog="python -m asrfleet.instance",
        description="One speech-recognition web app (Gradio UI, Gradio API, OpenAI-compatible API).",
    )
    p.add_argument("--host", default=d.host, help="interface to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--name", default=d.name, help="instance name shown in logs and /readyz")
    p.add_argument(
        "--cpus",
        type=_cpu_list,
        default=d.cpus,
        help="run on these CPUs only, e.g. 0-15 (the launcher gives each instance its GPU's share)",
    )
    add_engine_options(p)
    p.add_argument("--temp-dir", default=None, help="this instance's own temp directory")
    p.add_argument("--root-path", default=d.root_path, help="public sub-path when served under a prefix")
    return p


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """The options every instance of a fleet shares (the launcher takes them too)."""
    d = InstanceConfig()
    g = p.add_argument_group("engine and models")
    g.add_argument("--engine", choices=ENGINES, default=d.engine)
    g.add_argument("--model", default=None, help="hub id or local model directory")
    g.add_argument("--vad-model", default=d.vad_model, help="hub id or local directory (paraformer)")
    g.add_argument("--punc-model", default=d.punc_model, help="hub id or local directory (paraformer)")
    g.add_argument("--no-punc", action="store_true", help="skip punctuation")
    g.add_argument("--hub", choices=("ms", "hf"), default=d.hub, help="ModelScope or Hugging Face")
    g.add_argument("--model-cache", default=None, help="where hub downloads are kept")
    g.add_argument("--device", choices=DEVICES, default=d.device)
    g.add_argument("--fp16", action="store_true", help="half precision on the GPU")
    g.add_argument(
        "--no-cuda-graphs",
        action="store_true",
        help="run every GPU batch op by op instead of replaying CUDA graphs (paraformer; debugging)",
    )
    g.add_argument(
        "--gpu-memory-share",
        type=float,
        default=d.gpu_memory_share,
        help="share of the GPU memory free at startup that batches may use",
    )
    g.add_argument(
        "--batch-size-s",
        type=int,
        default=d.batch_size_s,
        help="padded audio seconds per GPU batch (upper bound; GPU memory may lower it)",
    )
    g.add_argument("--max-file-size", default=str(d.max_file_size), help="upload limit, e.g. 500m or 1g")
    g.add_argument("--max-duration", type=float, default=d.max_duration_s, help="longest recording, seconds")
    g.add_argument("--max-queue", type=int, default=d.max_queue, help="requests in flight before 503")
    g.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        help="audio decoding/VAD processes per instance (0: choose from the CPU count)",
    )
    g.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: choose)")
    g.add_argument(
        "--in-process",
        action="store_true",
        help="run the engine inside the web server's process (default: a process of its own)",
    )
