"""What a fleet is: its instances, the load balancer in front of them, and where its files live.

These are frozen dataclasses that the launcher builds and the renderers read. They check their own
consistency when built, so a bad fleet fails at once with a plain message instead of as a broken
supervisord or nginx config later. Nothing here touches the disk: the paths need not exist.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asrfleet.config import option_value

DEFAULT_HOST = "127.0.0.1"
DEFAULT_LB_PORT = 8000
# Hour-long recordings: a request may legitimately take this long end to end.
DEFAULT_PROXY_TIMEOUT_S = 4 * 60 * 60

# supervisord binds its socket as "<file>.<pid>" first and links it into place afterwards, and a
# Unix socket path is at most 107 bytes on Linux: keep room for "." and a 7-digit pid.
MAX_SOCKET_PATH_BYTES = 99

# Names supervisord accepts as program names and that read well in `supervisorctl status`.
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

# The subdirectories nginx needs for its temp files; the compiled-in defaults under /var/lib/nginx
# belong to root, so an unprivileged nginx must get all five inside its prefix.
NGINX_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def instance_name(index: int) -> str:
    """The program name of instance `index`: "asr-0", "asr-1", ..."""
    if index < 0:
        raise ValueError(f"instance index must be >= 0, got {index}")
    return f"asr-{index}"


@dataclass(frozen=True, kw_only=True)
class InstanceSpec:
    """One speech-recognition instance: one process, one port, at most one GPU."""

    name: str
    index: int
    port: int
    gpu: str | None  # an NVML index ("0") or a GPU UUID; None runs the instance on the CPU
    command: tuple[str, ...]  # the full argv; supervisord runs it as it is
    environment: dict[str, str] = field(hash=False)  # a dict cannot be hashed; the rest identifies it
    temp_dir: Path
    log_file: Path
    host: str = DEFAULT_HOST

    def __post_init__(self) -> None:
        check_name(self.name)
        check_port(self.port, f"port of {self.name}")
        if not self.command:
            raise ValueError(f"{self.name}: command is empty")
        self._check_environment()

    @property
    def cpus(self) -> str:
        """The CPU list its command pins it to ("0-15", its --cpus); "" where it runs on any CPU.
        Read from the command, which is what runs, so that it cannot disagree with it."""
        return option_value(self.command, "--cpus") or ""

    def _check_environment(self) -> None:
        # The instance's GPU and temp dir reach the process only through its environment: if the two
        # disagree, the fleet would put two instances on one GPU or share temp files between them.
        expected = {
            "CUDA_VISIBLE_DEVICES": self.gpu or "",
            "TMPDIR": str(self.temp_dir),
            "GRADIO_TEMP_DIR": str(self.temp_dir),
        }
        for key, value in expected.items():
            found = self.environment.get(key)
            if found != value:
                raise ValueError(f"{self.name}: environment[{key!r}] must be {value!r}, got {found!r}")


@dataclass(frozen=True, kw_only=True)
class SupervisorSettings:
    """How supervisord starts, restarts and stops every instance, and how it rotates their logs."""

    # Up this long counts as started: long enough to load the models, so that an instance that
    # fails while loading is a failed start (retried startretries times, then FATAL), not a crash
    # after a good start (which autorestart would retry forever).
    startsecs: int = 60
    startretries: int = 3  # failed starts in a row before the program is FATAL
    stopwaitsecs: int = 60  # an instance finishes its in-flight work on SIGTERM; then SIGKILL
    autorestart: bool = True
    logfile_maxbytes: int = 50 * 1024 * 1024
    logfile_backups: int = 5

    def __post_init__(self) -> None:
        for name in ("startsecs", "startretries", "stopwaitsecs", "logfile_maxbytes", "logfile_backups"):
            if getattr(self, name) < 0:
                raise ValueError(f"supervisor setting {name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True)
class FleetSpec:
    """The whole fleet: instances, the nginx load balancer, and the run directory holding their files."""

    run_dir: Path
    project_dir: Path  # where `up` ran: every program's working directory, so relative paths hold
    instances: tuple[InstanceSpec, ...]
    max_body_bytes: int  # the instances' upload limit; nginx's client_max_body_size equals it
    lb_host: str = DEFAULT_HOST
    lb_port: int = DEFAULT_LB_PORT
    proxy_timeout_s: int = DEFAULT_PROXY_TIMEOUT_S
    nginx_binary: str = "nginx"
    # The interpreter of the fleet's own helpers (nginx's guard): the launcher's. A fleet.json
    # written before this field existed gets the one reading it.
    python: str = sys.executable
    # Set only when the launcher runs as root: nginx's workers would otherwise switch to "nobody"
    # and lose access to the run directory (mode 0700). Unprivileged, nginx ignores the directive.
    nginx_user: str | None = None
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    # Instances being drained for a restart: nginx gives them no new sessions and no API requests,
    # but their own sessions still reach them.
    draining: frozenset[str] = frozenset()
    # Instances stopped or restarting: nginx sends even their own sessions to the others.
    down: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.instances:
            raise ValueError("a fleet needs at least one instance")
        unknown = (self.draining | self.down) - {instance.name for instance in self.instances}
        if unknown:
            raise ValueError(f"cannot drain unknown instances: {', '.join(sorted(unknown))}")
        if not self.serving:
            raise ValueError("at least one instance must stay in service")
        if self.max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be > 0, got {self.max_body_bytes}")
        if self.proxy_timeout_s <= 0:
            raise ValueError(f"proxy_timeout_s must be > 0, got {self.proxy_timeout_s}")
        check_port(self.lb_port, "load balancer port")
        self._check_unique()
        self._check_socket_path()

    def _check_unique(self) -> None:
        names = [instance.name for instance in self.instances]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"instance names must be unique: {', '.join(duplicates)}")
        # Two listeners on one port fail at start, late and confusingly: catch it here.
        ports = [self.lb_port] + [instance.port for instance in self.instances]
        clashes = sorted({port for port in ports if ports.count(port) > 1})
        if clashes:
            raise ValueError(f"ports must be unique (load balancer and instances): {clashes}")

    def _check_socket_path(self) -> None:
        size = len(str(self.socket_path).encode())
        if size > MAX_SOCKET_PATH_BYTES:
            raise ValueError(
                f"supervisord socket path is {size} bytes, over the {MAX_SOCKET_PATH_BYTES} a Unix "
                f"socket allows here: {self.socket_path}; choose a shorter run directory"
            )

    @property
    def serving(self) -> tuple[InstanceSpec, ...]:
        """The instances that take new sessions and API requests."""
        return tuple(i for i in self.instances if i.name not in self.draining | self.down)

    # Files of supervisord, all inside the run directory.
    @property
    def socket_path(self) -> Path:
        return self.run_dir / "supervisor.sock"

    @property
    def server_url(self) -> str:
        """What supervisorctl and XML-RPC clients connect to."""
        return "unix://" + str(self.socket_path)

    @property
    def supervisord_pid_file(self) -> Path:
        return self.run_dir / "supervisord.pid"

    @property
    def supervisord_log_file(self) -> Path:
        return self.run_dir / "supervisord.log"

    @property
    def supervisord_conf(self) -> Path:
        return self.run_dir / "supervisord.conf"

    # Files of nginx.
    @property
    def nginx_conf(self) -> Path:
        return self.run_dir / "nginx.conf"

    @property
    def nginx_prefix(self) -> Path:
        return self.run_dir / "nginx"

    @property
    def nginx_pid_file(self) -> Path:
        return self.nginx_prefix / "nginx.pid"

    @property
    def nginx_temp_dirs(self) -> dict[str, Path]:
        """The five temp directories by kind ("client_body", "proxy", ...), inside the nginx prefix."""
        return {kind: self.nginx_prefix / f"{kind}_temp" for kind in NGINX_TEMP_KINDS}

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def nginx_access_log(self) -> Path:
        return self.logs_dir / "nginx-access.log"

    @property
    def nginx_error_log(self) -> Path:
        return self.logs_dir / "nginx-error.log"


def make_instance(
    index: int,
    *,
    port: int,
    command: Sequence[str],
    run_dir: Path,
    gpu: str | None = None,
    host: str = DEFAULT_HOST,
    extra_environment: Mapping[str, str] | None = None,
) -> InstanceSpec:
    """An InstanceSpec with the conventional name, temp dir, log file and environment."""
    name = instance_name(index)
    temp_dir = run_dir / "tmp" / name
    return InstanceSpec(
        name=name,
        index=index,
        host=host,
        port=port,
        gpu=gpu,
        command=tuple(command),
        environment=instance_environment(gpu, temp_dir, extra_environment),
        temp_dir=temp_dir,
        log_file=run_dir / "logs" / f"{name}.log",
    )


def instance_environment(
    gpu: str | None, temp_dir: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The variables one instance needs on top of what supervisord inherits from the launcher."""
    environment = dict(extra or {})
    environment.update(
        {
            # "" hides every GPU: a CPU instance must not grab one by accident.
            "CUDA_VISIBLE_DEVICES": gpu or "",
            # CUDA numbers devices fastest-first by default, NVML by PCI bus: make them agree, so
            # that the NVML index the launcher picked is the device the instance gets.
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            # Each instance its own temp dir, so uploads of one never collide with or get cleaned
            # up by another, and the launcher can clear one instance's leftovers alone.
            "TMPDIR": str(temp_dir),
            "GRADIO_TEMP_DIR": str(temp_dir),
            # Output goes to a pipe read by supervisord: without this Python buffers it in blocks
            # and the log lags, or loses the last lines when the process is killed.
            "PYTHONUNBUFFERED": "1",
        }
    )
    return environment


def check_name(name: str) -> None:
    if not _NAME_PATTERN.fullmatch(name):
        raise ValueError(f"bad instance name {name!r}: use letters, digits, '_', '.', '-'")


def check_port(port: int, what: str) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"{what} must be in 1..65535, got {port}")
