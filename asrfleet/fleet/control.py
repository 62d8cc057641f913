"""supervisord, driven over its XML-RPC interface on the fleet's private unix socket."""

from __future__ import annotations

import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path

from supervisor.xmlrpc import SupervisorTransport

# supervisord's process states (supervisor.states.ProcessStates), by name.
RUNNING = "RUNNING"
ALIVE_STATES = {"STARTING", RUNNING}  # the program's process runs (it may not be serving yet)
STOPPED_STATES = {"STOPPED", "EXITED", "FATAL"}


class SupervisorError(RuntimeError):
    pass


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    state: str
    pid: int
    description: str
    exitstatus: int


class Supervisor:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        transport = SupervisorTransport(None, None, "unix://" + str(socket_path))
        self._server = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        self.rpc = self._server.supervisor

    def is_running(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            return self.rpc.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def pid(self) -> int:
        """supervisord's own pid: the session of every process the fleet runs."""
        return int(self.rpc.getPID())

    def start(self, conf: Path, timeout: float = 30.0) -> None:
        """Start supervisord on `conf`; it daemonizes itself. Returns once its socket answers."""
        result = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise SupervisorError(
                f"supervisord did not start: {result.stderr.strip() or result.stdout.strip()}"
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_running():
                return
            time.sleep(0.2)
        raise SupervisorError(f"supervisord started but its socket {self.socket_path} does not answer")

    def processes(self) -> dict[str, ProcessInfo]:
        return {
            p["name"]: ProcessInfo(p["name"], p["statename"], p["pid"], p["description"], p["exitstatus"])
            for p in self.rpc.getAllProcessInfo()
        }

    def stop(self, name: str, wait: bool = True) -> None:
        try:
            self.rpc.stopProcess(name, wait)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString:
                raise

    def start_process(self, name: str, wait: bool = False) -> None:
        try:
            self.rpc.startProcess(name, wait)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_STARTED" not in fault.faultString:
                raise

    def signal(self, name: str, signal_name: str) -> None:
        self.rpc.signalProcess(name, signal_name)

    def reload(self) -> tuple[list[str], list[str], list[str]]:
        """Re-read the config file: the (added, changed, removed) programs."""
        added, changed, removed = self.rpc.reloadConfig()[0]
        return added, changed, removed

    def add(self, name: str) -> None:
        self.rpc.addProcessGroup(name)

    def remove(self, name: str) -> None:
        self.stop(name)
        self.rpc.removeProcessGroup(name)

    def wait_stopped(self, names: list[str], timeout: float) -> list[str]:
        """Wait until every named program has stopped; the names still running at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.processes()
            running = [n for n in names if n in states and states[n].state not in STOPPED_STATES]
            if not running or time.monotonic() > deadline:
                return running
            time.sleep(0.2)

    def shutdown(self, timeout: float = 60.0) -> None:
        try:
            self.rpc.shutdown()
        except (OSError, xmlrpc.client.Error):
            return
        deadline = time.monotonic() + timeout
        while self.is_running() and time.monotonic() < deadline:
            time.sleep(0.2)
