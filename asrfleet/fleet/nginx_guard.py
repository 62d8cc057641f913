"""Run nginx so that its workers never outlive their master.

    python -m asrfleet.fleet.nginx_guard --pid-file PID_FILE -- nginx -p PREFIX -c CONF ...

supervisord runs this in place of nginx. nginx's workers do not watch their master: when the master
is killed they keep serving and keep the listening port, and every nginx supervisord starts after
that fails to bind. nginx has no setting against it, so this small process stands between the two:

- it starts nginx (in the foreground: "daemon off;") as its child, in a process group of its own,
  so that the master and its workers can be ended together without ending this process;
- it passes QUIT, TERM, INT, HUP and USR1 on to the master (supervisord's stop and the launcher's
  reload reach nginx unchanged);
- when the master is gone, for whatever reason, it ends what is left of the master's group (the
  orphaned workers) and exits with the master's status (128 + N for a master killed by signal N),
  so supervisord's restart finds the port free;
- when it starts, it first ends what a previous master left behind if this process itself was
  killed (by SIGKILL, which it cannot catch): the master named in nginx's pid file and its group,
  once each process is checked to be nginx, and the master to be running this same command line;
  a stop signal that comes meanwhile means nginx is not started at all.

Its own messages go to stderr, which supervisord writes to nginx's error log.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from asrfleet.fleet import procfs

STOPS = (signal.SIGQUIT, signal.SIGTERM, signal.SIGINT)
FORWARDED = (*STOPS, signal.SIGHUP, signal.SIGUSR1)
# Orphaned workers get SIGTERM (nginx's fast shutdown), then SIGKILL after this many seconds.
LEFTOVER_GRACE_S = 2.0
# What nginx writes into its title (/proc/PID/cmdline) for the master and for every other process.
MASTER_TITLE = "nginx: master process "
NGINX_TITLE = "nginx: "
EXIT_CANNOT_START = 127  # the shell's status for a command that cannot be run


class Forwarder:
    """Signal handler: passes a signal on to the master; before there is one, notes a stop.

    A reload (HUP) or log reopening (USR1) that comes before the master exists is dropped: the
    master reads the current config and opens its logs when it starts.
    """

    def __init__(self) -> None:
        self.pid: int | None = None
        self.stopping = False

    def install(self) -> None:
        for signum in FORWARDED:
            signal.signal(signum, self.handle)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.pid is not None:
            _kill(self.pid, signum)
        elif signum in STOPS:
            self.stopping = True

    def attach(self, pid: int) -> None:
        self.pid = pid

    def detach(self) -> None:
        self.pid = None  # the master was reaped: its pid may now name another process


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        _parser().error("the nginx command line is missing after --")
    forwarder = Forwarder()
    forwarder.install()  # before the cleanup, which takes seconds: a stop then is not lost
    remove_leftovers(args.pid_file, command)
    return run(command, forwarder)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m asrfleet.fleet.nginx_guard", description=__doc__)
    parser.add_argument("--pid-file", type=Path, required=True, help="nginx's pid file (its `pid` setting)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- nginx and its arguments")
    return parser


def run(command: Sequence[str], forwarder: Forwarder) -> int:
    """Run the master until it exits, then end its group; the exit status to pass on."""
    if forwarder.stopping:
        _say("stopped before nginx started")
        return 0
    # A group of its own (setpgrp, in the child before exec), so that killing the group spares this
    # process. preexec_fn is safe here: this process runs no other thread. (Popen's process_group=
    # does the same without it, but only from Python 3.11.)
    try:
        master = subprocess.Popen(list(command), preexec_fn=os.setpgrp)
    except OSError as err:
        _say(f"cannot start {command[0]}: {err}")
        return EXIT_CANNOT_START
    forwarder.attach(master.pid)
    if forwarder.stopping:
        # Stopped while it was being started, before its own handlers may exist: SIGTERM ends it
        # either way (nginx's fast stop, or the default action), where QUIT could dump a core.
        _kill(master.pid, signal.SIGTERM)
    returncode = master.wait()  # a forwarded signal interrupts nothing: Python retries the wait
    forwarder.detach()
    _say(f"nginx master {master.pid} {_how(returncode)}")
    end_group(master.pid, "its")
    return exit_status(returncode)


def exit_status(returncode: int) -> int:
    """Popen's returncode as a shell would report it: -N (killed by signal N) becomes 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def end_group(pgid: int, whose: str) -> None:
    """End every living process of group `pgid` (the master's: all of them are nginx)."""
    left = procfs.members(groups=[pgid])
    if left:
        _end(left, f"{whose} {len(left)} leftover processes")


def remove_leftovers(pid_file: Path, command: Sequence[str]) -> None:
    """End what a master started by an earlier guard left behind, if it is this nginx's."""
    master_pid = procfs.read_pid_file(pid_file)
    if master_pid is None:
        return
    found = procfs.members(groups=[master_pid])
    if not found:
        return
    master = procfs.read(master_pid)
    # A living leader must be this nginx's master. A dead one's group is still the one it made:
    # Linux does not reuse a pid while a process group of that number has members.
    if master is not None and not master.zombie and master.title != MASTER_TITLE + " ".join(command):
        return
    binary = _real_binary(command[0])
    ours = [p for p in found if p.title.startswith(NGINX_TITLE) and procfs.executable(p.pid) == binary]
    if ours:
        _end(ours, f"{len(ours)} processes left by an earlier nginx master {master_pid}")


def _end(procs: list[procfs.Proc], what: str) -> None:
    _say(f"ending {what}: " + ", ".join(p.describe() for p in procs))
    survivors = procfs.terminate([p.pid for p in procs], LEFTOVER_GRACE_S)
    if survivors:
        _say(f"could not end {', '.join(map(str, survivors))}; nginx may fail to bind its port")


def _real_binary(name: str) -> str:
    return os.path.realpath(shutil.which(name) or name)


def _how(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:  # a real-time signal has no name
        return f"was killed by signal {-returncode}"


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # it exited meanwhile; the wait reports it


def _say(message: str) -> None:
    print(f"asrfleet nginx_guard: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
