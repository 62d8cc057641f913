"""The launcher's commands: up (and reconcile), status, stop, restart, logs.

Every command works from the run directory: `up` writes the fleet's description there, the others
read it. Only these functions write to disk; planning and rendering are pure.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from asrfleet.config import InstanceConfig
from asrfleet.cpus import read_cores
from asrfleet.fleet import procfs, state
from asrfleet.fleet.control import ALIVE_STATES, RUNNING, ProcessInfo, Supervisor
from asrfleet.fleet.gpus import discover_gpus
from asrfleet.fleet.plan import FleetOptions, Plan, instance_by_name, plan_fleet, with_down, with_draining
from asrfleet.fleet.probes import (
    Readiness,
    activity,
    instance_url,
    is_quiet,
    lb_answers,
    port_in_use,
    probe,
)
from asrfleet.fleet.render import (
    nginx_test_command,
    render_nginx,
    render_supervisord,
    required_directories,
)
from asrfleet.fleet.spec import FleetSpec, InstanceSpec
from asrfleet.fleet.ssh import ssh_tunnel_command
from asrfleet.hub import ModelRequest, ModelUnavailable, resolve

# Exit codes of the launcher.
EXIT_OK = 0
EXIT_DEGRADED = 1  # status: something is down
EXIT_USAGE = 2  # bad arguments (argparse)
EXIT_MODELS = 3  # a model could not be found or downloaded
EXIT_CONFIG = 4  # the fleet cannot be planned, or nginx -t rejects its config
EXIT_NOT_READY = 5  # instances did not become ready
EXIT_NOT_RUNNING = 6  # no fleet runs in this run directory
EXIT_NOT_STOPPED = 7  # stop: a process of the fleet, or another one on its ports, is still there

_QUIET_S = 0.5  # an instance with no request for this long is drained
_POLL_S = 0.5
_NGINX_START_TIMEOUT_S = 60.0  # enough for startretries failed starts of nginx, so FATAL comes first
_SUPERVISORD_EXIT_S = 10.0  # supervisord exits a moment after its socket stops answering
_LEFTOVER_GRACE_S = 5.0  # between SIGTERM and SIGKILL for what outlived supervisord


class LaunchError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SshOptions:
    host: str | None = None
    user: str | None = None
    port: int | None = None


Say = Callable[[str], None]


def say(message: str) -> None:
    print(message, flush=True)


# -- up ------------------------------------------------------------------------------------------


def up(opts: FleetOptions, ssh: SshOptions, out: Say = say) -> int:
    run_dir = opts.run_dir.resolve()
    running = state.load(run_dir)
    if running is not None and Supervisor(running.socket_path).is_running():
        return reconcile(running, opts, ssh, out)
    plan = make_plan(opts, out)
    spec = plan.spec
    check_ports_free(spec.instances, ((spec.lb_host, spec.lb_port, "nginx"),))
    prepare_run_dir(spec)
    write_configs(spec)
    supervisor = Supervisor(spec.socket_path)
    out(f"starting supervisord with {len(spec.instances)} instances and nginx ({spec.run_dir})")
    supervisor.start(spec.supervisord_conf)
    state.save(spec)
    wait_ready(spec, list(spec.instances), supervisor, opts.ready_timeout_s, out)
    wait_nginx(spec, supervisor, _NGINX_START_TIMEOUT_S)
    print_fleet(spec, supervisor, ssh, out)
    return EXIT_OK


def check_ports_free(instances: Sequence[InstanceSpec], others: Sequence[tuple[str, int, str]] = ()) -> None:
    """Refuse to start when a port is taken: a stale process there would answer our probes."""
    wanted = [(i.host, i.port, i.name) for i in instances] + list(others)
    taken = [f"{port} ({name})" for host, port, name in wanted if port_in_use(host, port)]
    if taken:
        raise LaunchError(
            f"port {', '.join(taken)} is already in use by another process; stop it, "
            "or choose other ports with --base-port / --lb-port",
            EXIT_CONFIG,
        )


def make_plan(opts: FleetOptions, out: Say) -> Plan:
    gpus = (
        []
        if opts.instance.device == "cpu"
        else discover_gpus(requested=list(opts.gpus) if opts.gpus else None)
    )
    if opts.gpus and not gpus:
        raise LaunchError("--gpus was given but no GPU is visible (NVML found none)", EXIT_CONFIG)
    instance = fetch_models(opts.instance, out)
    try:
        plan = plan_fleet(
            dataclasses.replace(opts, instance=instance), gpus, read_cores(), sys.executable, Path.cwd()
        )
    except ValueError as err:
        raise LaunchError(str(err), EXIT_CONFIG) from err
    for warning in plan.warnings:
        out(f"warning: {warning}")
    return plan


def fetch_models(config: InstanceConfig, out: Say) -> InstanceConfig:
    """Resolve every model to a local directory once, before any instance starts.

    Instances then load from disk: none of them races another on the hub cache, and a fleet that
    starts offline fails here with one clear message instead of N crash loops.
    """
    kind = "whisper" if config.engine == "whisper" else "funasr"
    wanted = {"model": (config.model, "--model")}
    if config.vad_model:
        wanted["vad_model"] = (config.vad_model, "--vad-model")
    if config.punc_model:
        wanted["punc_model"] = (config.punc_model, "--punc-model")
    resolved = {}
    for field, (name, option) in wanted.items():
        out(f"model {option[2:]}: {name}")
        try:
            resolved[field] = str(resolve(ModelRequest(name, kind, option), config.hub, config.model_cache))
        except ModelUnavailable as err:
            raise LaunchError(str(err), EXIT_MODELS) from err
    return config.replace(**resolved)


def prepare_run_dir(spec: FleetSpec) -> None:
    for folder in required_directories(spec):
        folder.mkdir(parents=True, exist_ok=True)
    os.chmod(spec.run_dir, 0o700)  # the socket and logs are this user's alone


def write_configs(spec: FleetSpec) -> None:
    """Render both configs; nginx's is checked with `nginx -t` before anything uses it."""
    check_nginx(spec)
    _write(spec.supervisord_conf, render_supervisord(spec))
    _write(spec.nginx_conf, render_nginx(spec))


def check_nginx(spec: FleetSpec) -> None:
    if shutil.which(spec.nginx_binary) is None:
        raise LaunchError(
            f"nginx not found ({spec.nginx_binary}); install it (Debian/Ubuntu: apt-get install nginx)",
            EXIT_CONFIG,
        )
    with tempfile.NamedTemporaryFile("w", suffix=".conf", dir=spec.run_dir, delete=False) as f:
        f.write(render_nginx(spec))
    try:
        result = subprocess.run(nginx_test_command(spec, Path(f.name)), capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if result.returncode != 0:
        raise LaunchError(f"nginx -t rejected the generated config:\n{result.stderr}", EXIT_CONFIG)


def apply_nginx(spec: FleetSpec, supervisor: Supervisor) -> None:
    """Check, write and load a new nginx config; HUP makes nginx switch without dropping requests."""
    check_nginx(spec)
    _write(spec.nginx_conf, render_nginx(spec))
    supervisor.signal("nginx", "HUP")
    time.sleep(0.3)  # let the new workers take over before anyone counts on the change


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def wait_ready(
    spec: FleetSpec, instances: list[InstanceSpec], supervisor: Supervisor, timeout: float, out: Say
) -> None:
    """Wait until every instance's /readyz answers 200, showing progress; fail on FATAL."""
    started = time.monotonic()
    pending = {i.name: i for i in instances}
    shown = (-1, 0.0)  # the pending count last shown, and when
    shown_states: dict[str, str] = {}  # what each pending instance is doing, as `status` says it
    while pending:
        states = supervisor.processes()
        for name, instance in list(pending.items()):
            info = states.get(name)
            if info is not None and info.state == "FATAL":
                time.sleep(1.0)  # supervisord may still be writing the last lines of its output
                raise LaunchError(
                    f"{name} failed to start (FATAL: {info.description}); last log lines:\n"
                    + log_tail(instance, 20),
                    EXIT_NOT_READY,
                )
            readiness = probe(instance)
            if readiness.ready:
                del pending[name]
            else:
                shown_states[name] = _state_text(info.state if info else "MISSING", readiness)
        elapsed = time.monotonic() - started
        if pending and (len(pending) != shown[0] or elapsed - shown[1] >= 10):  # on change, else every 10 s
            states_text = ", ".join(f"{name} {shown_states[name]}" for name in sorted(pending))
            out(
                f"waiting for {len(pending)}/{len(instances)} instances to load models "
                f"({elapsed:.0f} s): {states_text}"
            )
            shown = (len(pending), elapsed)
        if pending and elapsed > timeout:
            names = ", ".join(sorted(pending))
            raise LaunchError(
                f"not ready after {timeout:.0f} s: {names}; see `launcher.py logs`", EXIT_NOT_READY
            )
        if pending:
            time.sleep(_POLL_S)


def wait_nginx(spec: FleetSpec, supervisor: Supervisor, timeout: float) -> None:
    """Wait until supervisord counts nginx started and the fleet's port answers its /healthz."""
    deadline = time.monotonic() + timeout
    while True:
        info = supervisor.processes().get("nginx")
        text, serving = nginx_state(spec, info)
        if serving:
            return
        if (info is not None and info.state == "FATAL") or time.monotonic() > deadline:
            raise LaunchError(
                f"nginx did not start ({text}); its last error log lines:\n"
                + file_tail(spec.nginx_error_log, 20),
                EXIT_NOT_READY,
            )
        time.sleep(_POLL_S)


# -- reconcile a running fleet -------------------------------------------------------------------


def reconcile(running: FleetSpec, opts: FleetOptions, ssh: SshOptions, out: Say) -> int:
    """`up` while a fleet runs: report it, or move it to the new plan one instance at a time."""
    supervisor = Supervisor(running.socket_path)
    plan = make_plan(opts, out)
    new = plan.spec
    if _same_fleet(running, new):
        out("the fleet is already running:")
        print_fleet(running, supervisor, ssh, out)
        return EXIT_OK
    old_by_name = {i.name: i for i in running.instances}
    new_by_name = {i.name: i for i in new.instances}
    added = [i for n, i in new_by_name.items() if n not in old_by_name]
    removed = [i for n, i in old_by_name.items() if n not in new_by_name]
    changed = [i for n, i in new_by_name.items() if n in old_by_name and old_by_name[n] != i]
    out(f"changing the running fleet: +{len(added)} -{len(removed)} ~{len(changed)} instances")
    check_ports_free(added)
    prepare_run_dir(new)
    check_nginx(new)
    # Old and new instances side by side while removed ones drain: no session is cut short.
    both = dataclasses.replace(new, instances=new.instances + tuple(removed))
    _write(new.supervisord_conf, render_supervisord(both))
    supervisor.reload()
    for instance in added:
        supervisor.add(instance.name)
    wait_ready(new, added, supervisor, opts.ready_timeout_s, out)
    apply_nginx(with_draining(both, {i.name for i in removed}), supervisor)
    for instance in removed:
        drain(both, instance, out)
        supervisor.remove(instance.name)
        out(f"{instance.name} removed")
    _write(new.supervisord_conf, render_supervisord(new))
    supervisor.reload()
    apply_nginx(new, supervisor)
    state.save(new)
    for instance in changed:
        _restart_one(new, instance, supervisor, opts.ready_timeout_s, out, replace=True)
    print_fleet(new, supervisor, ssh, out)
    return EXIT_OK


def _same_fleet(a: FleetSpec, b: FleetSpec) -> bool:
    return (a.instances, a.lb_host, a.lb_port, a.max_body_bytes) == (
        b.instances,
        b.lb_host,
        b.lb_port,
        b.max_body_bytes,
    )


# -- restart, stop -------------------------------------------------------------------------------


def restart(run_dir: Path, name: str | None, timeout: float, out: Say = say) -> int:
    """Rolling restart: one instance at a time, each drained first and ready again before the next."""
    spec, supervisor = _running(run_dir)
    targets = [instance_by_name(spec, name)] if name else list(spec.instances)
    if len(spec.instances) == 1:
        out("warning: a fleet of one instance cannot keep serving while it restarts")
    for instance in targets:
        _restart_one(spec, instance, supervisor, timeout, out, replace=False)
    return EXIT_OK


def _restart_one(
    spec: FleetSpec, instance: InstanceSpec, supervisor: Supervisor, timeout: float, out: Say, replace: bool
) -> None:
    """Drain, stop, start (re-reading its program entry when `replace`), and take back when ready.

    While it restarts, nginx marks it down: its port answers before its model is loaded, and its
    sessions must not reach it until /readyz says so.
    """
    alone = len(spec.instances) == 1
    if not alone:
        apply_nginx(with_draining(spec, {instance.name}), supervisor)
        drain(spec, instance, out)
        apply_nginx(with_down(spec, {instance.name}), supervisor)
    out(f"restarting {instance.name}")
    if replace:
        supervisor.remove(instance.name)
        supervisor.add(instance.name)
    else:
        supervisor.stop(instance.name)
        supervisor.start_process(instance.name)
    wait_ready(spec, [instance], supervisor, timeout, out)
    if not alone:
        apply_nginx(spec, supervisor)
    out(f"{instance.name} is back")


def drain(spec: FleetSpec, instance: InstanceSpec, out: Say) -> None:
    """Wait until nginx sends `instance` nothing more: no request in flight, none for a moment.

    nginx already gives it no new sessions; its own sessions finish what they started. After
    stopwaitsecs the restart goes ahead anyway: a client that keeps one session busy forever
    cannot block it.
    """
    deadline = time.monotonic() + spec.supervisor.stopwaitsecs
    out(f"draining {instance.name}")
    while time.monotonic() < deadline:
        counters = activity(instance) if probe(instance).ready else None
        if counters is None or is_quiet(counters, _QUIET_S):
            return
        time.sleep(0.2)
    out(f"warning: {instance.name} still busy after {spec.supervisor.stopwaitsecs} s; restarting it anyway")


def stop(run_dir: Path, out: Say = say) -> int:
    """Stop the instances (each finishing its work), then supervisord and nginx; then make sure that
    nothing of the fleet runs or listens any more, ending what outlived supervisord."""
    spec = _load(run_dir)
    supervisor = Supervisor(spec.socket_path)
    running = supervisor.is_running()
    session = supervisor.pid() if running else _supervisord_session(spec)  # before its pid file goes
    if running:
        _stop_programs(spec, supervisor, out)
        supervisor.shutdown()
    else:
        out(f"supervisord is not running in {spec.run_dir}; looking for what is left of the fleet")
    ended = end_leftovers(spec, session, out)
    if not running and not ended:
        raise LaunchError(_not_running_message(spec), EXIT_NOT_RUNNING)
    out("fleet stopped")
    return EXIT_OK


def _stop_programs(spec: FleetSpec, supervisor: Supervisor, out: Say) -> None:
    names = [i.name for i in spec.instances]
    out(f"stopping {len(names)} instances (each finishes its work in flight)")
    for name in names:  # all at once: each drains in parallel
        supervisor.stop(name, wait=False)
    still = supervisor.wait_stopped(names, spec.supervisor.stopwaitsecs + 15)
    if still:
        out(f"warning: still stopping: {', '.join(still)}")


def end_leftovers(spec: FleetSpec, session: int | None, out: Say) -> int:
    """End the processes of supervisord's session that outlived it; fail unless the fleet's ports are
    free afterwards. How many processes were ended.

    Every process of the fleet is in supervisord's session: supervisord makes it (setsid) and each
    program gets a process group inside it, as does nginx's master under its guard; children stay
    in it unless they leave on purpose. Linux does not reuse a pid while a session of that number
    has members, so the session's members are the fleet's even once supervisord is gone.
    """
    left: list[procfs.Proc] = []
    if session is not None:
        procfs.wait_gone([session], _SUPERVISORD_EXIT_S)
        left = procfs.members(sessions=[session])
    survivors: list[int] = []
    if left:
        out(
            f"warning: {len(left)} processes of the fleet outlived supervisord; ending them: "
            + ", ".join(p.describe() for p in left)
        )
        survivors = procfs.terminate([p.pid for p in left], _LEFTOVER_GRACE_S)
    problems = [f"process {pid} did not end" for pid in survivors]
    problems += [f"port {port} is still in use by {holders}" for port, holders in _busy_ports(spec).items()]
    if problems:
        raise LaunchError("the fleet did not stop completely: " + "; ".join(problems), EXIT_NOT_STOPPED)
    return len(left)


def _busy_ports(spec: FleetSpec) -> dict[int, str]:
    """The fleet's ports that something still listens on, each with who that is."""
    wanted = [(spec.lb_host, spec.lb_port)] + [(i.host, i.port) for i in spec.instances]
    busy = [port for host, port in wanted if port_in_use(host, port)]
    holders = procfs.listeners(busy)
    return {port: _holders(holders.get(port, set())) for port in busy}


def _holders(pids: set[int]) -> str:
    procs = [p for p in map(procfs.read, sorted(pids)) if p is not None]
    return ", ".join(p.describe() for p in procs) or "a process this user cannot see"


def _supervisord_session(spec: FleetSpec) -> int | None:
    """The session of a supervisord that is gone (or does not answer), from its pid file; None when
    that pid now belongs to another program."""
    pid = procfs.read_pid_file(spec.supervisord_pid_file)
    if pid is None:
        return None
    proc = procfs.read(pid)
    if proc is not None and not proc.zombie:
        # Still there: it must be this fleet's supervisord (a hung one), not a reused pid.
        if "supervisord" not in proc.title or str(spec.supervisord_conf) not in proc.title:
            return None
    return pid


def _load(run_dir: Path) -> FleetSpec:
    spec = state.load(run_dir)
    if spec is None:
        raise LaunchError(f"no fleet was started from {run_dir.resolve()}", EXIT_NOT_RUNNING)
    return spec


def _not_running_message(spec: FleetSpec) -> str:
    return f"the fleet in {spec.run_dir} is not running (supervisord is down)"


def _running(run_dir: Path) -> tuple[FleetSpec, Supervisor]:
    spec = _load(run_dir)
    supervisor = Supervisor(spec.socket_path)
    if not supervisor.is_running():
        raise LaunchError(_not_running_message(spec), EXIT_NOT_RUNNING)
    return spec, supervisor


# -- status, logs --------------------------------------------------------------------------------


def status(run_dir: Path, ssh: SshOptions, out: Say = say) -> int:
    spec, supervisor = _running(run_dir)
    healthy = print_fleet(spec, supervisor, ssh, out)
    return EXIT_OK if healthy else EXIT_DEGRADED


def print_fleet(spec: FleetSpec, supervisor: Supervisor, ssh: SshOptions, out: Say) -> bool:
    """The table of instances, the nginx URL and the ssh command; True when all is well."""
    states = supervisor.processes()
    rows = [("INSTANCE", "GPU", "CPUS", "PORT", "URL", "STATE")]
    healthy = True
    failed = []
    for instance in spec.instances:
        info = states.get(instance.name)
        alive = info is not None and info.state in ALIVE_STATES
        readiness = probe(instance) if alive else Readiness(False, "down")
        shown = _state_text(info.state if info else "MISSING", readiness)
        healthy &= readiness.ready
        if info is not None and info.state == "FATAL":
            failed.append(instance)
        gpu = instance.gpu if instance.gpu is not None else "cpu"
        cpus = instance.cpus or "any"
        rows.append((instance.name, gpu, cpus, str(instance.port), instance_url(instance), shown))
    nginx = states.get("nginx")
    nginx_text, serving = nginx_state(spec, nginx)
    healthy &= serving
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    out(f"\nnginx: http://{spec.lb_host}:{spec.lb_port}  ({nginx_text})")
    if nginx is not None and nginx.state in ("FATAL", "BACKOFF", "EXITED"):
        out(f"\nnginx is {nginx.state}; its last error log lines:\n{file_tail(spec.nginx_error_log, 15)}")
    for instance in failed:
        out(f"\n{instance.name} is FATAL (it kept crashing); its last log lines:\n{log_tail(instance, 15)}")
    ports = [spec.lb_port] + [i.port for i in spec.instances]
    host = ssh.host or socket.gethostname()
    out("\nfrom your laptop:\n  " + ssh_tunnel_command(ports, host, ssh.user or getpass.getuser(), ssh.port))
    return healthy


def _state_text(process_state: str, readiness: Readiness) -> str:
    if readiness.ready:
        return "ready"
    if process_state not in ALIVE_STATES:
        return process_state
    if readiness.status == "foreign":
        return f"port taken by another process ({readiness.detail.get('name', '?')})"
    if readiness.status == "down":
        # Its process runs, but nothing accepts connections on its port yet: an instance listens
        # only once its models are loaded.
        return "loading"
    return readiness.status


def nginx_state(spec: FleetSpec, info: ProcessInfo | None) -> tuple[str, bool]:
    """What `status` says of nginx, and whether it serves: supervisord's state, and whether the
    fleet's port answers nginx's own /healthz (a process that runs is not yet one that serves)."""
    process_state = info.state if info is not None else "MISSING"
    answers = lb_answers(spec)
    if process_state in ALIVE_STATES:
        answer = "answers /healthz" if answers else "but its port does not answer /healthz"
        return f"{process_state}, {answer}", process_state == RUNNING and answers
    text = f"{process_state}: {info.description}" if info is not None and info.description else process_state
    if port_in_use(spec.lb_host, spec.lb_port):
        held = procfs.listeners([spec.lb_port]).get(spec.lb_port, set())
        text += f"; port {spec.lb_port} is held by {_holders(held)}"
    return text, False


def logs(run_dir: Path, name: str, lines: int, follow: bool, out: Say = say) -> int:
    spec = state.load(run_dir)
    if spec is None:
        raise LaunchError(f"no fleet was started from {run_dir.resolve()}", EXIT_NOT_RUNNING)
    instance = instance_by_name(spec, name)
    out(log_tail(instance, lines))
    if follow:
        _follow(instance.log_file, out)
    return EXIT_OK


def log_tail(instance: InstanceSpec, lines: int) -> str:
    return file_tail(instance.log_file, lines)


def file_tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log yet at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _follow(path: Path, out: Say) -> None:
    with open(path, errors="replace") as f:
        f.seek(0, os.SEEK_END)
        try:
            while True:
                line = f.readline()
                if line:
                    out(line.rstrip("\n"))
                else:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            return
