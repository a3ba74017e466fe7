"""How file-change events travel from the watcher to the connections of a process.

The watcher (:mod:`sitepeek.reload`, watchdog threads) emits two kinds of event into a
:class:`ChangeFeed`: :class:`Pending` when a build (a burst of changes) begins and
:class:`Settled` once it is over. With ``--build`` and ``--run`` (:mod:`sitepeek.build`)
four more travel the same way: :class:`BuildStarted`, :class:`BuildFinished`,
:class:`Serving` and :class:`CompanionExited`. Each handler subscribes to the feed
and moves the event into its worker model's context with ``call_soon_threadsafe``. In
the process model the supervisor relays events to every worker over a socket, as JSON
lines.

Every settled build that changed something gets the next *site version*; events carry
it, and the wall-clock times the build began and ended, so that every process of one
server (and every tab) agrees on it. A subscriber that comes late (a worker process
restarted by the supervisor) is told where requests are answered from, the latest
build and whether one is in flight.

Standard library only: workers import this without importing watchdog.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "INSTANCE",
    "BuildFinished",
    "BuildStarted",
    "ChangeEvent",
    "ChangeFeed",
    "CompanionExited",
    "Outcome",
    "PageSeen",
    "Pending",
    "Relayed",
    "Serving",
    "Settled",
    "Touched",
    "decode",
    "decode_outcome",
    "encode",
    "encode_outcome",
    "wall_ms",
]

# Names this server run: a tab that reconnects to another run reloads. Worker processes
# are forked after this module is imported, so they all share the supervisor's value.
INSTANCE = f"{os.getpid():x}-{time.time_ns():x}"


def wall_ms() -> float:
    """Wall-clock milliseconds: what tabs compare with their own timestamps."""
    return time.time() * 1000.0


@dataclass(frozen=True, slots=True)
class Pending:
    """A build has begun at ``started`` (wall ms); HTML requests wait for it to settle."""

    started: float = 0.0


@dataclass(frozen=True, slots=True)
class Settled:
    """A build is over: ``paths`` changed (root-relative POSIX paths; empty when
    nothing really changed). ``version`` counts the builds that changed something;
    ``started`` and ``ended`` are wall ms."""

    paths: tuple[str, ...]
    version: int = 0
    started: float = 0.0
    ended: float = 0.0


@dataclass(frozen=True, slots=True)
class PageSeen:
    """A tab loaded the page at URL ``path`` (200): while a build may be in flight, a
    request for it that finds no file waits for the build (see livereload). Worker
    processes tell each other through the supervisor."""

    path: str


@dataclass(frozen=True, slots=True)
class BuildStarted:
    """The ``--build`` command started: HTML requests wait until it has finished."""


@dataclass(frozen=True, slots=True)
class BuildFinished:
    """The build ended and what it wrote has been seen by the watcher.

    ``ok``: any build overlay goes away, and ``paths`` (what the build changed) become
    the next site version, a :class:`Settled` like any other change (the server makes
    it, see ``server._start_watcher``); otherwise tabs keep their page and show
    ``title`` and ``output``.
    """

    ok: bool
    title: str
    output: str = ""
    paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Serving:
    """Requests are answered from ``snapshot``, the copy of the last good build, while
    the latest build has failed (see :mod:`sitepeek.snapshot`); empty: from the served
    directory again. Emitted before the :class:`BuildFinished` that opens the gate."""

    snapshot: str = ""


@dataclass(frozen=True, slots=True)
class CompanionExited:
    """A ``--run`` command ended on its own: tabs show ``title`` and its last ``output``."""

    command: str
    title: str
    output: str = ""


@dataclass(frozen=True, slots=True)
class Touched:
    """A client asked that ``paths`` count as changed although their bytes are the same
    (``sitepeek.Server.reload()``): they become the next site version, as an edit would.
    Worker processes tell the supervisor, which numbers the versions."""

    paths: tuple[str, ...]


ChangeEvent = (
    Pending | Settled | PageSeen | BuildStarted | BuildFinished | Serving | CompanionExited
)
# What crosses the relay between the supervisor and its worker processes.
Relayed = ChangeEvent | Touched
Sink = Callable[[ChangeEvent], None]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the tabs of one process did for the build ``version``."""

    version: int
    reloaded: int = 0
    css: int = 0
    images: int = 0
    unaffected: int = 0

    def __add__(self, other: Outcome) -> Outcome:
        return Outcome(
            self.version,
            self.reloaded + other.reloaded,
            self.css + other.css,
            self.images + other.images,
            self.unaffected + other.unaffected,
        )

    def summary(self) -> str:
        """``"tabs: 1 reloaded, 2 css swapped, 3 unaffected"``, or ``"no tabs"``."""
        parts = [
            f"{count} {what}"
            for count, what in (
                (self.reloaded, "reloaded"),
                (self.css, "css swapped"),
                (self.images, "images refreshed"),
                (self.unaffected, "unaffected"),
            )
            if count
        ]
        return "tabs: " + ", ".join(parts) if parts else "no tabs"


class ChangeFeed:
    """Fan-out of change events to the subscribers of this process; thread-safe."""

    def __init__(self) -> None:
        self._sinks: list[Sink] = []
        self._lock = threading.Lock()
        self._latest: Settled | None = None  # the latest build that changed something
        self._pending: Pending | None = None  # a build in flight
        self._serving: Serving | None = None  # answering from a snapshot
        self._failed: BuildFinished | None = None  # the latest build, if it failed
        self._building: BuildStarted | None = None  # a --build command running now
        self._exited: dict[str, CompanionExited] = {}  # --run commands that ended
        self._outcome_sinks: list[Callable[[Outcome], None]] = []
        self._page_sinks: list[Callable[[PageSeen], None]] = []
        self._touch_sinks: list[Callable[[Touched], None]] = []

    def subscribe(self, sink: Sink) -> None:
        """Add ``sink``; it is told at once where requests are answered from (when not
        from the served directory), the latest build and one in flight, and what the
        tabs must show: a failed ``--build`` (then one running now) and the ``--run``
        commands that ended. (Commands start with the server: one that fails at once
        may end before a worker model has made its handlers.)"""
        with self._lock:
            self._sinks.append(sink)
            known = (self._serving, self._latest, self._pending, self._failed, self._building)
            replay: list[ChangeEvent] = [event for event in known if event is not None]
            replay += self._exited.values()
        for event in replay:
            sink(event)

    def reset(self) -> None:
        """Forget every subscriber (a forked worker starts with its own).

        The lock is replaced, not taken: after a fork, the watcher thread that may
        have held it no longer exists. What the feed knows about builds is kept.
        """
        self._lock = threading.Lock()
        self._sinks = []
        self._outcome_sinks = []
        self._page_sinks = []
        self._touch_sinks = []

    def on_page(self, sink: Callable[[PageSeen], None]) -> None:
        """Call ``sink`` with each page a tab of this process loaded."""
        with self._lock:
            self._page_sinks.append(sink)

    def share_page(self, event: PageSeen) -> None:
        """A tab of this process loaded a page (the supervisor tells the other workers)."""
        with self._lock:
            sinks = list(self._page_sinks)
        for sink in sinks:
            sink(event)

    def on_touched(self, sink: Callable[[Touched], None]) -> None:
        """Call ``sink`` with each reload a client of this process asked for."""
        with self._lock:
            self._touch_sinks.append(sink)

    def touch(self, event: Touched) -> None:
        """A client asked for a reload of ``event.paths`` (see :class:`Touched`)."""
        with self._lock:
            sinks = list(self._touch_sinks)
        for sink in sinks:
            sink(event)

    def on_outcome(self, sink: Callable[[Outcome], None]) -> None:
        """Call ``sink`` with what each process's tabs did for each build."""
        with self._lock:
            self._outcome_sinks.append(sink)

    def report(self, outcome: Outcome) -> None:
        """What this process's tabs did for a build (for the terminal's reload line)."""
        with self._lock:
            sinks = list(self._outcome_sinks)
        for sink in sinks:
            sink(outcome)

    def emit(self, event: ChangeEvent) -> None:
        with self._lock:
            sinks = list(self._sinks)
            if isinstance(event, Pending):
                self._pending = event
            elif isinstance(event, Settled):
                self._pending = None
                if event.paths:
                    self._latest = event
            elif isinstance(event, Serving):
                self._serving = event if event.snapshot else None
            elif isinstance(event, BuildStarted):
                self._building = event
            elif isinstance(event, BuildFinished):
                self._building = None
                self._failed = None if event.ok else event
            elif isinstance(event, CompanionExited):
                self._exited[event.command] = event
        for sink in sinks:
            sink(event)


def encode_outcome(outcome: Outcome) -> bytes:
    """One JSON line, for relaying an outcome from a worker to the supervisor."""
    data = {"type": "outcome", **{k: getattr(outcome, k) for k in Outcome.__slots__}}
    return json.dumps(data).encode() + b"\n"


def decode_outcome(line: bytes) -> Outcome | None:
    """The outcome of one relayed line; None for anything malformed."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("type") != "outcome":
        return None
    counts: list[int] = []
    for key in Outcome.__slots__:
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        counts.append(value)
    return Outcome(*counts)


def encode(event: Relayed) -> bytes:
    """One JSON line, for relaying an event to a worker process."""
    if isinstance(event, Pending):
        return json.dumps({"type": "pending", "started": event.started}).encode() + b"\n"
    if isinstance(event, PageSeen):
        return json.dumps({"type": "page", "path": event.path}).encode() + b"\n"
    if isinstance(event, Touched):
        return json.dumps({"type": "touched", "paths": list(event.paths)}).encode() + b"\n"
    if isinstance(event, Settled):
        data: dict[str, object] = {
            "type": "settled",
            "paths": list(event.paths),
            "version": event.version,
            "started": event.started,
            "ended": event.ended,
        }
    elif isinstance(event, BuildStarted):
        data = {"type": "build-started"}
    elif isinstance(event, Serving):
        data = {"type": "serving", "snapshot": event.snapshot}
    elif isinstance(event, BuildFinished):
        data = {"type": "build-finished", "ok": event.ok, "title": event.title}
        data |= {"output": event.output, "paths": list(event.paths)}
    else:
        data = {"type": "companion-exited", "command": event.command, "title": event.title}
        data["output"] = event.output
    return json.dumps(data).encode() + b"\n"


def decode(line: bytes) -> Relayed | None:
    """The event of one relayed line; None for anything malformed."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("type")
    if kind == "pending":
        return Pending(_number(data.get("started")))
    if kind == "page" and isinstance(data.get("path"), str):
        return PageSeen(data["path"])
    if kind == "build-started":
        return BuildStarted()
    if kind == "serving" and isinstance(data.get("snapshot"), str):
        return Serving(data["snapshot"])
    paths = data.get("paths", [])
    title, output, command = (data.get(key, "") for key in ("title", "output", "command"))
    if not isinstance(paths, list) or not all(isinstance(t, str) for t in (title, output, command)):
        return None
    if kind == "touched" and paths:
        return Touched(tuple(str(p) for p in paths))
    if kind == "settled" and "paths" in data:
        version = data.get("version", 0)
        return Settled(
            tuple(str(p) for p in paths),
            version if isinstance(version, int) else 0,
            _number(data.get("started")),
            _number(data.get("ended")),
        )
    if kind == "build-finished" and isinstance(data.get("ok"), bool):
        return BuildFinished(data["ok"], title, output, tuple(str(p) for p in paths))
    if kind == "companion-exited":
        return CompanionExited(command, title, output)
    return None


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0
