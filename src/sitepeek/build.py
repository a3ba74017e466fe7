"""``--build CMD``: the build command, run next to the server, and its gate.

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

After each good build the runner refreshes a private copy of the served directory
(:mod:`sitepeek.snapshot`); while the latest build has failed, every request is answered
from that copy (a :class:`~sitepeek.changes.Serving` event, before the gate opens), so a
generator that emptied its output or wrote half of it before failing never shows.

The command runs as every user command does (:class:`sitepeek.commands.Child`: through
the shell, under the lifeline wrapper). Standard library only; runs in the main process
(the supervisor), in OS threads.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sitepeek.changes import BuildFinished, BuildStarted, ChangeEvent, Serving
from sitepeek.commands import KILL_GRACE, Child, Terminal, describe_exit
from sitepeek.reload import DELETED_PAGE_HOLD, FENCE_PREFIX
from sitepeek.snapshot import Snapshot

__all__ = ["FENCE_PREFIX", "BuildRunner"]

# How long to wait for the watcher to report the fence before giving up on it: longer
# than the watcher holds a batch after its last event (a build that deleted a page), with
# room for a busy machine. Giving up early puts this build's files into the next one's.
FENCE_TIMEOUT = DELETED_PAGE_HOLD + 3.0
# Builds in a row started by the same files changed during the build before: a hint.
LOOP_HINT_AFTER = 3


@dataclass(frozen=True, slots=True)
class _Result:
    ok: bool
    title: str
    output: str
    serve: str | None = None  # answer from here from now on ("": the served directory)


class BuildRunner:
    """Run the build command on request, one at a time, and gate the site watcher.

    ``emit`` puts events on the change feed; ``fence_dir`` is the served directory (None
    when no watcher sees it: the build then finishes as soon as the command has);
    ``on_reload`` is told the paths of each good build that changed any; ``snapshot``
    keeps the last good build's output, for answering while the latest build has failed
    (None: a failed build's output is served as it is).
    """

    def __init__(
        self,
        command: str,
        terminal: Terminal,
        emit: Callable[[ChangeEvent], None],
        cwd: Path,
        fence_dir: Path | None,
        on_reload: Callable[[tuple[str, ...]], None] = lambda paths: None,
        snapshot: Snapshot | None = None,
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
        self._snapshot = snapshot
        self._serving_snapshot = False  # (guarded by _cond)
        self._snapshot_problem: str | None = None  # why there is no copy, as last told
        self._good = 0  # good builds so far

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
        """Stop a running build (its whole group) and the runner thread; remove the
        snapshot."""
        with self._cond:
            self._stopping = True
            child = self._child
            self._cond.notify_all()
        if self._snapshot is not None:
            self._snapshot.cancel()  # (a copy being made must not hold the exit)
        if child is not None:
            child.stop()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(KILL_GRACE + 2.0)
        if self._snapshot is not None:
            self._snapshot.remove()

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
            self._good += 1
            result = _Result(True, f"build ok {seconds:.1f} s", "", "")
            self._terminal.line(result.title)
        else:
            title = f"build failed ({describe_exit(code)}) {seconds:.1f} s"
            serve, served = self._fallback()
            result = _Result(False, title, child.tail.text(), serve)
            self._terminal.line(f"{title} · {served}")
        self._finish(result)
        if code == 0:
            self._keep_snapshot()

    # -- the last good build -------------------------------------------------------------
    def _fallback(self) -> tuple[str | None, str]:
        """Where a failed build's requests are answered from, and how to say so."""
        copy = None if self._snapshot is None else self._snapshot.directory
        if copy is not None:
            return copy, "serving the last good build"
        if not self._good:
            return None, "no good build yet: serving the output as it is"
        return None, f"serving the output as it is ({self._snapshot_problem or 'no copy'})"

    def _keep_snapshot(self) -> None:
        """Copy what the good build changed (the next build waits for it: the copy is
        never made of a half-written site); say once why there is none."""
        if self._snapshot is None:
            return
        problem = self._snapshot.refresh()
        with self._cond:
            if self._stopping:
                return
        if problem is not None and problem != self._snapshot_problem:
            self._terminal.line(
                f"build · no copy of the last good build ({problem}): while a build has "
                "failed, its output is served as it is"
            )
        self._snapshot_problem = problem

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
        serve = result.serve
        if serve is not None and bool(serve) != self._serving_snapshot:
            # Where requests are answered from changes before the gate opens.
            self._serving_snapshot = bool(serve)
            self._emit(Serving(serve))
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
