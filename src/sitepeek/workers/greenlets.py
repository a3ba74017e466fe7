"""Greenlet model: one process, one gevent hub, a greenlet per busy connection.

A connection whose last answer came from the hot cache waits for its next request as
a libev watcher, not a greenlet (see Handler.adopt).

gevent is used through its explicit APIs (cooperative sockets, a pool, a signal
handler); nothing is monkey-patched, so the threads model stays real threads.
"""

from __future__ import annotations

import _socket
import socket
from collections.abc import Callable
from typing import TypeVar

import gevent
import gevent.event
import gevent.pool
import gevent.queue
import gevent.socket

from sitepeek.changes import ChangeFeed
from sitepeek.config import Config
from sitepeek.workers.base import AcceptBackoff, ConnectionHandler, HandlerFactory, stop_signals

T = TypeVar("T")

_ACCEPT_BATCH = 64


class GeventChannel:
    """A gevent queue: get() yields to other greenlets while it waits."""

    def __init__(self) -> None:
        self._queue: gevent.queue.Queue[object] = gevent.queue.Queue()

    def put(self, item: object) -> None:
        self._queue.put(item)

    def get(self, timeout: float) -> object | None:
        try:
            item: object = self._queue.get(timeout=timeout)
        except gevent.queue.Empty:
            return None
        return item


class GeventFdWait:
    """One libev watcher per connection and direction, reused for every wait: gevent's
    own recv would try the read again first (one doomed system call per request on
    keep-alive), and gevent.socket.wait_write makes a watcher and a timer per wait."""

    __slots__ = ("_hub", "_watcher")

    def __init__(self, hub: gevent.hub.Hub, fd: int, events: int = 1) -> None:
        self._hub = hub
        self._watcher = hub.loop.io(fd, events)

    def wait(self) -> None:
        self._hub.wait(self._watcher)

    def notify(self, callback: Callable[[], None] | None) -> None:
        watcher = self._watcher
        if callback is None:
            watcher.stop()
        elif not watcher.active:
            watcher.start(callback)

    def close(self) -> None:
        self._watcher.close()


class GeventIo:
    """Cooperative blocking primitives for the handler."""

    pooled = False

    def __init__(self) -> None:
        self._hub = gevent.get_hub()
        self._tasks = gevent.pool.Group()  # so that shutdown can end what is left

    def raw_socket(self, sock: socket.socket) -> _socket.socket | None:
        # gevent's cooperative socket wraps a non-blocking stdlib one (a _socket.socket,
        # not a socket.socket): trying it first skips gevent's Python-level wrapper
        # when the kernel can take the bytes at once (nearly always for a small answer).
        wrapped = getattr(sock, "_sock", None)
        if isinstance(wrapped, _socket.socket) and wrapped.gettimeout() == 0.0:
            return wrapped
        return None

    def read_wait(self, fd: int) -> GeventFdWait:
        return GeventFdWait(self._hub, fd)

    def write_wait(self, fd: int) -> GeventFdWait:
        return GeventFdWait(self._hub, fd, 2)

    def offload(self, work: Callable[[], T]) -> T:
        # zlib and brotli release the GIL: the hub keeps serving while a thread works.
        result: T = self._hub.threadpool.apply(work)
        return result

    def spawn(self, task: Callable[[], None]) -> None:
        self._tasks.spawn(task)

    def dispatch(self, task: Callable[[], None]) -> None:
        self._tasks.spawn(task)

    def detach(self) -> None:
        return None  # a greenlet is no pool's

    def kill_all(self, timeout: float) -> None:
        """End every task still running (the shutdown grace has passed)."""
        self._tasks.kill(timeout=timeout)

    def channel(self) -> GeventChannel:
        return GeventChannel()

    def signal(self) -> gevent.event.Event:
        return gevent.event.Event()

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        # The hub's thread-safe wake-up: gevent objects must not be touched from
        # another OS thread (the watchdog observer runs in one).
        self._hub.loop.run_callback_threadsafe(callback)


class GreenletWorkers:
    """Serve every connection in its own greenlet, bounded by ``max_connections``."""

    name = "greenlets"

    def __init__(self, config: Config, make_handler: HandlerFactory, feed: ChangeFeed) -> None:
        # The handler subscribes to ``feed`` itself: one process, nothing to relay.
        self._config = config
        self._make_handler = make_handler

    def run(self, listener: socket.socket, ready: Callable[[], None]) -> None:
        stop = gevent.event.Event()
        for signum in stop_signals():
            gevent.signal_handler(signum, stop.set)
        ready()
        serve_until(self._config, self._make_handler, listener, stop)


def serve_until(
    config: Config,
    make_handler: HandlerFactory,
    listener: socket.socket,
    stop: gevent.event.Event,
    watchers: tuple[Callable[[gevent.event.Event], None], ...] = (),
) -> None:
    """Accept and serve on ``listener`` until ``stop`` is set, then shut down gracefully.

    ``watchers`` run in their own greenlets for the lifetime of the server (the
    process model uses one to notice that its supervisor died).
    """
    io = GeventIo()
    handler = make_handler(io)
    listener.setblocking(False)
    acceptor = gevent.spawn(_accept_loop, listener, config.max_connections, handler)
    helpers = [gevent.spawn(watch, stop) for watch in watchers]
    try:
        stop.wait()
    finally:
        acceptor.kill()
        listener.close()
        gevent.killall(helpers)
        _drain(config, handler, io)


def _accept_loop(listener: socket.socket, limit: int, handler: ConnectionHandler) -> None:
    """Accept in batches: after a connection storm the backlog drains at once.

    A connection gets a greenlet only while it has a request to answer that the hot
    cache cannot (see Handler.adopt); ``limit`` counts connections, busy or not.
    """
    hub = gevent.get_hub()
    readable = hub.loop.io(listener.fileno(), 1)  # one watcher, reused for every wait
    backoff = AcceptBackoff()
    while True:
        hub.wait(readable)
        for index in range(_ACCEPT_BATCH):
            # A client is waiting. At max_connections, close the least recently used
            # keep-alive connection; when every connection is busy, wait: new clients
            # queue in the listen backlog instead of being accepted and starved.
            if handler.connection_count >= limit:
                if index:
                    break  # reclaim only for a client known to be waiting
                while handler.connection_count >= limit:
                    # A connection may turn idle a moment later: try again meanwhile.
                    handler.reclaim_idle()
                    handler.wait_for_room(limit, timeout=0.05)
            try:
                client, peer = listener.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                delay = backoff.failed(exc)
                if delay is None:
                    continue
                gevent.sleep(delay)
                break
            backoff.succeeded()
            handler.adopt(gevent.socket.socket(fileno=client.detach()), peer)


def _drain(config: Config, handler: ConnectionHandler, io: GeventIo) -> None:
    """Close idle connections now; give in-flight responses a grace period."""
    handler.begin_shutdown()
    if not handler.wait_closed(config.shutdown_grace):
        handler.abort_all()
        if not handler.wait_closed(0.2):
            io.kill_all(timeout=0.2)  # stuck elsewhere (a proxy upstream, a pause)
    handler.close()
