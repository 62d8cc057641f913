"""Render the fleet's supervisord and nginx configs from the Jinja2 templates kept as data files.

Rendering is pure: a FleetSpec goes in, file contents come out; the launcher writes them. Every value
that reaches a config goes through one of the small filters below, because each file format has its
own quoting rules and a path with a space or a "%" must still work.

What supervisord 4.3.0 does with a value (read in supervisor/options.py and datatypes.py, and checked
by parsing rendered files with supervisor's own ServerOptions in the tests):
- every value is %-expanded ("%(here)s", "%(ENV_X)s"), so a literal "%" must be written "%%";
  stdout_logfile/stderr_logfile are expanded twice, so there a "%" must be written "%%%%";
- command= is split with shlex.split (POSIX rules), so each argv element is shell-quoted;
- environment= is split with a NON-POSIX shlex: quotes delimit a value but backslash escapes nothing,
  and the quotes are stripped from both ends of the value;
- the file is read by configparser with inline comments: a ";" or "#" right after whitespace ends
  the value. Commands are written around that; other values that contain it are refused.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path

import jinja2

from asrfleet.fleet.spec import FleetSpec

# The templates ship inside the package, as data (the repository's top-level supervisor/ and nginx/
# point here).
TEMPLATE_ROOT = Path(__file__).resolve().parent / "templates"
SUPERVISORD_TEMPLATE = "supervisor/supervisord.conf.j2"
NGINX_TEMPLATE = "nginx/nginx.conf.j2"
# nginx retries a port in use for about 2.5 s (5 tries, 0.5 s apart) before it exits. supervisord
# counts a program up longer than startsecs as started, and restarts a started one forever: nginx
# must be up longer than its retries to count, so that a port held by another process is a failed
# start (FATAL after startretries), not a crash loop.
NGINX_STARTSECS = 5

# A ";" or "#" after whitespace starts an inline comment in supervisord's configparser.
_INLINE_COMMENT = re.compile(r"(\s)([;#])")
# Characters that would end an ini line or an argv string early.
_LINE_BREAKING = re.compile(r"[\n\r\x00]")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_QUOTES = ('"', "'")


# ---- supervisord filters ------------------------------------------------------------------------


def supervisor_escape(value: object) -> str:
    """A plain value (a path, a name) for supervisord: checked, with "%" doubled."""
    text = str(value)
    check_ini_value(text)
    return text.replace("%", "%%")


def supervisor_logfile(value: object) -> str:
    """A stdout_logfile/stderr_logfile path: supervisord %-expands these twice, so "%" becomes "%%%%"."""
    return supervisor_escape(supervisor_escape(value))


def supervisor_command(argv: Iterable[object]) -> str:
    """An argv as a command= line that supervisord's shlex.split turns back into the same argv."""
    if isinstance(argv, str):
        raise TypeError("supervisor_command takes an argv sequence, not a string")
    parts = []
    for arg in argv:
        text = str(arg)
        if _LINE_BREAKING.search(text):
            raise ValueError(f"argv element {text!r} holds a newline or NUL")
        parts.append(shlex.quote(text))
    if not parts:
        raise ValueError("empty command")
    # shlex.quote puts any whitespace inside single quotes, so a following ";" or "#" is inside the
    # same quotes: closing and reopening them ("''") keeps the argv and hides it from configparser.
    line = _INLINE_COMMENT.sub(r"\1''\2", " ".join(parts))
    return supervisor_escape(line)


def supervisor_environment(environment: Mapping[str, str]) -> str:
    """An environment= value: KEY="value" pairs, sorted by key, joined by commas."""
    return ",".join(_environment_pair(key, environment[key]) for key in sorted(environment))


def _environment_pair(key: str, value: str) -> str:
    if not _ENV_KEY.fullmatch(key):
        raise ValueError(f"bad environment variable name {key!r}")
    # supervisord's non-POSIX shlex has no escapes: a value is quoted with whichever quote it lacks,
    # and one holding both, or starting or ending with a quote (supervisord strips those), cannot
    # be written at all.
    if value.startswith(_ENV_QUOTES) or value.endswith(_ENV_QUOTES):
        raise ValueError(f"environment {key}={value!r}: supervisord strips quotes at either end")
    if '"' in value and "'" in value:
        raise ValueError(f"environment {key}={value!r}: supervisord cannot read both kinds of quote")
    quote = "'" if '"' in value else '"'
    return supervisor_escape(key + "=" + quote + value + quote)


def check_ini_value(text: str) -> None:
    """Refuse what supervisord's configparser would cut short or alter."""
    if _LINE_BREAKING.search(text):
        raise ValueError(f"{text!r}: a supervisord value cannot hold a newline or NUL")
    if text != text.strip():
        raise ValueError(f"{text!r}: supervisord strips whitespace at either end of a value")
    if _INLINE_COMMENT.search(text):
        raise ValueError(f"{text!r}: supervisord reads a ';' or '#' after whitespace as a comment")


# ---- nginx filters ------------------------------------------------------------------------------


def nginx_quote(value: object) -> str:
    """A literal string for nginx, in double quotes with backslash and quote escaped.

    Only for directives that take no variables (paths of pid, temp dirs): in those "$" is literal.
    """
    text = str(value)
    if _LINE_BREAKING.search(text):
        raise ValueError(f"{text!r}: an nginx value cannot hold a newline or NUL")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def upstream_name(instance_name: str) -> str:
    """The nginx upstream of one instance's sessions: "asr-0" -> "instance_asr_0"."""
    return "instance_" + re.sub(r"[^A-Za-z0-9_]", "_", instance_name)


def host_port(host: str, port: int) -> str:
    """host:port for listen and server lines; an IPv6 address goes in brackets."""
    if ":" in host and not host.startswith("["):
        host = "[" + host + "]"
    return f"{host}:{port}"


# ---- rendering ----------------------------------------------------------------------------------


def template_environment(root: Path = TEMPLATE_ROOT) -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(root),
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the render instead of rendering ""
        keep_trailing_newline=True,
        autoescape=False,  # these are config files, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        supervisor_escape=supervisor_escape,
        supervisor_logfile=supervisor_logfile,
        supervisor_command=supervisor_command,
        supervisor_environment=supervisor_environment,
        nginx_quote=nginx_quote,
        upstream_name=upstream_name,
        host_port=host_port,
    )
    return environment


def render_supervisord(spec: FleetSpec) -> str:
    template = template_environment().get_template(SUPERVISORD_TEMPLATE)
    return template.render(
        spec=spec,
        settings=spec.supervisor,
        nginx_program=nginx_program_command(spec),
        nginx_startsecs=NGINX_STARTSECS,
    )


def render_nginx(spec: FleetSpec) -> str:
    return template_environment().get_template(NGINX_TEMPLATE).render(spec=spec)


def render_fleet(spec: FleetSpec) -> dict[str, str]:
    """Every config file of the fleet: its path relative to run_dir, and its contents."""
    return {
        _relative(spec, spec.supervisord_conf): render_supervisord(spec),
        _relative(spec, spec.nginx_conf): render_nginx(spec),
    }


def _relative(spec: FleetSpec, path: Path) -> str:
    return path.relative_to(spec.run_dir).as_posix()


def nginx_command(spec: FleetSpec) -> list[str]:
    """The argv of nginx itself; "daemon off;" in nginx.conf keeps it in the foreground."""
    return [spec.nginx_binary, "-p", str(spec.nginx_prefix), "-c", str(spec.nginx_conf), "-e", "stderr"]


def nginx_program_command(spec: FleetSpec) -> list[str]:
    """The argv supervisord runs for nginx: nginx under its guard (asrfleet.fleet.nginx_guard), which
    ends the workers when their master is gone, so that none keeps the port after a crash."""
    guard = [spec.python, "-m", "asrfleet.fleet.nginx_guard", "--pid-file", str(spec.nginx_pid_file)]
    return [*guard, "--", *nginx_command(spec)]


def nginx_test_command(spec: FleetSpec, conf_path: Path) -> list[str]:
    """The argv of `nginx -t` for the config at conf_path, with the fleet's prefix."""
    return [spec.nginx_binary, "-t", "-p", str(spec.nginx_prefix), "-c", str(conf_path), "-e", "stderr"]


def required_directories(spec: FleetSpec) -> list[Path]:
    """Directories that must exist before supervisord and nginx start (create with parents=True).

    supervisord refuses to start without the directories of its log and pid files, and nginx -t
    fails without its temp directories when it cannot create them.
    """
    candidates = [spec.run_dir, spec.logs_dir, spec.nginx_prefix, *spec.nginx_temp_dirs.values()]
    for instance in spec.instances:
        candidates += [instance.temp_dir, instance.log_file.parent]
    return list(dict.fromkeys(candidates))
