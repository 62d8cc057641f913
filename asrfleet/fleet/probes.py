"""Readiness probes of the instances: real HTTP requests with a timeout, not "the PID exists"."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import httpx

from asrfleet.fleet.spec import FleetSpec, InstanceSpec

PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Readiness:
    ready: bool
    # "ready", "loading", "failed", "foreign" (another process answers), "down": no connection,
    # because nothing runs there, or because an instance accepts connections only once its models
    # are loaded (then `status` shows it as loading).
    status: str
    detail: dict = field(default_factory=dict)


def instance_url(instance: InstanceSpec) -> str:
    host = f"[{instance.host}]" if ":" in instance.host else instance.host
    return f"http://{host}:{instance.port}"


def probe(instance: InstanceSpec, timeout: float = PROBE_TIMEOUT_S) -> Readiness:
    try:
        response = httpx.get(instance_url(instance) + "/readyz", timeout=timeout)
    except httpx.HTTPError:
        return Readiness(False, "down")
    try:
        body = response.json()
    except ValueError:
        body = {}
    if body.get("name") != instance.name:  # a stale or foreign process holds the port
        return Readiness(False, "foreign", body)
    if response.status_code == 200:
        return Readiness(True, "ready", body)
    return Readiness(False, str(body.get("status", f"http {response.status_code}")), body)


def lb_url(spec: FleetSpec) -> str:
    """Where this machine reaches the fleet's nginx: a wildcard address is reached on loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(spec.lb_host, spec.lb_host)
    return f"http://[{host}]:{spec.lb_port}" if ":" in host else f"http://{host}:{spec.lb_port}"


def lb_answers(spec: FleetSpec, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the fleet's port answers nginx's own /healthz (it needs no instance)."""
    try:
        response = httpx.get(lb_url(spec) + "/healthz", timeout=timeout)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.text == "ok\n"


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens there (binding would fail)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def activity(instance: InstanceSpec, timeout: float = PROBE_TIMEOUT_S) -> dict | None:
    """The instance's own traffic counters (`GET /stats`'s `activity`); None when it does not answer."""
    try:
        response = httpx.get(instance_url(instance) + "/stats", timeout=timeout)
        return response.json()["activity"] if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def is_quiet(counters: dict, quiet_s: float) -> bool:
    """No request in flight, none for `quiet_s` seconds, and no upload waiting for its request to
    start (a Gradio client uploads first, then joins the queue): safe to stop."""
    return (
        counters.get("active_requests", 0) == 0
        and counters.get("idle_s", 0) >= quiet_s
        and not counters.get("pending_uploads")
    )
