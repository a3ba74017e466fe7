"""The blocking primitives every layer codes against, whatever the worker model.

A worker model (:mod:`sitepeek.workers`) supplies an :class:`Io`; the connection code,
the proxy, live reload and the request log only ever see these protocols, so none of
them knows whether it runs in a greenlet or an OS thread.
"""

from __future__ import annotations

import _socket
import socket
from collections.abc import Callable
from typing import Protocol, TypeVar

__all__ = ["Channel", "FdWait", "Io", "Signal"]

T = TypeVar("T")


class Channel(Protocol):
    """A queue between tasks of one worker model."""

    def put(self, item: object) -> None:
        """Add an item; call from a task of this model (or via call_soon_threadsafe)."""

    def get(self, timeout: float) -> object | None:
        """The next item, or None after ``timeout`` seconds."""


class Signal(Protocol):
    """An event flag tasks can wait on (threading.Event semantics)."""

    def set(self) -> None: ...

    def clear(self) -> None: ...

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class FdWait(Protocol):
    """A reusable wait until one descriptor is readable, or writable (or shut down)."""

    def wait(self) -> None:
        """Block this task until the descriptor is readable (not while notifying)."""

    def notify(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` in the event loop whenever the descriptor is readable,
        until ``notify(None)``; it must not block."""

    def close(self) -> None: ...


class Io(Protocol):
    """Blocking primitives that differ between greenlets and threads."""

    def raw_socket(self, sock: socket.socket) -> _socket.socket | None:
        """The non-blocking OS-level socket under ``sock``, when sending and receiving
        on it directly skips a slower wrapper (gevent's cooperative socket); None
        where ``sock`` is used as it is (threads)."""

    def read_wait(self, fd: int) -> FdWait | None:
        """A wait for ``fd`` to become readable, for a non-blocking socket; None where
        sockets block anyway (threads)."""

    def write_wait(self, fd: int) -> FdWait | None:
        """The same for writable (``notify`` is not used); None where sockets block."""

    def offload(self, work: Callable[[], T]) -> T:
        """Run CPU-heavy ``work`` without blocking other connections; return its result."""

    def spawn(self, task: Callable[[], None]) -> None:
        """Run ``task`` concurrently (a greenlet or a daemon thread)."""

    def channel(self) -> Channel:
        """A new queue for tasks of this model."""

    def signal(self) -> Signal:
        """A new event flag for tasks of this model."""

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` in this model's context; callable from any OS thread."""
