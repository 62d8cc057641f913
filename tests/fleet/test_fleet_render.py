"""The rendered configs: golden files, supervisord's own parser, and the real `nginx -t`.

To rewrite the golden files after an intended change: ASRFLEET_UPDATE_GOLDEN=1 pytest tests/fleet,
then read the diff before committing it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from supervisor.datatypes import RestartUnconditionally
from supervisor.options import ClientOptions, ServerOptions
from supervisor.process import Subprocess

from asrfleet.fleet.render import (
    NGINX_STARTSECS,
    nginx_command,
    nginx_program_command,
    nginx_test_command,
    render_fleet,
    render_nginx,
    render_supervisord,
    required_directories,
    upstream_name,
)
from asrfleet.fleet.spec import FleetSpec, make_instance

GOLDEN_DIR = Path(__file__).parent / "golden"
MAX_BODY_BYTES = 512 * 1024 * 1024


def golden_spec() -> FleetSpec:
    """Two GPU instances under fixed, fake paths with a space and a "%" (rendering never needs them)."""
    run_dir = Path("/srv/asr fleet/run 100%")
    project_dir = Path("/opt/asr fleet 100%/repo")
    python = str(project_dir / ".venv" / "bin" / "python")
    instances = tuple(
        make_instance(
            index,
            port=6006 + index,
            gpu=str(index),
            run_dir=run_dir,
            command=(python, "-m", "instances", f"--port={6006 + index}", "--model-cache=/data/models 100%"),
        )
        for index in range(2)
    )
    return FleetSpec(
        run_dir=run_dir,
        project_dir=project_dir,
        instances=instances,
        max_body_bytes=MAX_BODY_BYTES,
        python=python,
    )


@pytest.mark.parametrize("name", ["supervisord.conf", "nginx.conf"])
def test_golden(name: str) -> None:
    rendered = render_fleet(golden_spec())[name]
    golden = GOLDEN_DIR / name
    if os.environ.get("ASRFLEET_UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert rendered == golden.read_text()


def test_render_fleet_names_files_relative_to_run_dir() -> None:
    spec = golden_spec()
    files = render_fleet(spec)
    assert files == {"supervisord.conf": render_supervisord(spec), "nginx.conf": render_nginx(spec)}
    for name in files:
        assert spec.run_dir / name in (spec.supervisord_conf, spec.nginx_conf)


def test_render_is_pure(tmp_path: Path) -> None:
    spec = weird_spec(tmp_path / "never created")
    render_fleet(spec)
    assert not (tmp_path / "never created").exists()


def test_required_directories() -> None:
    spec = golden_spec()
    directories = required_directories(spec)
    assert len(directories) == len(set(directories))
    expected = [spec.run_dir, spec.logs_dir, spec.nginx_prefix, *spec.nginx_temp_dirs.values()]
    expected += [instance.temp_dir for instance in spec.instances]
    assert set(expected) <= set(directories)
    assert all(instance.log_file.parent in directories for instance in spec.instances)


def test_nginx_commands() -> None:
    spec = golden_spec()
    prefix, conf = str(spec.nginx_prefix), str(spec.nginx_conf)
    assert nginx_command(spec) == ["nginx", "-p", prefix, "-c", conf, "-e", "stderr"]
    test = ["nginx", "-t", "-p", prefix, "-c", "/x/t.conf", "-e", "stderr"]
    assert nginx_test_command(spec, Path("/x/t.conf")) == test
    python = str(spec.project_dir / ".venv" / "bin" / "python")
    guard = [python, "-m", "asrfleet.fleet.nginx_guard", "--pid-file", str(spec.nginx_pid_file), "--"]
    assert nginx_program_command(spec) == guard + nginx_command(spec)


# ---- supervisord's own parser -------------------------------------------------------------------


def weird_spec(run_dir: Path, nginx_binary: str = "nginx") -> FleetSpec:
    """A GPU and a CPU instance whose paths, argv and environment hold what is hard to escape."""
    # argv[0] must exist for supervisord to accept it: a link to this Python, in an awkward place.
    program = run_dir.parent / "bin 100% #1" / "python 3"
    argv_tail = ["-m", "instances", "100%", "%(here)s", "it's", 'say "hi"', "back\\slash", "", "a ;b"]
    argv_tail += ["$HOME", "#x", "é"]
    extra = {"HF_HOME": "/models 100%/hf", "QUOTED": 'say "hi" now', "WINDOWS": "C:\\temp\\"}
    extra |= {"LIST": "a,b=c", "DOLLAR": "$HOME"}
    instances = tuple(
        make_instance(
            index,
            port=16006 + index,
            gpu=gpu,
            run_dir=run_dir,
            command=(str(program), *argv_tail, str(run_dir / "x y")),
            extra_environment=extra,
        )
        for index, gpu in enumerate(["0", None])
    )
    return FleetSpec(
        run_dir=run_dir,
        project_dir=run_dir.parent / "project 100%",
        instances=instances,
        max_body_bytes=MAX_BODY_BYTES,
        lb_port=18000,
        nginx_binary=nginx_binary,
        python=str(program),
    )


def write_fleet(spec: FleetSpec) -> None:
    """What the launcher does: make the directories, write the files."""
    for directory in required_directories(spec):
        directory.mkdir(parents=True, exist_ok=True)
    for name, text in render_fleet(spec).items():
        (spec.run_dir / name).write_text(text)


@pytest.fixture
def parsed(tmp_path: Path) -> tuple[FleetSpec, ServerOptions]:
    spec = weird_spec(tmp_path / "run dir 100%")
    program = Path(spec.instances[0].command[0])
    program.parent.mkdir(parents=True)
    program.symlink_to(sys.executable)
    write_fleet(spec)
    options = ServerOptions()
    options.configfile = str(spec.supervisord_conf)
    options.process_config(do_usage=False)  # raises ValueError on a bad file instead of exiting
    return spec, options


def programs(options: ServerOptions) -> dict:
    return {p.name: p for group in options.process_group_configs for p in group.process_configs}


def test_supervisord_runs_each_instance_with_its_exact_argv(parsed) -> None:
    spec, options = parsed
    configs = programs(options)
    for instance in spec.instances:
        # Subprocess.get_execv_args is what supervisord itself calls before execve.
        filename, argv = Subprocess(configs[instance.name]).get_execv_args()
        assert argv == list(instance.command)
        assert filename == instance.command[0]


def test_supervisord_environment_round_trips(parsed) -> None:
    spec, options = parsed
    configs = programs(options)
    for instance in spec.instances:
        assert configs[instance.name].environment == instance.environment
    assert configs["asr-1"].environment["CUDA_VISIBLE_DEVICES"] == ""


def test_supervisord_program_settings(parsed) -> None:
    spec, options = parsed
    configs = programs(options)
    settings = spec.supervisor
    for instance in spec.instances:
        config = configs[instance.name]
        assert config.directory == str(spec.project_dir)
        assert config.stdout_logfile == str(instance.log_file)
        assert config.stdout_logfile_maxbytes == settings.logfile_maxbytes
        assert config.stdout_logfile_backups == settings.logfile_backups
        assert config.redirect_stderr is True
        assert config.stopasgroup is True and config.killasgroup is True
        assert (config.startsecs, config.startretries, config.stopwaitsecs) == (60, 3, 60)
        assert config.autorestart is RestartUnconditionally and config.autostart is True
        assert config.stopsignal == 15


def test_supervisord_nginx_program(parsed) -> None:
    spec, options = parsed
    nginx = programs(options)["nginx"]
    # supervisord's own split (supervisor/process.py); nginx need not be installed for this.
    assert shlex.split(nginx.command) == nginx_program_command(spec)
    assert nginx.stdout_logfile == str(spec.nginx_access_log)
    assert nginx.stderr_logfile == str(spec.nginx_error_log)
    assert nginx.stopasgroup is True and nginx.killasgroup is True
    assert nginx.stopsignal == 3  # SIGQUIT, which the guard passes on: nginx's graceful stop
    # nginx retries a busy port 5 times, 0.5 s apart: a start must outlast that to count.
    assert nginx.startsecs == NGINX_STARTSECS > 2.5
    assert nginx.startretries == spec.supervisor.startretries


def test_supervisord_stops_instances_before_nginx(parsed) -> None:
    spec, options = parsed
    groups = {group.name: group for group in options.process_group_configs}
    # One program per instance, so a changed fleet adds or removes programs without touching others.
    assert sorted(groups) == sorted([i.name for i in spec.instances] + ["nginx"])
    # supervisord stops groups from the highest priority number down: instances first.
    assert all(groups[i.name].priority > groups["nginx"].priority for i in spec.instances)


def test_supervisord_files_and_socket(parsed) -> None:
    spec, options = parsed
    supervisord = options.configroot.supervisord
    assert supervisord.logfile == str(spec.supervisord_log_file)
    assert supervisord.pidfile == str(spec.supervisord_pid_file)
    assert supervisord.childlogdir == str(spec.logs_dir)
    assert supervisord.nodaemon is False  # `supervisord -c FILE` daemonizes itself
    (server,) = supervisord.server_configs
    assert server["file"] == str(spec.socket_path)
    assert server["chmod"] == 0o700
    assert [f.__name__ for _, f, _ in supervisord.rpcinterface_factories] == ["make_main_rpcinterface"]


def test_supervisorctl_finds_the_socket(parsed) -> None:
    spec, _ = parsed
    client = ClientOptions()
    client.configfile = str(spec.supervisord_conf)
    client.process_config(do_usage=False)
    assert client.serverurl == spec.server_url


# ---- nginx --------------------------------------------------------------------------------------


def find_nginx() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


def directives(conf: str) -> str:
    """The config without its comments (no rendered string holds a "#")."""
    return "\n".join(line.split("#", 1)[0] for line in conf.splitlines())


def test_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    binary = find_nginx()
    if binary is None:
        pytest.skip("no nginx binary on PATH or at /usr/sbin/nginx (Debian: apt-get install nginx)")
    spec = weird_spec(tmp_path / 'run dir 100% "q" \\b', nginx_binary=binary)
    write_fleet(spec)
    result = subprocess.run(
        nginx_test_command(spec, spec.nginx_conf), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_limits_and_routing() -> None:
    spec = golden_spec()
    conf = directives(render_nginx(spec))
    assert "ip_hash" not in conf
    assert "non_idempotent" not in conf
    assert re.findall(r"client_max_body_size (\d+);", conf) == [str(spec.max_body_bytes)]
    assert re.findall(r"proxy_next_upstream (.*);", conf) == ["error timeout"]
    assert re.findall(r"proxy_next_upstream_tries (\d+);", conf) == [str(len(spec.instances))]
    assert re.findall(r"proxy_read_timeout (\d+)s;", conf) == [str(spec.proxy_timeout_s)]
    assert "proxy_request_buffering off" not in conf
    assert re.search(r"^\s*proxy_buffering off;", conf, re.M)
    assert re.search(r"listen 127\.0\.0\.1:8000;", conf)


def upstream_block(conf: str, name: str) -> str:
    match = re.search(r"upstream " + name + r" \{(.*?)\}", conf, re.S)
    assert match, name
    return match.group(1)


def test_nginx_upstreams() -> None:
    spec = golden_spec()
    conf = directives(render_nginx(spec))
    ports = [f"127.0.0.1:{instance.port}" for instance in spec.instances]
    new = upstream_block(conf, "asr_new")
    assert "least_conn;" in new and "hash" not in new and "zone asr_new " in new
    assert re.findall(r"server (\S+) max_fails=\d+ fail_timeout=\d+s;", new) == ports
    for instance in spec.instances:
        block = upstream_block(conf, upstream_name(instance.name))
        assert f"zone {upstream_name(instance.name)} " in block
        assert re.findall(r"server (\S+) max_fails=\d+ fail_timeout=\d+s;", block) == [
            f"127.0.0.1:{instance.port}"
        ]
        backups = re.findall(r"server (\S+) backup;", block)
        assert sorted(backups) == sorted(p for p in ports if p != f"127.0.0.1:{instance.port}")


def test_a_draining_instance_takes_no_new_sessions_but_keeps_its_own() -> None:
    spec = dataclasses.replace(golden_spec(), draining=frozenset({"asr-0"}))
    conf = directives(render_nginx(spec))
    new = upstream_block(conf, "asr_new")
    assert re.findall(r"server (\S+) max_fails", new) == ["127.0.0.1:6007"]
    assert "127.0.0.1:6006 max_fails" in upstream_block(conf, upstream_name("asr-0"))
    with pytest.raises(ValueError, match="stay in service"):
        dataclasses.replace(golden_spec(), draining=frozenset({"asr-0", "asr-1"}))


def test_nginx_sticky_cookie_and_locations() -> None:
    conf = directives(render_nginx(golden_spec()))
    routes = re.search(r"map \$cookie_asr_route \$asr_ui_upstream \{(.*?)\}", conf, re.S).group(1)
    assert "default asr_new;" in routes
    assert '"asr-0" instance_asr_0;' in routes and '"asr-1" instance_asr_1;' in routes
    assert "ip_hash" not in conf
    root = re.search(r"location / \{(.*?)\}", conf, re.S).group(1)
    assert "proxy_pass http://$asr_ui_upstream;" in root
    api = re.search(r"location /v1/ \{(.*?)\}", conf, re.S).group(1)
    assert "proxy_pass http://asr_new;" in api
    assert re.search(r"location = /readyz \{\s*proxy_pass http://asr_new;", conf)
    assert re.search(r'location = /healthz \{[^}]*return 200 "ok\\n";', conf)


def test_a_restarting_instance_gets_nothing() -> None:
    spec = dataclasses.replace(golden_spec(), down=frozenset({"asr-1"}))
    conf = directives(render_nginx(spec))
    assert re.findall(r"server (\S+) max_fails", upstream_block(conf, "asr_new")) == ["127.0.0.1:6006"]
    own = upstream_block(conf, upstream_name("asr-1"))
    assert "server 127.0.0.1:6007 down;" in own and "server 127.0.0.1:6006 backup;" in own
