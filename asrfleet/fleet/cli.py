"""`python launcher.py ...`: the command line of the fleet. One options object per command, built
here; the work is done in `commands.py`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asrfleet.batch.run import BatchOptions, Interrupted, print_summary, run_batch
from asrfleet.config import InstanceConfig, add_engine_options
from asrfleet.fleet import commands, state
from asrfleet.fleet.commands import LaunchError, SshOptions
from asrfleet.fleet.gpus import parse_gpu_list
from asrfleet.fleet.plan import FleetOptions
from asrfleet.fleet.probes import lb_url
from asrfleet.fleet.spec import DEFAULT_HOST, DEFAULT_LB_PORT

COMMANDS = ("up", "status", "stop", "restart", "logs", "transcribe")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asrfleet",
        description="A supervised, load-balanced fleet of speech-recognition instances: one per GPU.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _up_parser(sub.add_parser("up", help="start the fleet, or change the running one (the default)"))
    _common(sub.add_parser("status", help="instances, GPUs, ports, states; exit 1 when anything is down"))
    _common(
        sub.add_parser(
            "stop",
            help="stop every instance (finishing their work) and nginx, and end whatever outlives "
            "supervisord; exit 7 when a process or a port of the fleet could not be freed",
        )
    )
    restart = _common(sub.add_parser("restart", help="rolling restart, one instance at a time"))
    restart.add_argument("instance", nargs="?", help="only this one (e.g. asr-1)")
    restart.add_argument("--ready-timeout", type=float, default=900.0)
    logs = _common(sub.add_parser("logs", help="an instance's log"))
    logs.add_argument("instance")
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.add_argument("-f", "--follow", action="store_true")
    batch = sub.add_parser("transcribe", help="transcribe files, folders or globs through the fleet(s)")
    batch.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders (recursive) or globs")
    batch.add_argument("--out", required=True, type=Path, help="output folder (mirrors the input tree)")
    batch.add_argument(
        "--url",
        action="append",
        default=None,
        help="a fleet (nginx) or instance URL; repeat for several (default: this run dir's fleet)",
    )
    batch.add_argument("--formats", default="txt,srt,vtt,json")
    batch.add_argument("--concurrency", type=int, default=16, help="requests in flight per URL")
    batch.add_argument("--run-dir", default="run")
    return parser


def _common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--run-dir", default="run", help="where configs, logs and sockets live (default: ./run)")
    p.add_argument("--ssh-host", default=None, help="the name your laptop reaches this machine by")
    p.add_argument("--ssh-user", default=None)
    p.add_argument("--ssh-port", type=int, default=None)
    return p


def _up_parser(p: argparse.ArgumentParser) -> None:
    _common(p)
    d = FleetOptions()  # the defaults live there, once
    g = p.add_argument_group("fleet")
    g.add_argument("--instances", type=int, default=None, help="default: one per GPU (or 1 without GPUs)")
    g.add_argument("--gpus", default=None, help="use only these GPUs, e.g. 0,2")
    g.add_argument("--per-gpu", type=int, default=d.per_gpu, help="instances per GPU (they share its memory)")
    g.add_argument("--base-port", type=int, default=d.base_port, help="instance i listens on base-port + i")
    g.add_argument("--lb-host", default=d.lb_host, help="nginx listens here; 0.0.0.0 faces the network")
    g.add_argument("--lb-port", type=int, default=d.lb_port)
    g.add_argument("--nginx", default=d.nginx, help="the nginx binary")
    g.add_argument(
        "--ready-timeout", type=float, default=d.ready_timeout_s, help="seconds to wait for the models"
    )
    g.add_argument(
        "--no-pin-cpus",
        action="store_true",
        help="let every instance run on every CPU (default: each GPU's instances on a block of cores)",
    )
    add_engine_options(p)
    p.set_defaults(host="127.0.0.1", port=6006, name="asr", temp_dir=None, root_path="", cpus="")


def fleet_options(args: argparse.Namespace) -> FleetOptions:
    if args.instances is not None and args.instances < 1:
        raise ValueError("--instances must be at least 1")
    if args.per_gpu < 1:
        raise ValueError("--per-gpu must be at least 1")
    return FleetOptions(
        instance=InstanceConfig.from_namespace(args),
        instances=args.instances,
        gpus=tuple(parse_gpu_list(args.gpus)) if args.gpus else None,
        per_gpu=args.per_gpu,
        base_port=args.base_port,
        lb_host=args.lb_host,
        lb_port=args.lb_port,
        run_dir=Path(args.run_dir),
        nginx=args.nginx,
        ready_timeout_s=args.ready_timeout,
        pin_cpus=not args.no_pin_cpus,
    )


EXIT_FILES_FAILED = 1


def _transcribe(args: argparse.Namespace) -> int:
    urls = args.url or [_local_fleet_url(Path(args.run_dir))]
    options = BatchOptions(
        inputs=args.inputs,
        out_dir=args.out,
        urls=urls,
        formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
        concurrency=args.concurrency,
    )
    try:
        summary = run_batch(options)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return commands.EXIT_USAGE
    except (Interrupted, KeyboardInterrupt):
        print(
            "\ninterrupted: run the same command again to resume; finished files are skipped", file=sys.stderr
        )
        return 130
    print_summary(summary)
    return EXIT_FILES_FAILED if summary.failures else commands.EXIT_OK


def _local_fleet_url(run_dir: Path) -> str:
    """The nginx of the fleet started from this run directory, else the default address."""
    spec = state.load(run_dir)
    if spec is None:
        return f"http://{DEFAULT_HOST}:{DEFAULT_LB_PORT}"
    return lb_url(spec)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv.insert(0, "up")  # `asrfleet --instances 2` means `up`
    parser = build_parser()
    args = parser.parse_args(argv)
    ssh = SshOptions(
        getattr(args, "ssh_host", None), getattr(args, "ssh_user", None), getattr(args, "ssh_port", None)
    )
    run_dir = Path(args.run_dir)
    try:
        if args.command == "up":
            try:
                options = fleet_options(args)
            except ValueError as err:
                parser.error(str(err))
            return commands.up(options, ssh)
        if args.command == "status":
            return commands.status(run_dir, ssh)
        if args.command == "stop":
            return commands.stop(run_dir)
        if args.command == "restart":
            return commands.restart(run_dir, args.instance, args.ready_timeout)
        if args.command == "transcribe":
            return _transcribe(args)
        return commands.logs(run_dir, args.instance, args.lines, args.follow)
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
