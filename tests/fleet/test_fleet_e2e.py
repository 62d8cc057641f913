"""A real fleet: supervisord, nginx and two CPU instances of the small test model, started by
`python launcher.py --instances 2`, used through nginx, crashed, restarted and resized."""

from __future__ import annotations

import getpass
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fleetctl import launcher
from gradio_client import Client, handle_file

import media
from asrfleet.fleet import state
from asrfleet.fleet.control import Supervisor

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("audio")
    return media.write_format(folder, media.conversation(media.ZH_SENTENCES[:2]), "mp3", "standup")


def transcribe(url: str, path: Path) -> str:
    client = Client(url, verbose=False)
    text, *_ = client.predict(handle_file(str(path)), "", api_name="/transcribe")
    return client.cookies.get("asr_route", "?"), text


def test_up_prints_the_table_the_url_and_one_ssh_command(fleet):
    out = fleet["up"]
    assert re.search(
        rf"asr-0\s+cpu\s+any\s+{fleet['base_port']}\s+http://127.0.0.1:{fleet['base_port']}\s+ready", out
    )
    assert re.search(rf"asr-1\s+cpu\s+any\s+{fleet['base_port'] + 1}\s+\S+\s+ready", out)
    assert f"nginx: http://127.0.0.1:{fleet['lb_port']}" in out
    ssh_lines = [line.strip() for line in out.splitlines() if line.strip().startswith("ssh ")]
    assert len(ssh_lines) == 1
    for port in (fleet["lb_port"], fleet["base_port"], fleet["base_port"] + 1):
        assert f"-L {port}:127.0.0.1:{port}" in ssh_lines[0]


def test_sessions_through_nginx_reach_both_instances(fleet, recording):
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(transcribe(fleet["url"], recording))) for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and all(text for _, text in results)
    assert len({text for _, text in results}) == 1  # the same model everywhere
    assert {route for route, _ in results} == {"asr-0", "asr-1"}


def test_download_links_work_through_nginx(fleet, recording):
    """The links are relative and the instance keeps the file: the routing cookie brings the
    browser back to that instance."""
    client = Client(fleet["url"], verbose=False)
    _, _, links, details = client.predict(handle_file(str(recording)), "", api_name="/transcribe")
    href = next(h for h in re.findall(r'href="([^"]+)"', links) if h.endswith(".srt"))
    answer = httpx.get(f"{fleet['url']}/{href}", cookies=client.cookies, timeout=30)
    assert answer.status_code == 200 and answer.text.startswith("1\n00:00:")
    assert details["sentences"][0]["text"] in answer.text


def test_status(fleet):
    result = launcher("status", "--run-dir", str(fleet["run_dir"]))
    assert result.returncode == 0 and result.stdout.count(" ready") == 2


def test_nginx_is_healthy_and_limits_uploads_like_the_instances(fleet):
    assert httpx.get(fleet["url"] + "/healthz").text == "ok\n"
    assert httpx.get(fleet["url"] + "/readyz").json()["status"] == "ready"


def test_sigkill_an_instance_and_it_comes_back(fleet, recording):
    spec = state.load(fleet["run_dir"])
    supervisor = Supervisor(spec.socket_path)
    victim = supervisor.processes()["asr-0"]
    os.kill(victim.pid, signal.SIGKILL)
    # While it is down, nginx sends its sessions to the other instance.
    assert transcribe(fleet["url"], recording)[1]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        info = supervisor.processes()["asr-0"]
        ready = launcher("status", "--run-dir", str(fleet["run_dir"]), check=False).returncode == 0
        if info.pid not in (0, victim.pid) and ready:
            break
        time.sleep(1)
    else:
        pytest.fail("asr-0 did not come back")
    assert transcribe(f"http://127.0.0.1:{fleet['base_port']}", recording)[1]


def test_rolling_restart_under_a_steady_stream_loses_nothing(fleet, recording):
    stop = threading.Event()
    done, failed = [], []

    def client_loop():
        while not stop.is_set():
            try:
                done.append(transcribe(fleet["url"], recording))
            except Exception as err:  # every failure is a lost request
                failed.append(repr(err))
            time.sleep(0.5)  # a steady stream, not a tight loop: see README, "Restarts"

    workers = [threading.Thread(target=client_loop) for _ in range(3)]
    for w in workers:
        w.start()
    time.sleep(2)
    result = launcher("restart", "--run-dir", str(fleet["run_dir"]))
    time.sleep(2)
    stop.set()
    for w in workers:
        w.join()
    assert "asr-0 is back" in result.stdout and "asr-1 is back" in result.stdout
    assert failed == []
    assert len(done) >= 10


def test_launching_again_reports_the_running_fleet(fleet):
    result = launcher(*fleet["args"])
    assert "already running" in result.stdout and result.stdout.count(" ready") == 2


def test_launching_again_with_more_instances_reconciles(fleet, recording):
    result = launcher(*[a if a != "2" else "3" for a in fleet["args"]])
    assert re.search(r"asr-2\s+cpu\s+any\s+\d+\s+\S+\s+ready", result.stdout)
    assert transcribe(f"http://127.0.0.1:{fleet['base_port'] + 2}", recording)[1]
    result = launcher(*fleet["args"])
    assert "asr-2" not in result.stdout.split("INSTANCE")[-1]
    assert "asr-2" not in Supervisor(state.load(fleet["run_dir"]).socket_path).processes()


def test_logs(fleet):
    result = launcher("logs", "asr-1", "--run-dir", str(fleet["run_dir"]), "-n", "5")
    assert len(result.stdout.strip().splitlines()) <= 5 and "asr-1" in result.stdout


# -- reaching the fleet from a laptop over SSH ---------------------------------------------------

HOST_IP, LAPTOP_IP, SSH_PORT = "10.200.0.1", "10.200.0.2", "2222"


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def laptop(tmp_path_factory):
    """A second host: a network namespace joined to this one by a veth pair, and a real sshd here
    (key auth only) listening on this side of the link."""
    if os.geteuid() != 0 or not shutil.which("ip") or not Path("/usr/sbin/sshd").exists():
        pytest.skip("needs root, iproute2 and openssh-server (.ci/run installs them)")
    ns = f"asrlaptop{os.getpid()}"
    veth = f"vh{os.getpid() % 100000}"
    if _run("ip", "netns", "add", ns, check=False).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    folder = tmp_path_factory.mktemp("ssh")
    sshd = None
    try:
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "vl0", "netns", ns)
        _run("ip", "addr", "add", f"{HOST_IP}/24", "dev", veth)
        _run("ip", "link", "set", veth, "up")
        for cmd in (
            ["ip", "addr", "add", f"{LAPTOP_IP}/24", "dev", "vl0"],
            ["ip", "link", "set", "vl0", "up"],
            ["ip", "link", "set", "lo", "up"],
        ):
            _run("ip", "netns", "exec", ns, *cmd)
        for key in ("host_key", "user_key"):
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key))
        (folder / "authorized_keys").write_text((folder / "user_key.pub").read_text())
        config = folder / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {SSH_PORT}",
                    f"ListenAddress {HOST_IP}",
                    f"HostKey {folder / 'host_key'}",
                    f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                    f"PidFile {folder / 'sshd.pid'}",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "AllowTcpForwarding yes",
                    "",
                ]
            )
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
        time.sleep(1)
        assert sshd.poll() is None, sshd.stderr.read().decode()
        yield {"ns": ns, "key": folder / "user_key"}
    finally:
        if sshd is not None:
            sshd.terminate()
            sshd.wait(timeout=10)
        _run("ip", "netns", "del", ns, check=False)
        _run("ip", "link", "del", veth, check=False)


def test_the_printed_ssh_command_reaches_the_fleet_from_a_laptop(fleet, laptop, recording):
    (command,) = [line.strip() for line in fleet["up"].splitlines() if line.strip().startswith("ssh ")]
    argv = shlex.split(command)
    assert argv[-1] == f"{getpass.getuser()}@{HOST_IP}" and argv[argv.index("-p") + 1] == SSH_PORT
    options = [
        "-i",
        str(laptop["key"]),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "ExitOnForwardFailure=yes",
    ]
    in_laptop = ["ip", "netns", "exec", laptop["ns"]]
    tunnel = subprocess.Popen([*in_laptop, "ssh", *options, *argv[1:]], stderr=subprocess.PIPE)
    try:
        script = (
            "import sys, httpx, time\n"
            "from gradio_client import Client, handle_file\n"
            "for _ in range(50):\n"
            "    try:\n"
            f"        httpx.get('http://127.0.0.1:{fleet['lb_port']}/healthz', timeout=1); break\n"
            "    except httpx.HTTPError: time.sleep(0.2)\n"
            f"print(httpx.get('http://127.0.0.1:{fleet['base_port'] + 1}/readyz').json()['name'])\n"
            f"c = Client('http://127.0.0.1:{fleet['lb_port']}', verbose=False)\n"
            f"print(c.predict(handle_file(sys.argv[1]), '', api_name='/transcribe')[0])\n"
        )
        result = _run(*in_laptop, sys.executable, "-c", script, str(recording), check=False)
        assert result.returncode == 0, result.stderr + (
            tunnel.stderr.read1().decode() if tunnel.poll() else ""
        )
        name, text = result.stdout.strip().splitlines()
        assert name == "asr-1" and text == transcribe(fleet["url"], recording)[1]
    finally:
        tunnel.terminate()
        tunnel.wait(timeout=10)
    # And the laptop cannot reach the fleet without the tunnel: it listens on loopback only.
    direct = _run(
        *in_laptop,
        "python3",
        "-c",
        f"import socket; socket.create_connection(('{HOST_IP}', {fleet['lb_port']}), timeout=2)",
        check=False,
    )
    assert direct.returncode != 0
