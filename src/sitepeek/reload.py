"""Watch the site for changes: watchdog observer, ignore filter, debounce.

The observer runs in real OS threads (watchdog's); every path that survives the
:class:`IgnoreFilter` (and, in the site root, that the server could ever serve: no
dotfiles but ``/.well-known/``) goes into a :class:`Debouncer`, whose own thread calls
``on_start`` when a build begins and ``on_settle`` with one :class:`ChangeBatch` once it
is over; the batch keeps only the paths whose content really changed
(:mod:`sitepeek.fingerprints`). Both callbacks run in that thread: the caller moves them
into its worker model's context (see :mod:`sitepeek.changes`). This is the only module
that imports watchdog; it is over 500 lines because the ignore filter, the debounce and
the observers are one pipeline whose parts are only ever used together.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
import sys
import threading
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
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

from sitepeek.console import write_line
from sitepeek.fingerprints import Fingerprints

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

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".avif", ".svg", ".ico")
PAGE_SUFFIXES = (".html", ".htm")
# What a --build runner names the file it drops when the build has ended (a dotfile, so
# never served and never a reason to reload; the runner waits to see it reported).
FENCE_PREFIX = ".sitepeek-fence-"
POLL_INTERVAL = 0.25
JOIN_TIMEOUT = 2.0

# Builds (see Debouncer). A burst that touches this many paths, or deletes one, is a
# generator's build, not a hand edit: its quiet period is the learned pause between the
# phases of this site's builds. A lone save keeps the short quiet period.
BUILD_PATHS = 3
INITIAL_PAUSE = 0.15  # s: assumed pause between phases until builds were measured
PAUSE_FACTOR = 2.0  # the quiet period of a build: delay + PAUSE_FACTOR * learned pause
LINK_WINDOW = 0.6  # s: a build starting this soon after one ended was its next phase
PAUSES_KEPT = 5  # builds whose pauses are remembered (an outlier ages out)
# A build that deleted a page is not over until the page is back, or until this long
# has passed without an event (a page removed for good).
DELETED_PAGE_HOLD = 3.0
# A file written and not yet closed is still being written (an editor's save truncates,
# then writes): the burst is not over until it is closed, or this long without an event
# (a writer that keeps a file open). Only where the OS reports closes (inotify).
OPEN_HOLD = 0.5
BUILD_MAX_WAIT = 30.0  # s: even a build that deleted pages is flushed after this long
SCAN_BUDGET = 32 * 1024 * 1024  # bytes hashed at start; files beyond compare by size

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
    write_line(sys.stderr, message)


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
# What an event did to a path: "writing" (written to, a close is to come),
# "closed" (closed after writing), "deleted" (gone, or moved away) or "changed" (anything
# else: metadata, a directory, the target of a move, any event of a polling observer).
Kind = Literal["changed", "writing", "closed", "deleted"]


class Debouncer:
    """Trailing-edge coalescing of change events into batches, one batch per build.

    The first event of a burst calls ``on_start()``; each event restarts a quiet timer;
    once it passes without an event, ``on_settle(batch)`` is called once with everything
    seen. An event after that starts a new burst: nothing is ever dropped. A burst that
    never goes quiet is flushed ``max_wait`` after it began, so a continuous writer
    cannot starve reloads.

    The quiet period is ``delay`` for a hand edit (a burst of fewer than
    :data:`BUILD_PATHS` paths, no deletion), so a lone save reloads at once. A build
    (more paths, or a deletion) writes in phases with pauses between them (MkDocs cleans
    the site, then writes; Sphinx writes its static files, then its pages): its quiet
    period is ``delay`` plus :data:`PAUSE_FACTOR` times the longest pause seen in this
    site's recent builds, both the pauses inside a build and those between a build and
    another that began within :data:`LINK_WINDOW` after it (the phase it was split from,
    itself a build however few paths it touches).
    A build that deleted a page (``add(path, deleted=True)``) is not over while
    ``exists(page)`` is false, for up to :data:`DELETED_PAGE_HOLD` without an event;
    any burst with a file still open for writing (``"writing"`` not yet followed by
    ``"closed"``) is not over for up to :data:`OPEN_HOLD` without an event.

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
        exists: Callable[[str], bool] = os.path.lexists,
    ) -> None:
        if delay < 0 or max_wait <= 0:
            raise ValueError("delay must be >= 0 and max_wait > 0")
        self._delay = delay
        self._max_wait = max_wait
        self._on_start = on_start
        self._on_settle = on_settle
        self._clock = clock
        self._exists = exists
        self._cond = threading.Condition(threading.Lock())
        self._pending: dict[str, None] = {}  # an ordered set
        self._deleted_pages: set[str] = set()
        self._open: set[str] = set()  # written and not closed yet
        self._deleted = False  # the burst deleted something
        self._first = 0.0  # when the current burst began
        self._last = 0.0  # when its latest event came
        self._longest_gap = 0.0  # between two events of the current burst
        self._holding = False  # waiting for deleted pages: every event wakes the thread
        self._held = False  # the burst deleted a page: its pauses are not learned
        self._linked = False  # the burst began right after a build ended
        self._previous_build_end: float | None = None
        self._pauses: deque[float] = deque(maxlen=PAUSES_KEPT)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="sitepeek-debounce", daemon=True)
        self._thread.start()

    @property
    def build_quiet(self) -> float:
        """The quiet period that ends a build (seconds), as learned so far."""
        pause = max(self._pauses, default=INITIAL_PAUSE)
        return self._delay + PAUSE_FACTOR * min(pause, LINK_WINDOW)

    def add(self, path: str, kind: Kind = "changed") -> None:
        """Record what an event did to ``path`` (see :data:`Kind`); thread-safe."""
        now = self._clock()
        with self._cond:
            if self._closed:
                return
            if not self._pending:
                self._first = now
                self._longest_gap = 0.0
                self._deleted = False
                self._held = False
                previous = self._previous_build_end
                gap = LINK_WINDOW if previous is None else now - previous
                # The next phase of the build that just ended: a build too, however few
                # paths it has seen yet.
                self._linked = gap < LINK_WINDOW
                if self._linked:
                    self._pauses.append(gap)
                self._cond.notify()  # a burst's first event wakes the thread
            else:
                self._longest_gap = max(self._longest_gap, now - self._last)
                if self._holding:
                    self._cond.notify()  # maybe a deleted page is back
            self._pending[path] = None
            if kind == "writing":
                self._open.add(path)
            else:
                self._open.discard(path)  # closed, gone, or not tracked
            if kind == "deleted":
                self._deleted = True
                if path.lower().endswith(PAGE_SUFFIXES):
                    self._deleted_pages.add(path)
                    self._held = True
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

    def _is_build(self) -> bool:
        return self._deleted or self._linked or len(self._pending) >= BUILD_PATHS

    def _deadline(self) -> float:
        """When the current burst is over, as far as is known now (under the lock)."""
        build = self._is_build()
        quiet = self._last + (self.build_quiet if build else self._delay)
        max_wait = max(self._max_wait, self.build_quiet) if build else self._max_wait
        self._deleted_pages = {p for p in self._deleted_pages if not self._exists(p)}
        self._holding = bool(self._deleted_pages or self._open)
        if self._deleted_pages:
            quiet = max(quiet, self._last + DELETED_PAGE_HOLD)
            max_wait = BUILD_MAX_WAIT
        elif self._open:
            quiet = max(quiet, self._last + OPEN_HOLD)
        return min(quiet, self._first + max_wait)

    def _wait_for_quiet(self) -> ChangeBatch | None:
        with self._cond:
            while not self._closed:
                remaining = self._deadline() - self._clock()
                if remaining <= 0:
                    return self._take_batch()
                self._cond.wait(remaining)
            return None

    def _take_batch(self) -> ChangeBatch:
        """End the burst (under the lock): its batch; a build's pauses are learned."""
        batch = ChangeBatch(tuple(self._pending))
        if self._is_build():
            # (The pauses of a build held open by deleted pages say nothing: the hold
            # spanned them.)
            if not self._held:
                self._pauses.append(self._longest_gap)
            self._previous_build_end = self._last
        else:
            self._previous_build_end = None
        self._pending = {}
        self._deleted_pages = set()
        self._open = set()
        self._holding = False
        return batch

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
    served_only: bool = False  # the site root: skip what the server never serves

    def report(self, path: str, ignore: IgnoreFilter) -> str | None:
        """The reported form of an event path; None if ignored or not ours."""
        base = self.watch_dir.rstrip(os.sep) + os.sep
        if not path.startswith(base):
            return None
        rel = path[len(base) :].replace(os.sep, "/")
        if self.only is not None:
            return self.report_prefix if rel == self.only else None
        if self.served_only and _is_fence(rel):
            return rel  # whatever --ignore says: the build runner waits for it
        if ignore.ignores_relative(rel) or (self.served_only and not servable(rel)):
            return None
        return self.report_prefix + rel

    def with_all_paths(self) -> _Target:
        """This target, reporting what the server never serves too."""
        return dataclasses.replace(self, served_only=False)


def servable(rel_path: str) -> bool:
    """Could the server ever answer with this root-relative path? Dotfiles never are,
    except below a top-level ``.well-known`` (RFC 8615), as the resolver decides. A
    build's ``.buildinfo`` or ``.doctrees/`` must not reload anything."""
    parts = [p for p in rel_path.split("/") if p]
    if parts and parts[0] == ".well-known":
        parts = parts[1:]
    return not any(part.startswith(".") for part in parts)


def _is_fence(rel_path: str) -> bool:
    """A ``--build`` fence (see :mod:`sitepeek.build`): never served, but the runner
    must see it go by to know the watcher has caught up with the build."""
    return rel_path.startswith(FENCE_PREFIX)


Sink = Callable[[str, Kind], None]  # (reported path, what happened to it)


class _Handler(FileSystemEventHandler):
    def __init__(
        self, target: _Target, ignore: IgnoreFilter, sink: Sink, closes: bool = False
    ) -> None:
        """``closes``: the observer reports a file closed after writing (inotify)."""
        super().__init__()
        self._target = target
        self._ignore = ignore
        self._sink = sink
        self._closes = closes

    def dispatch(self, event: FileSystemEvent) -> None:
        # A directory's own modified event only echoes the change of an entry in it.
        if event.is_directory and event.event_type == EVENT_TYPE_MODIFIED:
            return
        src_kind = self._kind(event)
        for raw, kind in ((event.src_path, src_kind), (event.dest_path, "changed")):
            if raw:  # (dest_path: moves only)
                reported = self._target.report(os.fsdecode(raw), self._ignore)
                if reported is not None:
                    self._sink(reported, kind)

    def _kind(self, event: FileSystemEvent) -> Kind:
        kind = event.event_type
        if kind in (EVENT_TYPE_DELETED, EVENT_TYPE_MOVED):
            return "deleted"  # (a move removes its source)
        if not self._closes or event.is_directory:
            return "changed"
        # (Not a created event: watchdog makes those up for the files of a directory
        # that was new to it, and no close follows them.)
        if kind == EVENT_TYPE_MODIFIED:
            return "writing"
        return "closed" if kind == EVENT_TYPE_CLOSED else "changed"


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
        root = targets[0].watch_dir
        fingerprints = Fingerprints(root)
        fingerprints.scan(
            lambda rel: servable(rel) and not self._ignore.ignores_relative(rel), SCAN_BUDGET
        )

        def settle(batch: ChangeBatch) -> None:
            # A --build fence is gone again before its batch settles, so its content
            # never changed; yet the runner must see it go by (or it waits it out).
            fences = [path for path in batch.paths if _is_fence(path)]
            changed = fingerprints.changed(p for p in batch.paths if not _is_fence(p))
            self._on_settle(ChangeBatch((*changed, *fences)))

        def exists(path: str) -> bool:
            return os.path.lexists(path if os.path.isabs(path) else os.path.join(root, path))

        debouncer = Debouncer(self._delay, self._on_start, settle, exists=exists)
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
        targets = (
            [_Target(real_root, recursive=True, report_prefix="", served_only=True)]
            if self._watch_root
            else []
        )
        for extra in self._extra_paths:
            target = _extra_target(extra, _checked_real_path(extra, "watched path"), real_root)
            if target not in targets and (not targets or target != targets[0].with_all_paths()):
                targets.append(target)
        return targets

    def _start_observer(self, targets: list[_Target], sink: Sink) -> BaseObserver:
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
        sink: Sink,
    ) -> BaseObserver:
        observer = make()
        # inotify reports a close after writing; the other observers do not.
        closes = type(observer).__name__ == "InotifyObserver"
        try:
            for target in targets:
                observer.schedule(
                    _Handler(target, self._ignore, sink, closes),
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
            ignored = self._ignore.ignores_name
            return iter([e for e in entries if not ignored(e.name) or _is_fence(e.name)])


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
