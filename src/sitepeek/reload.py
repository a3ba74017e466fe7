"""Watch the site for changes: watchdog observer, ignore filter, debounce.

The observer runs in real OS threads (watchdog's); every path that survives the
:class:`IgnoreFilter` goes into a :class:`Debouncer`, whose own thread calls ``on_start``
when a burst of changes begins and ``on_settle`` with one :class:`ChangeBatch` once it
has gone quiet. Both callbacks run in that thread: the caller moves them into its worker
model's context (see :mod:`sitepeek.changes`). This is the only module that imports
watchdog.
"""

from __future__ import annotations

import fnmatch
import os
import re
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from watchdog.events import (
    EVENT_TYPE_MODIFIED,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

__all__ = [
    "DEFAULT_IGNORES",
    "ChangeBatch",
    "Debouncer",
    "IgnoreFilter",
    "WatchError",
    "Watcher",
    "print_to_stderr",
]

# Editor and tool droppings that must never trigger a reload. A trailing "/" marks a
# directory pattern; a pattern without "/" is matched against every path component.
DEFAULT_IGNORES: tuple[str, ...] = (
    ".git/",
    ".hg/",
    ".svn/",
    "node_modules/",
    "__pycache__/",
    "*.swp",  # vim swap files (".index.html.swp"), and the next ones vim tries
    "*.swo",
    "*.swx",  # vim's probe for a writable directory
    "4913",  # vim's probe for a writable directory, too
    "*~",  # vim/emacs backup files
    ".#*",  # emacs lock files
    "#*#",  # emacs auto-save files
    "*.tmp",  # write-then-rename temporaries (many editors and tools)
    "*___jb_tmp___",  # JetBrains safe write
    "*___jb_old___",
    ".goutputstream-*",  # GNOME (gedit) safe write
    "*.kate-swp",
    ".DS_Store",
)

POLL_INTERVAL = 0.25
JOIN_TIMEOUT = 2.0

# Everything that can change what a URL serves. Leaving out opened / closed-no-write also
# keeps inotify quiet while the server reads files (its mask is built from this list).
_EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,  # touch / chmod: new mtime, so new validators
    FileClosedEvent,  # close after writing: the end of a slow write
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]


class WatchError(Exception):
    """A path cannot be watched at all; the message is meant for the user."""


def print_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- ignore filter -----------------------------------------------------------------------
def _compile_globs(patterns: Iterable[str]) -> re.Pattern[str] | None:
    alternatives = [f"(?:{fnmatch.translate(p)})" for p in patterns]
    return re.compile("|".join(alternatives)) if alternatives else None


class IgnoreFilter:
    """Glob patterns as data, matched against the parts of a root-relative path.

    ``name`` matches any component (``*.swp``, ``4913``); ``name/`` matches any
    component too, meant for directories (``node_modules/``); a pattern with a ``/``
    inside, or a leading one, is matched against the root-relative POSIX path
    (``build/*.map``, ``/drafts/``: a directory pattern matches everything below it).
    Matching is case-sensitive and ``*`` crosses ``/`` in path patterns (fnmatch).
    """

    __slots__ = ("_component", "_path_dirs", "_path_globs", "patterns")

    def __init__(
        self, patterns: Iterable[str] = DEFAULT_IGNORES, extra: Iterable[str] = ()
    ) -> None:
        self.patterns: tuple[str, ...] = (*patterns, *extra)
        component: list[str] = []
        path_globs: list[str] = []
        path_dirs: list[str] = []
        for pattern in self.patterns:
            is_dir = pattern.endswith("/")
            body = pattern.rstrip("/")
            if not body:
                raise ValueError(f"empty ignore pattern {pattern!r}")
            if "/" in body:
                (path_dirs if is_dir else path_globs).append(body.lstrip("/"))
            else:
                component.append(body)
        self._component = _compile_globs(component)
        self._path_globs = _compile_globs(path_globs)
        self._path_dirs = _compile_globs(path_dirs)

    def __repr__(self) -> str:
        return f"IgnoreFilter({self.patterns!r})"

    def ignored(self, path: str, root: str) -> bool:
        """Whether ``path`` (absolute, or relative to ``root``) is to be ignored.

        A path outside ``root`` is judged by its parts after the leading ``..``.
        """
        rel = os.path.relpath(os.path.join(root, path), root)
        return self.ignores_relative(rel.replace(os.sep, "/"))

    def ignores_relative(self, rel_path: str) -> bool:
        """Whether the root-relative POSIX path ``rel_path`` is to be ignored."""
        parts = [p for p in rel_path.split("/") if p not in {"", ".", ".."}]
        if not parts:
            return False
        if self._component is not None and any(self._component.match(p) for p in parts):
            return True
        if self._path_globs is not None and self._path_globs.match("/".join(parts)):
            return True
        if self._path_dirs is not None:
            dirs = self._path_dirs
            return any(dirs.match("/".join(parts[:n])) for n in range(1, len(parts) + 1))
        return False

    def ignores_name(self, name: str) -> bool:
        """Whether a path with a component ``name`` is ignored wherever it is."""
        return self._component is not None and self._component.match(name) is not None


# -- change batches ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """The paths changed in one settled burst, de-duplicated, in first-seen order.

    Paths are root-relative POSIX paths (``css/site.css``); a change in a watched extra
    path outside the root is reported by its absolute path.
    """

    paths: tuple[str, ...]

    def summary(self, limit: int = 3) -> str:
        """``"3 files · a.css, b.css, x.png"``; more than ``limit`` paths end in ``…``."""
        count = len(self.paths)
        head = f"{count} file" if count == 1 else f"{count} files"
        if not count:
            return head
        shown = ", ".join(self.paths[:limit])
        more = " …" if count > limit else ""
        return f"{head} · {shown}{more}"


# -- debounce ----------------------------------------------------------------------------
class Debouncer:
    """Trailing-edge coalescing of change events into batches.

    The first event of a burst calls ``on_start()``; each event restarts a ``delay``
    quiet timer; once ``delay`` passes without an event, ``on_settle(batch)`` is called
    once with everything seen. An event after that starts a new burst: nothing is ever
    dropped. A burst that never goes quiet is flushed ``max_wait`` after it began, so a
    continuous writer cannot starve reloads.

    One daemon thread waits on a condition and runs both callbacks; :meth:`add` only
    records the path and the time, so a build writing thousands of files stays cheap.
    """

    def __init__(
        self,
        delay: float,
        on_start: Callable[[], None],
        on_settle: Callable[[ChangeBatch], None],
        max_wait: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if delay < 0 or max_wait <= 0:
            raise ValueError("delay must be >= 0 and max_wait > 0")
        self._delay = delay
        self._max_wait = max_wait
        self._on_start = on_start
        self._on_settle = on_settle
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._pending: dict[str, None] = {}  # an ordered set
        self._first = 0.0  # when the current burst began
        self._last = 0.0  # when its latest event came
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="sitepeek-debounce", daemon=True)
        self._thread.start()

    def add(self, path: str) -> None:
        """Record a changed path; thread-safe."""
        now = self._clock()
        with self._cond:
            if self._closed:
                return
            if not self._pending:
                self._first = now
                self._cond.notify()  # only a burst's first event needs to wake the thread
            self._pending[path] = None
            self._last = now

    def close(self, timeout: float = JOIN_TIMEOUT) -> None:
        """Stop the thread (joined, bounded by ``timeout``); pending changes are dropped."""
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while self._wait_for_burst():
            self._call(self._on_start)
            batch = self._wait_for_quiet()
            if batch is None:
                return
            self._call(self._on_settle, batch)

    def _wait_for_burst(self) -> bool:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            return not self._closed

    def _wait_for_quiet(self) -> ChangeBatch | None:
        with self._cond:
            while not self._closed:
                deadline = min(self._last + self._delay, self._first + self._max_wait)
                remaining = deadline - self._clock()
                if remaining <= 0:
                    batch = ChangeBatch(tuple(self._pending))
                    self._pending = {}
                    return batch
                self._cond.wait(remaining)
            return None

    @staticmethod
    def _call(callback: Callable[..., None], *args: object) -> None:
        # A failing callback must not end live reload for the rest of the session.
        try:
            callback(*args)
        except Exception:
            traceback.print_exc()


# -- watcher -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Target:
    """One watchdog watch and how its event paths become reported paths."""

    watch_dir: str  # a real path: what watchdog watches and prefixes its paths with
    recursive: bool
    report_prefix: str  # prepended to the watch-relative POSIX path
    only: str | None = None  # a watched file: its name in watch_dir (parent dir watched)

    def report(self, path: str, ignore: IgnoreFilter) -> str | None:
        """The reported form of an event path; None if ignored or not ours."""
        base = self.watch_dir.rstrip(os.sep) + os.sep
        if not path.startswith(base):
            return None
        rel = path[len(base) :].replace(os.sep, "/")
        if self.only is not None:
            return self.report_prefix if rel == self.only else None
        if ignore.ignores_relative(rel):
            return None
        return self.report_prefix + rel


class _Handler(FileSystemEventHandler):
    def __init__(self, target: _Target, ignore: IgnoreFilter, sink: Callable[[str], None]) -> None:
        super().__init__()
        self._target = target
        self._ignore = ignore
        self._sink = sink

    def dispatch(self, event: FileSystemEvent) -> None:
        # A directory's own modified event only echoes the change of an entry in it.
        if event.is_directory and event.event_type == EVENT_TYPE_MODIFIED:
            return
        for raw in (event.src_path, event.dest_path):  # dest_path: moves only
            if raw:
                reported = self._target.report(os.fsdecode(raw), self._ignore)
                if reported is not None:
                    self._sink(reported)


class Watcher:
    """Watch ``root`` (recursive) plus ``extra_paths``; report changes through a Debouncer.

    An extra directory is watched recursively and filtered relative to itself; an extra
    file is watched through its parent directory, so an atomic save (rename onto it) is
    seen. Symbolic links are not followed, by either observer. With ``watch_root=False``
    only the extra paths are watched; ``root`` still decides how paths are reported.
    """

    def __init__(
        self,
        root: str,
        *,
        extra_paths: Sequence[str] = (),
        ignore: IgnoreFilter,
        delay: float = 0.03,
        poll: bool = False,
        on_start: Callable[[], None],
        on_settle: Callable[[ChangeBatch], None],
        log: Callable[[str], None] = print_to_stderr,
        watch_root: bool = True,
    ) -> None:
        self._root = os.fspath(root)
        self._watch_root = watch_root
        self._extra_paths = tuple(os.fspath(p) for p in extra_paths)
        self._ignore = ignore
        self._delay = delay
        self._polling = poll
        self._on_start = on_start
        self._on_settle = on_settle
        self._log = log
        self._observer: BaseObserver | None = None
        self._debouncer: Debouncer | None = None
        self._unfiltered_dirs: frozenset[str] = frozenset()

    @property
    def polling(self) -> bool:
        return self._polling

    def __enter__(self) -> Watcher:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start watching; raises WatchError if a path cannot be watched at all."""
        if self._observer is not None:
            raise RuntimeError("watcher already started")
        targets = self._targets()
        self._unfiltered_dirs = frozenset(t.watch_dir for t in targets if t.only is not None)
        _quiet_watchdog_bookkeeping()
        debouncer = Debouncer(self._delay, self._on_start, self._on_settle)
        try:
            self._observer = self._start_observer(targets, debouncer.add)
        except BaseException:
            debouncer.close()
            raise
        self._debouncer = debouncer

    def stop(self) -> None:
        """Stop the observer and the debouncer threads and join them (bounded)."""
        observer, self._observer = self._observer, None
        if observer is not None:
            _shut_down(observer)
        debouncer, self._debouncer = self._debouncer, None
        if debouncer is not None:
            debouncer.close()

    def _targets(self) -> list[_Target]:
        real_root = _checked_real_path(self._root, "site root")
        if not os.path.isdir(real_root):
            raise WatchError(f"sitepeek: cannot watch {self._root}: not a directory")
        targets = [_Target(real_root, recursive=True, report_prefix="")] if self._watch_root else []
        for extra in self._extra_paths:
            target = _extra_target(extra, _checked_real_path(extra, "watched path"), real_root)
            if target not in targets:
                targets.append(target)
        return targets

    def _start_observer(self, targets: list[_Target], sink: Callable[[str], None]) -> BaseObserver:
        if not self._polling:
            try:
                return self._launch(Observer, targets, sink)
            except OSError as exc:
                # inotify's watch or instance limit (ENOSPC / EMFILE), an unsupported FS...
                reason = exc.strerror or str(exc)
                self._log(f"sitepeek: cannot use native file events ({reason}); polling instead")
                self._polling = True
        try:
            return self._launch(self._polling_observer, targets, sink)
        except OSError as exc:
            raise WatchError(f"sitepeek: cannot watch {self._root}: {exc}") from exc

    def _launch(
        self,
        make: Callable[[], BaseObserver],
        targets: list[_Target],
        sink: Callable[[str], None],
    ) -> BaseObserver:
        observer = make()
        try:
            for target in targets:
                observer.schedule(
                    _Handler(target, self._ignore, sink),
                    target.watch_dir,
                    recursive=target.recursive,
                    event_filter=_EVENT_FILTER,
                )
            observer.start()
        except BaseException:
            _shut_down(observer)
            raise
        return observer

    def _polling_observer(self) -> BaseObserver:
        # lstat, not stat: the default would descend into symlinked directories, out of
        # the tree and around symlink loops. The filtered listing skips ignored trees
        # (node_modules) instead of stat-ing them on every poll.
        observer: BaseObserver = PollingObserverVFS(
            os.lstat, self._list_dir, polling_interval=POLL_INTERVAL
        )
        return observer

    def _list_dir(self, path: str | None) -> Iterator[os.DirEntry[str]]:
        with os.scandir(path) as entries:
            if path in self._unfiltered_dirs:
                return iter(list(entries))
            return iter([e for e in entries if not self._ignore.ignores_name(e.name)])


def _checked_real_path(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise WatchError(f"sitepeek: cannot watch {what} {path}: no such file or directory")
    if not os.access(path, os.R_OK):
        raise WatchError(f"sitepeek: cannot watch {what} {path}: permission denied")
    return os.path.realpath(path)


def _extra_target(extra: str, real: str, real_root: str) -> _Target:
    """Inside the root an extra path reports root-relative paths, outside absolute ones."""
    if os.path.commonpath([real, real_root]) == real_root:
        reported = os.path.relpath(real, real_root).replace(os.sep, "/")
    else:
        reported = os.path.abspath(extra).replace(os.sep, "/")
    if os.path.isdir(real):
        prefix = "" if reported == "." else reported + "/"
        return _Target(real, recursive=True, report_prefix=prefix)
    parent, name = os.path.split(real)
    return _Target(parent, recursive=False, report_prefix=reported, only=name)


def _quiet_watchdog_bookkeeping() -> None:
    """Silence watchdog's warnings about a watch registered or removed twice.

    A benign race in watchdog's inotify code (``mkdir -p a/b``: ``a/b`` is watched when
    ``a`` is, then again on its own create event) warns from watchdog's reader thread,
    once per directory: noise on the user's terminal, and under ``-W error`` the warning
    becomes an exception that ends that thread, and with it every later event.
    """
    for what in ("already exists", "does not exist"):
        warnings.filterwarnings(
            "ignore",
            message=f"Callback with id .* {what} for watch",
            category=RuntimeWarning,
            module=r"watchdog\.",
        )


def _shut_down(observer: BaseObserver) -> None:
    # stop() unschedules every watch and joins the emitter threads (and inotify's reader).
    observer.stop()
    if observer.is_alive():
        observer.join(JOIN_TIMEOUT)
