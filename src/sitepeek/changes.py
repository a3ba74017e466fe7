"""How file-change events travel from the watcher to the connections of a process.

The watcher (:mod:`sitepeek.reload`, watchdog threads) emits two kinds of event into a
:class:`ChangeFeed`: :class:`Pending` when a burst of changes begins and
:class:`Settled` once it has gone quiet. Each handler subscribes to the feed and moves
the event into its worker model's context with ``call_soon_threadsafe``. In the process
model the supervisor relays events to every worker over a socket, as JSON lines.

Standard library only: workers import this without importing watchdog.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ChangeEvent", "ChangeFeed", "Pending", "Settled", "decode", "encode"]


@dataclass(frozen=True, slots=True)
class Pending:
    """A burst of changes has begun; HTML requests should wait for it to settle."""


@dataclass(frozen=True, slots=True)
class Settled:
    """A burst has settled: ``paths`` changed (root-relative POSIX paths)."""

    paths: tuple[str, ...]


ChangeEvent = Pending | Settled
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
    return json.dumps({"type": "settled", "paths": list(event.paths)}).encode() + b"\n"


def decode(line: bytes) -> ChangeEvent | None:
    """The event of one relayed line; None for anything malformed."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if data.get("type") == "pending":
        return Pending()
    paths = data.get("paths")
    if data.get("type") == "settled" and isinstance(paths, list):
        return Settled(tuple(str(p) for p in paths))
    return None
