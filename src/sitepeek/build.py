"""``--build CMD`` and ``--run CMD``: the user's own commands, run next to the server.

:class:`BuildRunner` runs the build command once at start and again whenever a source
changes: never two at once, and changes during a build give exactly one more build
after it. It also sits between the site watcher and the change feed (:meth:`BuildRunner.
absorb_start`, :meth:`BuildRunner.absorb_settled`): while a build runs, what it writes
into the served directory is collected instead of reloading tabs, and once it has
finished one :class:`~sitepeek.changes.BuildFinished` carries it all, so a build is one
reload (or one overlay when it failed). To know that the watcher has seen everything
the build wrote, the runner drops a *fence* file into the served directory after the
build exits: the watcher reports changes in order, so the batch holding the fence holds
everything before it.

:class:`Companions` keep the ``--run`` commands running as long as the server does.

Every command runs as ``$SHELL -c CMD`` (``/bin/sh`` when SHELL is unset) under a tiny
Python wrapper (:mod:`sitepeek._lifeline`) that leads a session of its own. The wrapper holds
the read end of a *lifeline* pipe whose write end only sitepeek holds: when sitepeek
closes it, or dies in any way (SIGKILL included, the kernel closes it then), the wrapper
sends SIGTERM to its whole process group and SIGKILL after a grace period, so no build
or companion outlives sitepeek. (PR_SET_PDEATHSIG would fire when the *thread* that
started the child ends, and preexec_fn is unsafe in a process with threads.)

Standard library only; runs in the main process (the supervisor), in OS threads. One
module of about 500 lines: the runner, the companions and the child-process handling
they share (output, lifeline, stopping) are one feature, and nothing else uses them.
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
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TextIO

from sitepeek.changes import BuildFinished, BuildStarted, ChangeEvent, CompanionExited
from sitepeek.reload import DELETED_PAGE_HOLD, FENCE_PREFIX

__all__ = ["FENCE_PREFIX", "BuildRunner", "Companions", "Terminal", "shell_argv"]

# SIGTERM first; a command still running this much later gets SIGKILL.
KILL_GRACE = 2.0
# The last this-many characters of a command's output are kept for the overlay.
OUTPUT_TAIL = 64 * 1024
# Named so that no ignore pattern drops it; removed right after the watcher saw it.
# How long to wait for the watcher to report the fence before giving up on it: longer
# than the watcher holds a batch after its last event (a build that deleted a page), with
# room for a busy machine. Giving up early puts this build's files into the next one's.
FENCE_TIMEOUT = DELETED_PAGE_HOLD + 3.0
# Builds in a row started by the same files changed during the build before: a hint.
LOOP_HINT_AFTER = 3
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
        # One write per line, as console.write_line: print() writes the newline apart,
        # and with unbuffered output a reload line (another thread) lands in between.
        with self._lock, contextlib.suppress(OSError, ValueError):
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
            # Output still held by a process the command left behind must not hold us.
            self._reader.join(0.5)
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


@dataclass(frozen=True, slots=True)
class _Result:
    ok: bool
    title: str
    output: str


class BuildRunner:
    """Run the build command on request, one at a time, and gate the site watcher.

    ``emit`` puts events on the change feed; ``fence_dir`` is the served directory (None
    when no watcher sees it: the build then finishes as soon as the command has);
    ``on_reload`` is told the paths of each good build that changed any.
    """

    def __init__(
        self,
        command: str,
        terminal: Terminal,
        emit: Callable[[ChangeEvent], None],
        cwd: Path,
        fence_dir: Path | None,
        on_reload: Callable[[tuple[str, ...]], None] = lambda paths: None,
    ) -> None:
        self._command = command
        self._terminal = terminal
        self._emit = emit
        self._cwd = cwd
        self._fence_dir = fence_dir
        self._polling = False
        self._on_reload = on_reload
        self._cond = threading.Condition()
        self._requested = False
        self._reasons: dict[str, None] = {}  # an ordered set of changed sources
        self._stopping = False
        self._running = False  # from BuildStarted until its BuildFinished is out
        self._during: set[str] = set()  # sources changed while a build ran
        self._last: set[str] = set()  # the sources that started the latest build
        self._loop_streak = 0
        self._loop_told = False
        self._child: Child | None = None
        self._thread = threading.Thread(target=self._loop, name="sitepeek-build", daemon=True)
        # The site gate (guarded by _cond): absorbing between BuildStarted and the fence.
        self._absorbing = False
        self._absorbed: dict[str, None] = {}  # paths written since the last good build
        self._fence: str | None = None  # its reported name, while awaited
        self._result: _Result | None = None  # the build awaiting its fence
        self.builds = 0

    def set_polling(self, polling: bool) -> None:
        """The site watcher polls: the fence must then stay until it was seen."""
        self._polling = polling

    # -- runs ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the runner thread and the first build."""
        self.request(())
        self._thread.start()

    def request(self, changed: Iterable[str]) -> None:
        """Build (again) for these changed sources; thread-safe. A build running now
        is followed by exactly one more, however many requests come meanwhile."""
        changed = tuple(changed)
        with self._cond:
            self._requested = True
            self._reasons.update(dict.fromkeys(changed))
            self._cond.notify_all()
            running = self._running
            if running:
                self._during.update(changed)
        if running and changed:
            self._terminal.line(f"build · queued next · {_summary(changed)}")

    def stop(self) -> None:
        """Stop a running build (its whole group) and the runner thread."""
        with self._cond:
            self._stopping = True
            child = self._child
            self._cond.notify_all()
        if child is not None:
            child.stop()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(KILL_GRACE + 2.0)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._requested and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                reasons = tuple(self._reasons)
                self._requested = False
                self._reasons = {}
                self._note_loop(reasons)
            try:
                self._build(reasons)
            except Exception as exc:  # a failing runner must not end the session silently
                self._terminal.line(f"build · cannot run {self._command!r}: {exc}")

    def _note_loop(self, reasons: Sequence[str]) -> None:
        """Builds that keep being started by the same files, changed each time during
        the build before: the build writes its own sources (Hugo's .hugo_build.lock).
        Say so once; called with ``_cond`` held."""
        same = bool(reasons) and set(reasons) <= self._during and set(reasons) == self._last
        self._loop_streak = self._loop_streak + 1 if same else 0
        self._during, self._last = set(), set(reasons)
        if self._loop_streak == LOOP_HINT_AFTER and not self._loop_told:
            self._loop_told = True
            self._terminal.line(
                f"build · each build changes {_summary(reasons).split(' · ', 1)[1]}, which "
                "starts the next: name the sources with --watch, or --ignore these"
            )

    def _build(self, reasons: Sequence[str]) -> None:
        child = Child(self._command, "build", self._terminal, self._cwd)
        with self._cond:
            if self._stopping:
                return
            self._absorbing = self._running = True
            self._child = child
        self._emit(BuildStarted())
        why = f" · {_summary(reasons)}" if reasons else ""
        self._terminal.line(f"build · {self._command}{why}")
        started = time.monotonic()
        try:
            child.start()
            code = child.wait()
        except OSError as exc:
            code = 127
            child.tail.add(f"sitepeek: cannot start the build: {exc.strerror or exc}")
        seconds = time.monotonic() - started
        with self._cond:
            self._child = None
            if self._stopping:
                return
        self.builds += 1
        if code == 0:
            result = _Result(True, f"build ok {seconds:.1f} s", "")
        else:
            title = f"build failed ({describe_exit(code)}) {seconds:.1f} s"
            result = _Result(False, title, child.tail.text())
        self._terminal.line(result.title)
        self._finish(result)

    # -- the site gate -------------------------------------------------------------------
    def _finish(self, result: _Result) -> None:
        """Wait until the watcher has seen what the build wrote, then tell the tabs."""
        fence_path = self._drop_fence()
        if fence_path is None:
            with self._cond:
                self._release(result)
            return
        name = fence_path.name
        with self._cond:
            self._fence, self._result = name, result
        if not self._polling:
            _remove(fence_path)  # inotify has queued both events already, in order
        deadline = time.monotonic() + FENCE_TIMEOUT
        with self._cond:
            while self._fence == name and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:  # the watcher never reported it: go on without it
                    self._release(result)
                    break
                self._cond.wait(remaining)
        _remove(fence_path)

    def _drop_fence(self) -> Path | None:
        if self._fence_dir is None:
            return None
        path = self._fence_dir / f"{FENCE_PREFIX}{os.getpid()}-{self.builds}"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        except OSError:
            return None  # a read-only site: the gate opens without the fence
        return path

    def _release(self, result: _Result) -> None:
        """End absorbing and emit the build's one event; called with ``_cond`` held."""
        self._absorbing = self._running = False
        self._fence = self._result = None
        paths: tuple[str, ...] = ()
        if result.ok:
            paths = tuple(self._absorbed)
            self._absorbed = {}
        # The overlay goes (or comes) first, then the tabs reload for what changed.
        self._emit(BuildFinished(result.ok, result.title, result.output, paths))
        if paths:
            self._on_reload(paths)
        self._cond.notify_all()

    def absorb_start(self) -> bool:
        """A burst of site changes began: True if the build's gate already holds pages."""
        with self._cond:
            return self._absorbing

    def absorb_settled(self, paths: Sequence[str]) -> tuple[str, ...] | None:
        """A burst settled: None if the build absorbed it, else the paths to reload for
        (the fence left out, so possibly none)."""
        real = tuple(p for p in paths if not _is_fence(p))
        with self._cond:
            if not self._absorbing:
                return real
            self._absorbed.update(dict.fromkeys(real))
            if self._fence is not None and self._fence in paths:
                assert self._result is not None
                self._release(self._result)
            return None


def _is_fence(path: str) -> bool:
    return path.rpartition("/")[2].startswith(FENCE_PREFIX)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _summary(paths: Sequence[str], limit: int = 3) -> str:
    count = len(paths)
    head = f"{count} file changed" if count == 1 else f"{count} files changed"
    more = " …" if count > limit else ""
    return f"{head} · {', '.join(paths[:limit])}{more}"


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
