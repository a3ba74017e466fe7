"""The contract between the server and a worker model.

A worker model owns concurrency only: it accepts connections on a listening socket,
runs :class:`~sitepeek.handler.Handler` for each one, and stops on request. It also
supplies the few blocking primitives the handler needs (the protocols of
:mod:`sitepeek.concurrency`, re-exported here), so the handler never knows whether it
runs in a greenlet or an OS thread.
"""

from __future__ import annotations

import errno
import signal
import socket
import sys
from collections.abc import Callable
from typing import Protocol

from sitepeek.changes import ChangeFeed
from sitepeek.concurrency import Io
from sitepeek.config import Config
from sitepeek.console import write_line


class ConnectionHandler(Protocol):
    """What a worker model needs from the handler (see :class:`sitepeek.handler.Handler`)."""

    stopping: bool

    @property
    def requests(self) -> int:
        """Requests answered so far (the stop summary adds them up)."""

    @property
    def connection_count(self) -> int: ...

    def serve(self, sock: socket.socket, peer: object = None) -> None: ...

    def adopt(self, sock: socket.socket, peer: object = None) -> None: ...

    def wait_for_room(self, limit: int, timeout: float) -> None: ...

    def wait_closed(self, timeout: float) -> bool: ...

    def begin_shutdown(self) -> None: ...

    def abort_all(self) -> None: ...

    def reclaim_idle(self, busy_grace: float = 0.0) -> bool: ...

    def close(self) -> None: ...


HandlerFactory = Callable[[Io], ConnectionHandler]


class WorkerModel(Protocol):
    """A concurrency model, constructed in the supervisor before anything is served."""

    def __init__(self, config: Config, make_handler: HandlerFactory, feed: ChangeFeed) -> None:
        """``feed`` carries file changes to the handlers (relayed across forks if needed)."""

    def run(self, listener: socket.socket, ready: Callable[[], None]) -> None:
        """Serve until a stop signal (:func:`stop_signals`); call ``ready`` once the
        signal handlers are set."""


def stop_signals() -> tuple[int, ...]:
    """The signals that stop the server gracefully: SIGINT (Ctrl-C), SIGTERM, and SIGHUP
    (its terminal was closed) unless SIGHUP is ignored (``nohup sitepeek``)."""
    hangup = () if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGINT, signal.SIGTERM, *hangup)


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
            write_line(sys.stderr, f"sitepeek: accept failed ({exc.strerror}); backing off")
            self._warned = True
        self._delay = min(_MAX_BACKOFF, self._delay * 2 or 0.01)
        return self._delay

    def succeeded(self) -> None:
        self._delay = 0.0
