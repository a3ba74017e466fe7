"""The wrapper every ``--build`` and ``--run`` command runs under (see :mod:`sitepeek.commands`).

Run as a script, ``python -I -S _lifeline.py FD GRACE ARGV...``, in a session of its
own: it forks ARGV, then waits for it to end or for the lifeline FD to reach end of
file (sitepeek closed it, or died, SIGKILL included). A command that ends on its own
leaves the wrapper with its exit status, and what it left running in its process group
gets SIGTERM; a lifeline that ends, or a SIGTERM/SIGINT to the wrapper, stops the whole
group: SIGTERM, then SIGKILL after GRACE seconds (the wrapper goes with it).
Standard library only, imports nothing of sitepeek: it must start fast.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from types import FrameType

POLL_SECONDS = 0.25  # without pidfd_open: how often to look for the command's end


class _Stop(Exception):
    """The lifeline ended or a stop signal came."""


_stopping: list[int] = []


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if not _stopping:  # a second signal while stopping changes nothing
        _stopping.append(signum)
        raise _Stop


def _start(argv: list[str], lifeline: int) -> int:
    pid = os.fork()
    if pid == 0:
        os.close(lifeline)
        try:
            os.execvp(argv[0], argv)  # noqa: S606  # the user's shell, by design
        except OSError as exc:
            sys.stderr.write(f"sitepeek: cannot run {argv[0]}: {exc.strerror}\n")
        os._exit(127)
    return pid


def _wait(pid: int, lifeline: int) -> int:
    """The command's wait status; raises _Stop when the lifeline ends."""
    waitable = [lifeline]
    with contextlib.suppress(AttributeError, OSError):  # not Linux 5.3+: poll
        waitable.append(os.pidfd_open(pid))
    while True:
        ready = select.select(waitable, [], [], POLL_SECONDS)[0]
        if lifeline in ready:
            raise _Stop
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status


def _stop_group(pid: int, grace: float) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            break
        time.sleep(0.02)
    os.killpg(0, signal.SIGKILL)  # what is left of the group, and this wrapper


def main(args: list[str]) -> None:
    lifeline, grace, argv = int(args[0]), float(args[1]), args[2:]
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    pid = _start(argv, lifeline)
    try:
        status = _wait(pid, lifeline)
    except _Stop:
        _stop_group(pid, grace)
        return  # not reached: SIGKILL
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)  # leftovers of a command that ended on its own
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # end the way the command did, so the caller sees the same signal
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
