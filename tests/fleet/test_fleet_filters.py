"""The escaping filters, checked against the parsers that read their output."""

from __future__ import annotations

import shlex

import pytest
from supervisor.datatypes import dict_of_key_value_pairs

from asrfleet.fleet.render import (
    check_ini_value,
    host_port,
    nginx_quote,
    supervisor_command,
    supervisor_environment,
    supervisor_escape,
    supervisor_logfile,
)


def expand_once(value: str) -> str:
    # What supervisord does to every value it reads (supervisor.options.expand), with no names used.
    return value % {}


# ---- supervisor_escape --------------------------------------------------------------------------


def test_escape_doubles_percent() -> None:
    assert supervisor_escape("/run dir 100%/x") == "/run dir 100%%/x"
    assert expand_once(supervisor_escape("%(here)s 100%")) == "%(here)s 100%"


def test_escape_keeps_spaces_quotes_backslashes() -> None:
    assert supervisor_escape('/a b/c "d" \\e') == '/a b/c "d" \\e'


def test_escape_accepts_paths_and_numbers() -> None:
    from pathlib import Path

    assert supervisor_escape(Path("/a b/100%")) == "/a b/100%%"
    assert supervisor_escape(10) == "10"


@pytest.mark.parametrize("value", ["/a b ;c", "/a b #c", "/a\t;b", "a\nb", "a\rb", "a\x00b", " a", "a "])
def test_escape_refuses_what_configparser_would_cut(value: str) -> None:
    with pytest.raises(ValueError):
        supervisor_escape(value)


@pytest.mark.parametrize("value", ["/a;b", "/a#b", "/a b;c", "/a%b"])
def test_escape_allows_comment_chars_not_after_whitespace(value: str) -> None:
    check_ini_value(value)


def test_logfile_quadruples_percent() -> None:
    # supervisord expands stdout_logfile twice.
    escaped = supervisor_logfile("/run 100%/asr-0.log")
    assert escaped == "/run 100%%%%/asr-0.log"
    assert expand_once(expand_once(escaped)) == "/run 100%/asr-0.log"


# ---- supervisor_command -------------------------------------------------------------------------


def test_command_simple_argv_stays_readable() -> None:
    assert supervisor_command(["python", "-m", "instances", "--port", "6006"]) == (
        "python -m instances --port 6006"
    )


def test_command_quotes_spaces_and_doubles_percent() -> None:
    assert supervisor_command(["/opt/my env/python", "--title", "100% sure"]) == (
        "'/opt/my env/python' --title '100%% sure'"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["/opt/my env 100%/python", "-m", "instances"],
        ["x", "it's", 'say "hi"', "back\\slash", "tab\there", "", "$HOME", "`id`", "é ü"],
        ["x", "a #b", "c ;d", "#start", ";start", "e\t#f", "g  ;h", "%(here)s", "%%"],
    ],
)
def test_command_round_trips_through_supervisord_splitting(argv: list[str]) -> None:
    line = supervisor_command(argv)
    check_ini_value(line)  # nothing configparser would take for a comment
    # supervisord: %-expansion, then shlex.split (supervisor/process.py get_execv_args).
    assert shlex.split(expand_once(line)) == argv


def test_command_breaks_comment_sequences_inside_quotes() -> None:
    assert supervisor_command(["echo", "a ;b"]) == "echo 'a '';b'"


def test_command_refuses_a_string() -> None:
    with pytest.raises(TypeError):
        supervisor_command("python -m instances")


@pytest.mark.parametrize("argv", [[], ["x", "a\nb"], ["x", "a\x00b"]])
def test_command_refuses_empty_and_line_breaks(argv: list[str]) -> None:
    with pytest.raises(ValueError):
        supervisor_command(argv)


# ---- supervisor_environment ---------------------------------------------------------------------


def test_environment_sorted_quoted_pairs() -> None:
    assert supervisor_environment({"TMPDIR": "/run dir/tmp", "CUDA_VISIBLE_DEVICES": ""}) == (
        'CUDA_VISIBLE_DEVICES="",TMPDIR="/run dir/tmp"'
    )


def test_environment_doubles_percent() -> None:
    assert supervisor_environment({"A": "100%"}) == 'A="100%%"'


def test_environment_uses_single_quotes_around_double_quotes() -> None:
    assert supervisor_environment({"A": 'say "hi" now'}) == "A='say \"hi\" now'"


def test_environment_leaves_backslash_alone() -> None:
    # supervisord's environment lexer is non-POSIX shlex: a backslash is an ordinary character.
    assert supervisor_environment({"A": "C:\\x\\"}) == 'A="C:\\x\\"'


def test_environment_round_trips_through_supervisord_parser() -> None:
    environment = {
        "PLAIN": "1",
        "EMPTY": "",
        "SPACES": "/run dir 100%/tmp",
        "DOUBLE": 'say "hi" now',
        "SINGLE": "it's",
        "BACKSLASH": "back\\slash\\",
        "COMMA": "a,b=c,d",
        "DOLLAR": "$HOME and %(here)s",
        "HASH": "a#b;c",
        "UNICODE": "é ü",
    }
    parsed = dict_of_key_value_pairs(expand_once(supervisor_environment(environment)))
    assert parsed == environment


@pytest.mark.parametrize(
    "key, value",
    [
        ("A", "both \" and '"),
        ("A", '"starts with a quote'),
        ("A", "ends with a quote'"),
        ("A", "a\nb"),
        ("A", "a #b"),
        ("1A", "x"),
        ("A-B", "x"),
        ("", "x"),
    ],
)
def test_environment_refuses_what_supervisord_cannot_read(key: str, value: str) -> None:
    with pytest.raises(ValueError):
        supervisor_environment({key: value})


# ---- nginx --------------------------------------------------------------------------------------


def test_nginx_quote() -> None:
    assert nginx_quote("/run dir 100%/nginx.pid") == '"/run dir 100%/nginx.pid"'
    assert nginx_quote('a"b') == '"a\\"b"'
    assert nginx_quote("a\\b") == '"a\\\\b"'
    assert nginx_quote("a;b{c}") == '"a;b{c}"'


def test_nginx_quote_refuses_line_breaks() -> None:
    with pytest.raises(ValueError):
        nginx_quote("a\nb")


@pytest.mark.parametrize(
    "host, expected",
    [("127.0.0.1", "127.0.0.1:8000"), ("::1", "[::1]:8000"), ("[::1]", "[::1]:8000"), ("lb", "lb:8000")],
)
def test_host_port(host: str, expected: str) -> None:
    assert host_port(host, 8000) == expected
