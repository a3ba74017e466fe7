"""How file-change events travel from the watcher to the connections of a process.

The watcher (:mod:`sitepeek.reload`, watchdog threads) emits two kinds of event into a
:class:`ChangeFeed`: :class:`Pending` when a burst of changes begins and
:class:`Settled` once it has gone quiet. With ``--build`` and ``--run``
(:mod:`sitepeek.build`) three more travel the same way: :class:`BuildStarted`,
:class:`BuildFinished` and :class:`CompanionExited`. Each handler subscribes to the feed and moves
the event into its worker model's context with ``call_soon_threadsafe``. In the process
model the supervisor relays events to every worker over a socket, as JSON lines.

Standard library only: workers import this without importing watchdog.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "BuildFinished",
    "BuildStarted",
    "ChangeEvent",
    "ChangeFeed",
    "CompanionExited",
    "Pending",
    "Settled",
    "decode",
    "encode",
]


@dataclass(frozen=True, slots=True)
class Pending:
    """A burst of changes has begun; HTML requests should wait for it to settle."""


@dataclass(frozen=True, slots=True)
class Settled:
    """A burst has settled: ``paths`` changed (root-relative POSIX paths)."""

    paths: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BuildStarted:
    """The ``--build`` command started: HTML requests wait until it has finished."""


@dataclass(frozen=True, slots=True)
class BuildFinished:
    """The build ended and what it wrote has been seen by the watcher.

    ``ok``: tabs reload once for ``paths`` (none changed: no reload) and any build
    overlay goes away; otherwise tabs keep their page and show ``title`` and ``output``.
    """

    ok: bool
    title: str
    output: str = ""
    paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CompanionExited:
    """A ``--run`` command ended on its own: tabs show ``title`` and its last ``output``."""

    command: str
    title: str
    output: str = ""


ChangeEvent = Pending | Settled | BuildStarted | BuildFinished | CompanionExited
Sink = Callable[[ChangeEvent], None]


class ChangeFeed:
    """Fan-out of change events to the subscribers of this process; thread-safe."""

    def __init__(self) -> None:
        self._sinks: list[Sink] = []
        self._lock = threading.Lock()

    def subscribe(self, sink: Sink) -> None:
        with self._lock:
            self._sinks.append(sink)

    def reset(self) -> None:
        """Forget every subscriber (a forked worker starts with its own).

        The lock is replaced, not taken: after a fork, the watcher thread that may
        have held it no longer exists.
        """
        self._lock = threading.Lock()
        self._sinks = []

    def emit(self, event: ChangeEvent) -> None:
        with self._lock:
            sinks = list(self._sinks)
        for sink in sinks:
            sink(event)


def encode(event: ChangeEvent) -> bytes:
    """One JSON line, for relaying an event to a worker process."""
    if isinstance(event, Pending):
        return b'{"type":"pending"}\n'
    if isinstance(event, Settled):
        data: dict[str, object] = {"type": "settled", "paths": list(event.paths)}
    elif isinstance(event, BuildStarted):
        data = {"type": "build-started"}
    elif isinstance(event, BuildFinished):
        data = {"type": "build-finished", "ok": event.ok, "title": event.title}
        data |= {"output": event.output, "paths": list(event.paths)}
    else:
        data = {"type": "companion-exited", "command": event.command, "title": event.title}
        data["output"] = event.output
    return json.dumps(data).encode() + b"\n"


def decode(line: bytes) -> ChangeEvent | None:
    """The event of one relayed line; None for anything malformed."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("type")
    if kind == "pending":
        return Pending()
    if kind == "build-started":
        return BuildStarted()
    paths = data.get("paths", [])
    title, output, command = (data.get(key, "") for key in ("title", "output", "command"))
    if not isinstance(paths, list) or not all(isinstance(t, str) for t in (title, output, command)):
        return None
    if kind == "settled" and "paths" in data:
        return Settled(tuple(str(p) for p in paths))
    if kind == "build-finished" and isinstance(data.get("ok"), bool):
        return BuildFinished(data["ok"], title, output, tuple(str(p) for p in paths))
    if kind == "companion-exited":
        return CompanionExited(command, title, output)
    return None
