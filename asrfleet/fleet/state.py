"""The running fleet's description, kept in the run directory so that every later command
(`status`, `stop`, `restart`, a second `up`) works on what is running, not on new arguments."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from asrfleet.fleet.spec import FleetSpec, InstanceSpec, SupervisorSettings

STATE_FILE = "fleet.json"


def save(spec: FleetSpec) -> Path:
    path = spec.run_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(to_dict(spec), indent=2), encoding="utf-8")
    os.replace(tmp, path)  # a crash mid-write never leaves half a file
    return path


def load(run_dir: Path) -> FleetSpec | None:
    path = run_dir.resolve() / STATE_FILE
    if not path.exists():
        return None
    return from_dict(json.loads(path.read_text(encoding="utf-8")))


def to_dict(spec: FleetSpec) -> dict:
    data = dataclasses.asdict(spec)
    data["draining"] = sorted(spec.draining)
    data["down"] = sorted(spec.down)
    return _paths_to_str(data)


def from_dict(data: dict) -> FleetSpec:
    """The FleetSpec `to_dict` wrote. Keys that the dataclasses do not have are left out, so that
    a fleet.json written by another version of the launcher still loads."""
    instances = tuple(
        InstanceSpec(
            **{
                **_known(InstanceSpec, i),
                "command": tuple(i["command"]),
                "temp_dir": Path(i["temp_dir"]),
                "log_file": Path(i["log_file"]),
            }
        )
        for i in data["instances"]
    )
    return FleetSpec(
        **{
            **_known(FleetSpec, data),
            "run_dir": Path(data["run_dir"]),
            "project_dir": Path(data["project_dir"]),
            "instances": instances,
            "supervisor": SupervisorSettings(**_known(SupervisorSettings, data["supervisor"])),
            "draining": frozenset(data.get("draining", [])),
            "down": frozenset(data.get("down", [])),
        }
    )


def _known(cls: type, data: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {key: value for key, value in data.items() if key in names}


def _paths_to_str(value: object) -> object:
    if isinstance(value, dict):
        return {k: _paths_to_str(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_paths_to_str(v) for v in value]
    return str(value) if isinstance(value, Path) else value
