"""The SSH command a user runs on their own machine to reach a fleet that listens on localhost only."""

from __future__ import annotations

import shlex

PLACEHOLDER_USER = "USER"
PLACEHOLDER_HOST = "HOST"


def ssh_tunnel_command(
    ports: list[int],
    host_label: str | None = None,
    user: str | None = None,
    ssh_port: int | None = None,
    bind: str = "127.0.0.1",
) -> str:
    """One `ssh -N -L ...` command forwarding each port to the same port on the server.

    host_label: how the user reaches the server (a name or address, or "user@host"). With no
    host_label the destination is printed with placeholders, "USER@HOST" or "alice@HOST", for the
    user to fill in; with a host_label and no user it is the host_label alone.
    bind: the address the services listen on, as seen from the server (the forwards' target).
    """
    argv = ["ssh", "-N"]
    if ssh_port is not None:
        _check_port(ssh_port)
        argv += ["-p", str(ssh_port)]
    for port in dict.fromkeys(ports):  # each port once, in the order given
        _check_port(port)
        argv += ["-L", f"{port}:{_forward_host(bind)}:{port}"]
    return shlex.join(argv) + " " + _destination(host_label, user)


def _destination(host_label: str | None, user: str | None) -> str:
    if host_label and ("@" in host_label or not user):
        # Complete as it is; without a user ssh picks one (the local name or ~/.ssh/config).
        return shlex.quote(host_label)
    host = shlex.quote(host_label) if host_label else PLACEHOLDER_HOST
    return (shlex.quote(user) if user else PLACEHOLDER_USER) + "@" + host


def _forward_host(bind: str) -> str:
    # ssh reads an IPv6 address in a forward only in brackets.
    return f"[{bind}]" if ":" in bind else bind


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be in 1..65535, got {port}")
