"""The fleet the end-to-end tests share: started once by `launcher.py`, stopped at the end."""

from __future__ import annotations

import pytest
from fleetctl import launcher, teardown

from procs import free_ports, launcher_engine_args


@pytest.fixture(scope="session")
def fleet(paraformer_args, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fleet") / "run"
    # Instances take base_port, base_port + 1, and + 2 when a test grows the fleet to three.
    lb_port = free_ports(1)
    base_port = free_ports(3)
    while lb_port in range(base_port, base_port + 3):
        lb_port = free_ports(1)
    args = [
        "--instances",
        "2",
        "--run-dir",
        str(run_dir),
        "--lb-port",
        str(lb_port),
        "--base-port",
        str(base_port),
        *launcher_engine_args(paraformer_args),
    ]
    try:
        started = launcher(*args, "--ssh-host", "10.200.0.1", "--ssh-port", "2222")
        yield {
            "run_dir": run_dir,
            "url": f"http://127.0.0.1:{lb_port}",
            "args": args,
            "up": started.stdout,
            "lb_port": lb_port,
            "base_port": base_port,
        }
    finally:
        teardown(run_dir)
