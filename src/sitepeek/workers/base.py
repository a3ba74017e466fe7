"""The contract between the server and a worker model.

A worker model owns concurrency only: it accepts connections on a listening socket,
runs :class:`~sitepeek.handler.Handler` for each one, and stops on request. It also
supplies the few blocking primitives the handler needs, so the handler never knows
whether it runs in a greenlet or an OS thread.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Protocol

from sitepeek.config import Config


class Io(Protocol):
    """Blocking primitives that differ between greenlets and threads."""

    def wait_writable(self, sock: socket.socket, timeout: float) -> None:
        """Block until ``sock`` can take more bytes; raise TimeoutError after ``timeout``."""


class ConnectionHandler(Protocol):
    """What a worker model needs from the handler (see :class:`sitepeek.handler.Handler`)."""

    stopping: bool

    def serve(self, sock: socket.socket, peer: object = None) -> None: ...

    def begin_shutdown(self) -> None: ...

    def abort_all(self) -> None: ...

    def reclaim_idle(self) -> bool: ...

    @property
    def active_connections(self) -> int: ...


HandlerFactory = Callable[[Io], ConnectionHandler]


class WorkerModel(Protocol):
    """A concurrency model, constructed in the supervisor before anything is served."""

    def __init__(self, config: Config, make_handler: HandlerFactory) -> None: ...

    def run(self, listener: socket.socket, ready: Callable[[], None]) -> None:
        """Serve until SIGINT/SIGTERM; call ``ready`` once the signal handlers are set."""
