"""The SSH tunnel hint."""

from __future__ import annotations

import shlex

import pytest

from asrfleet.fleet.ssh import ssh_tunnel_command


def test_placeholders_when_nothing_is_known() -> None:
    assert ssh_tunnel_command([8000, 6006, 6007]) == (
        "ssh -N -L 8000:127.0.0.1:8000 -L 6006:127.0.0.1:6006 -L 6007:127.0.0.1:6007 USER@HOST"
    )


def test_user_and_host() -> None:
    assert ssh_tunnel_command([8000], "gpu7.example.org", user="alice") == (
        "ssh -N -L 8000:127.0.0.1:8000 alice@gpu7.example.org"
    )


def test_user_only_keeps_the_host_placeholder() -> None:
    assert ssh_tunnel_command([8000], user="alice").endswith(" alice@HOST")


def test_host_only() -> None:
    assert ssh_tunnel_command([8000], "gpu7").endswith(" -L 8000:127.0.0.1:8000 gpu7")


def test_host_label_with_user_is_used_as_it_is() -> None:
    assert ssh_tunnel_command([8000], "bob@gpu7", user="alice").endswith(" bob@gpu7")


def test_ssh_port() -> None:
    assert ssh_tunnel_command([8000], "gpu7", user="alice", ssh_port=2222) == (
        "ssh -N -p 2222 -L 8000:127.0.0.1:8000 alice@gpu7"
    )


def test_quotes_the_destination() -> None:
    command = ssh_tunnel_command([8000], "gpu 7;rm", user="al ice")
    assert shlex.split(command)[-1] == "al ice@gpu 7;rm"


def test_each_port_once_in_order() -> None:
    assert ssh_tunnel_command([8000, 6006, 8000], "h").count("8000:") == 1


def test_bind_address() -> None:
    assert "-L 8000:10.0.0.5:8000" in ssh_tunnel_command([8000], "h", bind="10.0.0.5")
    assert shlex.split(ssh_tunnel_command([8000], "h", bind="::1"))[3] == "8000:[::1]:8000"


@pytest.mark.parametrize("ports, ssh_port", [([0], None), ([70000], None), ([8000], 0)])
def test_bad_ports(ports: list[int], ssh_port: int | None) -> None:
    with pytest.raises(ValueError):
        ssh_tunnel_command(ports, "h", ssh_port=ssh_port)
