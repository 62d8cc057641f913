"""FleetSpec and InstanceSpec: derived paths, defaults, and the checks they make when built."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from asrfleet.fleet import state
from asrfleet.fleet.spec import (
    MAX_SOCKET_PATH_BYTES,
    FleetSpec,
    InstanceSpec,
    SupervisorSettings,
    instance_name,
    make_instance,
)

RUN = Path("/srv/fleet/run")


def instance(index: int, gpu: str | None = None, run_dir: Path = RUN) -> InstanceSpec:
    return make_instance(index, port=6006 + index, gpu=gpu, run_dir=run_dir, command=("python", "-m", "x"))


def fleet(*instances: InstanceSpec, **overrides: object) -> FleetSpec:
    fields: dict = dict(
        run_dir=RUN, project_dir=Path("/repo"), instances=instances or (instance(0),), max_body_bytes=1000
    )
    fields.update(overrides)
    return FleetSpec(**fields)


def test_instance_name() -> None:
    assert [instance_name(i) for i in range(3)] == ["asr-0", "asr-1", "asr-2"]
    with pytest.raises(ValueError):
        instance_name(-1)


def test_make_instance_gpu() -> None:
    spec = make_instance(
        1, port=6007, gpu="1", run_dir=RUN, command=["python", "-m", "x"], extra_environment={"HF_HOME": "/h"}
    )
    assert spec.name == "asr-1"
    assert spec.host == "127.0.0.1"
    assert spec.command == ("python", "-m", "x")
    assert spec.temp_dir == RUN / "tmp" / "asr-1"
    assert spec.log_file == RUN / "logs" / "asr-1.log"
    assert spec.environment == {
        "HF_HOME": "/h",
        "CUDA_VISIBLE_DEVICES": "1",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "TMPDIR": str(RUN / "tmp" / "asr-1"),
        "GRADIO_TEMP_DIR": str(RUN / "tmp" / "asr-1"),
        "PYTHONUNBUFFERED": "1",
    }


def test_make_instance_cpu_hides_every_gpu() -> None:
    assert instance(0, gpu=None).environment["CUDA_VISIBLE_DEVICES"] == ""


def test_extra_environment_cannot_override_the_gpu() -> None:
    spec = make_instance(
        0, port=6006, gpu="0", run_dir=RUN, command=["x"], extra_environment={"CUDA_VISIBLE_DEVICES": "3"}
    )
    assert spec.environment["CUDA_VISIBLE_DEVICES"] == "0"


@pytest.mark.parametrize(
    "change",
    [
        {"gpu": "1"},  # environment still says GPU 0
        {"temp_dir": Path("/elsewhere")},  # TMPDIR and GRADIO_TEMP_DIR still say the old dir
        {"command": ()},
        {"port": 0},
        {"name": "asr 0"},
        {"name": "asr:0"},
    ],
)
def test_instance_checks_itself(change: dict) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(instance(0, gpu="0"), **change)


@pytest.mark.parametrize(
    ("arguments", "cpus"),
    [
        ((), ""),
        (("--cpus", "0-15"), "0-15"),
        (("--cpus=16-31",), "16-31"),
        (("--cpus", "0-15", "--threads", "4", "--cpus=16-31"), "16-31"),  # the last counts, as for argparse
        (("--cpus",), ""),  # a flag without its value pins nothing
        (("--cpus-other", "3"), ""),
    ],
)
def test_instance_cpus_are_read_from_its_command(arguments: tuple[str, ...], cpus: str) -> None:
    spec = make_instance(0, port=6006, run_dir=RUN, command=("python", "-m", "instances", *arguments))
    assert spec.cpus == cpus


def test_instance_is_hashable() -> None:
    assert hash(instance(0)) == hash(instance(0))


def test_fleet_defaults_and_paths() -> None:
    spec = fleet(instance(0), instance(1))
    assert (spec.lb_host, spec.lb_port) == ("127.0.0.1", 8000)
    assert spec.proxy_timeout_s == 4 * 3600
    assert spec.nginx_binary == "nginx"
    assert spec.supervisor == SupervisorSettings()
    assert spec.socket_path == RUN / "supervisor.sock"
    assert spec.server_url == "unix:///srv/fleet/run/supervisor.sock"
    assert spec.supervisord_pid_file == RUN / "supervisord.pid"
    assert spec.supervisord_log_file == RUN / "supervisord.log"
    assert spec.supervisord_conf == RUN / "supervisord.conf"
    assert spec.nginx_conf == RUN / "nginx.conf"
    assert spec.nginx_prefix == RUN / "nginx"
    assert spec.nginx_pid_file == RUN / "nginx" / "nginx.pid"
    assert spec.logs_dir == RUN / "logs"
    assert spec.nginx_temp_dirs == {
        kind: RUN / "nginx" / f"{kind}_temp" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    }


def test_supervisor_defaults() -> None:
    settings = SupervisorSettings()
    assert (settings.startsecs, settings.startretries, settings.stopwaitsecs) == (60, 3, 60)
    assert settings.autorestart is True
    assert (settings.logfile_maxbytes, settings.logfile_backups) == (50 * 1024 * 1024, 5)
    with pytest.raises(ValueError):
        SupervisorSettings(startsecs=-1)


@pytest.mark.parametrize(
    "build",
    [
        lambda: fleet(instance(0), instance(0)),  # same name, same port
        lambda: fleet(instance(0), dataclasses.replace(instance(1), port=6006)),
        lambda: fleet(instance(0), lb_port=6006),
        lambda: fleet(instances=()),
        lambda: fleet(max_body_bytes=0),
        lambda: fleet(proxy_timeout_s=0),
        lambda: fleet(lb_port=70000),
    ],
)
def test_fleet_checks_itself(build) -> None:
    with pytest.raises(ValueError):
        build()


def test_socket_path_length_is_checked() -> None:
    fits = Path("/" + "r" * (MAX_SOCKET_PATH_BYTES - len("/supervisor.sock") - 1))
    assert len(str(fleet(run_dir=fits).socket_path)) == MAX_SOCKET_PATH_BYTES
    with pytest.raises(ValueError, match="shorter run directory"):
        fleet(run_dir=Path(str(fits) + "r"))


def test_the_state_file_reads_back_the_fleet_it_was_written_from() -> None:
    spec = fleet(instance(0, gpu="0"), instance(1, gpu="1"), draining=frozenset({"asr-1"}))
    data = json.loads(json.dumps(state.to_dict(spec)))  # as written to and read from fleet.json
    assert data["draining"] == ["asr-1"]
    assert state.from_dict(data) == spec
    data["retired_setting"] = [30, 31]  # a key another version of the launcher wrote
    data["instances"][0]["retired_setting"] = 1
    assert state.from_dict(data) == spec
