"""The blocking primitives every layer codes against, whatever the worker model.

A worker model (:mod:`sitepeek.workers`) supplies an :class:`Io`; the connection code,
the proxy, live reload and the request log only ever see these protocols, so none of
them knows whether it runs in a greenlet or an OS thread.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Protocol, TypeVar

__all__ = ["Channel", "FdWait", "Io", "RawSocket", "Signal", "send_all"]

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


class RawSocket(Protocol):
    """Non-blocking send and receive on a connection's socket: BlockingIOError, never
    a wait, when the kernel has no bytes or no room."""

    def recv(self, size: int, /) -> bytes: ...

    def send(self, data: bytes, /) -> int: ...

    def fileno(self) -> int: ...


def send_all(raw: RawSocket | None, sock: socket.socket, data: bytes) -> None:
    """Send ``data`` whole: straight to the non-blocking ``raw`` socket when the kernel
    takes it at once (nearly always for a small answer), else what is left through
    ``sock``, the worker model's blocking (or cooperative) socket over the same one."""
    if raw is not None:
        try:
            sent = raw.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    sock.sendall(data)


class Io(Protocol):
    """Blocking primitives that differ between greenlets and threads."""

    # Tasks come from a bounded pool (threads): an idle connection must not keep one,
    # so it always waits for its next request as a watcher (see Handler.adopt).
    pooled: bool

    def raw_socket(self, sock: socket.socket) -> RawSocket | None:
        """Non-blocking access to ``sock`` beside its own (maybe blocking) calls: the
        OS-level socket under gevent's cooperative one (skipping its slower wrapper),
        or a thread model's blocking socket used with MSG_DONTWAIT; None where the
        model has no event loop to wait for a connection's next request."""

    def read_wait(self, fd: int) -> FdWait | None:
        """A wait for ``fd`` to become readable, for a non-blocking socket; None where
        sockets block anyway (threads)."""

    def write_wait(self, fd: int) -> FdWait | None:
        """The same for writable (``notify`` is not used); None where sockets block."""

    def offload(self, work: Callable[[], T]) -> T:
        """Run CPU-heavy ``work`` without blocking other connections; return its result."""

    def spawn(self, task: Callable[[], None]) -> None:
        """Run ``task`` concurrently (a greenlet or a daemon thread)."""

    def dispatch(self, task: Callable[[], None]) -> None:
        """Run a connection's ``task``: a greenlet, or the next free thread of a pool
        (ready connections queue first come, first served while all are busy)."""

    def detach(self) -> None:
        """The current task will run long (a WebSocket, a proxied exchange): where
        tasks come from a bounded pool, it leaves the pool so as not to hold a slot."""

    def channel(self) -> Channel:
        """A new queue for tasks of this model."""

    def signal(self) -> Signal:
        """A new event flag for tasks of this model."""

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` in this model's context; callable from any OS thread."""
