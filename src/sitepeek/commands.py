"""The user's own commands, run next to the server: how each one runs, and ``--run``.

:class:`Child` runs one command as ``$SHELL -c CMD`` (``/bin/sh`` when SHELL is unset)
under a tiny Python wrapper (:mod:`sitepeek._lifeline`) that leads a session of its own,
its output streamed to the terminal under a label and its tail kept for the overlay.
The wrapper holds the read end of a *lifeline* pipe whose write end only sitepeek holds:
when sitepeek closes it, or dies in any way (SIGKILL included, the kernel closes it
then), the wrapper sends SIGTERM to its whole process group and SIGKILL after a grace
period, so no build or companion outlives sitepeek. (PR_SET_PDEATHSIG would fire when
the *thread* that started the child ends, and preexec_fn is unsafe in a process with
threads.)

:class:`Companions` keep the ``--run`` commands running as long as the server does; the
``--build`` command's runner is :class:`sitepeek.build.BuildRunner`.

Standard library only; runs in the main process (the supervisor), in OS threads.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TextIO

from sitepeek.changes import ChangeEvent, CompanionExited

__all__ = ["KILL_GRACE", "Child", "Companions", "Terminal", "describe_exit", "shell_argv"]

# SIGTERM first; a command still running this much later gets SIGKILL.
KILL_GRACE = 2.0
# How long an ended command's output is still read: a process it left behind may hold
# the pipe open (it is not waited for longer), and a busy machine may be slow to read.
OUTPUT_WAIT = 2.0
# The last this-many characters of a command's output are kept for the overlay.
OUTPUT_TAIL = 64 * 1024
# Words before the program that names a command's output (npx vite -> "vite").
_LAUNCHERS = frozenset({"npx", "pnpx", "bunx", "exec", "env", "nohup", "time"})

# The wrapper every command runs under: a script, so it starts without sitepeek.
_WRAPPER = Path(__file__).with_name("_lifeline.py")


# The write ends of every lifeline: a process forked from sitepeek (a restarted worker
# of --workers processes) closes them at once, or it would keep them open after a
# SIGKILLed sitepeek and the commands would wait for it too.
_lifelines: set[int] = set()


def _close_lifelines_in_child() -> None:
    for fd in list(_lifelines):
        with contextlib.suppress(OSError):
            os.close(fd)
    _lifelines.clear()


os.register_at_fork(after_in_child=_close_lifelines_in_child)


def shell_argv(command: str, environ: dict[str, str] | None = None) -> list[str]:
    """How ``command`` is run: through the user's shell, ``sh`` as the fallback."""
    env = os.environ if environ is None else environ
    return [env.get("SHELL") or "/bin/sh", "-c", command]


def describe_exit(code: int) -> str:
    """``exit 1`` or ``killed by SIGKILL``, from a Popen return code."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


class Terminal:
    """Lines from several commands' output threads, never interleaved mid-line."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        # A closed terminal must not end the command's output thread.
        with self._lock, contextlib.suppress(OSError, ValueError):
            # One write per line: the reload lines (another thread) are whole writes too,
            # and print() writes the newline apart, so two printing threads can merge
            # their lines.
            self._out.write(text + "\n")
            self._out.flush()

    def output(self, label: str, text: str) -> None:
        self.line(f"{label} | {text}")


class _Tail:
    """The last :data:`OUTPUT_TAIL` characters of a command's output, by line."""

    def __init__(self) -> None:
        self._lines: collections.deque[str] = collections.deque()
        self._size = 0
        self._lock = threading.Lock()

    def add(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)
            self._size += len(line) + 1
            while self._size > OUTPUT_TAIL and len(self._lines) > 1:
                self._size -= len(self._lines.popleft()) + 1

    def clear(self) -> None:
        with self._lock:
            self._lines.clear()
            self._size = 0

    def text(self) -> str:
        with self._lock:
            return "\n".join(self._lines)


class Child:
    """One command under the lifeline wrapper, its output streamed under ``label``."""

    def __init__(self, command: str, label: str, terminal: Terminal, cwd: Path) -> None:
        self.command = command
        self.label = label
        self._terminal = terminal
        self._cwd = cwd
        self.tail = _Tail()
        self._proc: subprocess.Popen[bytes] | None = None
        self._lifeline: int | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()  # start() and stop() from different threads
        self._cancelled = False

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Start the command; raises OSError if even the wrapper cannot start."""
        with self._lock:
            if self._cancelled:
                raise OSError("sitepeek is stopping")
            self._spawn()

    def _spawn(self) -> None:
        read_end, write_end = os.pipe()  # both close-on-exec; pass_fds keeps read_end
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-S",
                    str(_WRAPPER),
                    str(read_end),
                    str(KILL_GRACE),
                    *shell_argv(self.command),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(read_end,),
                start_new_session=True,
                cwd=self._cwd,
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._lifeline = write_end
        _lifelines.add(write_end)
        assert self._proc.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self._proc.stdout,), name="sitepeek-output", daemon=True
        )
        self._reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        with contextlib.suppress(OSError, ValueError):
            for raw in stream:
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.tail.add(text)
                self._terminal.output(self.label, text)

    def wait(self) -> int:
        """The command's return code once it has ended, and its output has been read."""
        assert self._proc is not None
        code = self._proc.wait()
        if self._reader is not None:
            # Output still held by a process the command left behind must not hold us
            # for long; a busy machine may take a moment to read what the command wrote.
            self._reader.join(OUTPUT_WAIT)
            if not self._reader.is_alive() and self._proc.stdout is not None:
                self._proc.stdout.close()  # (read to its end; never under a reader)
        with self._lock:
            self._close_lifeline()
        return code

    def stop(self) -> None:
        """SIGTERM to the command's whole group, SIGKILL after :data:`KILL_GRACE`."""
        with self._lock:
            self._cancelled = True
            proc = self._proc
            if proc is None:
                return
            self._close_lifeline()  # the wrapper does the escalation
        try:
            proc.wait(KILL_GRACE + 1.0)
        except subprocess.TimeoutExpired:  # the wrapper itself is stuck: the group goes
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            with contextlib.suppress(OSError):
                proc.stdout.close()

    def _close_lifeline(self) -> None:
        lifeline, self._lifeline = self._lifeline, None
        if lifeline is not None:
            _lifelines.discard(lifeline)
            os.close(lifeline)


class Companions:
    """The ``--run`` commands: started together, reported when one ends, all stopped."""

    def __init__(
        self,
        commands: Sequence[str],
        terminal: Terminal,
        emit: Callable[[ChangeEvent], None],
        cwd: Path,
    ) -> None:
        self._terminal = terminal
        self._emit = emit
        self._stopping = False
        self._children = [
            Child(command, label, terminal, cwd)
            for command, label in zip(commands, _labels(commands), strict=True)
        ]

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self._children if child.pid is not None]

    def start(self) -> None:
        for child in self._children:
            self._terminal.line(f"run · {child.label}: {child.command}")
            try:
                child.start()
            except OSError as exc:
                self._exited(child, f"cannot start: {exc.strerror or exc}")
                continue
            threading.Thread(
                target=self._watch, args=(child,), name="sitepeek-run", daemon=True
            ).start()

    def _watch(self, child: Child) -> None:
        code = child.wait()
        if not self._stopping:
            self._exited(child, describe_exit(code))

    def _exited(self, child: Child, how: str) -> None:
        title = f"run {child.command!r} ended ({how})"
        self._terminal.line(title)
        self._emit(CompanionExited(child.command, title, child.tail.text()))

    def stop(self) -> None:
        """Stop every companion (in parallel: each may take the grace period)."""
        self._stopping = True
        stoppers = [threading.Thread(target=child.stop, daemon=True) for child in self._children]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join(KILL_GRACE + 2.0)


def _labels(commands: Sequence[str]) -> list[str]:
    """A short name per command for its output prefix: its program, numbered if repeated."""
    names = []
    for command in commands:
        try:
            words = shlex.split(command)
        except ValueError:
            words = command.split()
        program = next(
            (w for w in words if "=" not in w and not w.startswith("-") and w not in _LAUNCHERS),
            "run",
        )
        names.append(os.path.basename(program) or "run")
    counts = collections.Counter(names)
    seen: collections.Counter[str] = collections.Counter()
    labels = []
    for name in names:
        seen[name] += 1
        labels.append(f"{name}#{seen[name]}" if counts[name] > 1 else name)
    return labels
