"""The contract between the server and a worker model.

A worker model owns concurrency only: it accepts connections on a listening socket,
runs :class:`~sitepeek.handler.Handler` for each one, and stops on request. It also
supplies the few blocking primitives the handler needs, so the handler never knows
whether it runs in a greenlet or an OS thread.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Callable
from typing import Protocol, TypeVar

from sitepeek.changes import ChangeFeed
from sitepeek.config import Config

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


class ConnectionHandler(Protocol):
    """What a worker model needs from the handler (see :class:`sitepeek.handler.Handler`)."""

    stopping: bool
    requests: int  # requests answered so far (the stop summary adds them up)

    @property
    def connection_count(self) -> int: ...

    def serve(self, sock: socket.socket, peer: object = None) -> None: ...

    def adopt(self, sock: socket.socket, peer: object = None) -> None: ...

    def wait_for_room(self, limit: int, timeout: float) -> None: ...

    def wait_closed(self, timeout: float) -> bool: ...

    def begin_shutdown(self) -> None: ...

    def abort_all(self) -> None: ...

    def reclaim_idle(self) -> bool: ...

    def close(self) -> None: ...


HandlerFactory = Callable[[Io], ConnectionHandler]


class WorkerModel(Protocol):
    """A concurrency model, constructed in the supervisor before anything is served."""

    def __init__(self, config: Config, make_handler: HandlerFactory, feed: ChangeFeed) -> None:
        """``feed`` carries file changes to the handlers (relayed across forks if needed)."""

    def run(self, listener: socket.socket, ready: Callable[[], None]) -> None:
        """Serve until SIGINT/SIGTERM; call ``ready`` once the signal handlers are set."""


# Errors of accept() that mean "out of descriptors or memory": back off and retry.
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_MAX_BACKOFF = 1.0


class AcceptBackoff:
    """What an accept loop does when accept() fails: shared by every worker model.

    Running out of descriptors (EMFILE/ENFILE) or memory is logged once and backed off
    exponentially up to a second, so the loop never crashes or spins; other errors
    (ECONNABORTED, EPROTO: that client is already gone) are simply skipped.
    """

    def __init__(self) -> None:
        self._delay = 0.0
        self._warned = False

    def failed(self, exc: OSError) -> float | None:
        """Seconds to sleep before accepting again, or None to just go on."""
        if exc.errno not in _RESOURCE_ERRORS:
            return None
        if not self._warned:
            print(
                f"sitepeek: accept failed ({exc.strerror}); backing off",
                file=sys.stderr,
                flush=True,
            )
            self._warned = True
        self._delay = min(_MAX_BACKOFF, self._delay * 2 or 0.01)
        return self._delay

    def succeeded(self) -> None:
        self._delay = 0.0
