"""Parked connections: the event-loop half of :class:`~sitepeek.handler.Handler`.

Where the worker model can wait for readability without a task (gevent's watchers, the
threads model's selector: :meth:`~sitepeek.concurrency.Io.read_wait`), a keep-alive
connection waiting for its next request is only a watcher. Its callback
(:meth:`LoopReader.poll`) reads what arrived without blocking and answers a request the
hot cache knows right there, by its bytes or, parsed, by its request key; anything
else (and the end of an answer the socket could not take at once) goes to a task, with
the request parsed here, to the handler's read loop. Gevent-free: the watchers are the
worker model's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sitepeek import hotcache
from sitepeek.concurrency import Io
from sitepeek.config import Config
from sitepeek.connections import RECV_SIZE, Connection, ConnectionTable
from sitepeek.hotcache import request_key
from sitepeek.http11 import ProtocolError, Request, RequestParser
from sitepeek.log import RequestLog, report_bug

__all__ = ["LoopReader"]


class LoopReader:
    """The event-loop half of :class:`Handler`: a connection waiting for its next
    request is a watcher (parked), whose callback reads what arrived without blocking
    and answers a hot request right there; anything else goes to a task (``run``)."""

    def __init__(
        self,
        config: Config,
        io: Io,
        table: ConnectionTable,
        hot: hotcache.HotAnswers,
        log: RequestLog | None,
        run: Callable[..., None],
        body_limit: Callable[[str], int],
        stopping: Callable[[], bool],
    ) -> None:
        self._config = config
        self._io = io
        self._table = table
        self._hot = hot
        self._log = log
        # (Hot answers below this status skip the log's call: -q logs 5xx only.)
        self._log_from = 1000 if log is None else log.min_status
        self._run = run
        self._body_limit = body_limit
        self._stopping = stopping
        self.served = 0  # requests answered from the event loop

    def watch(self, conn: Connection) -> None:
        """Serve an adopted connection from the event loop from now on."""
        assert conn.readable is not None
        conn.parkable = True
        conn.on_readable = lambda: self.poll(conn)
        # Watching from now on, so poll always runs with the watcher armed.
        conn.readable.notify(conn.on_readable)
        self.poll(conn)  # the request often arrives with the connection

    def park(self, conn: Connection) -> None:
        """Wait for the next request as a watcher (the connection is idle), or, where
        tasks are pooled, for the rest of a request head (its deadline stands)."""
        if self._stopping():
            self._table.close(conn)
            return
        # The reaper shuts it for reading only: its callback then answers 408, or
        # closes it (over TLS with close_notify, which needs the writing side).
        conn.reading = True
        if not conn.head_deadline:
            conn.idle = True
            conn.deadline = time.monotonic() + self._config.keepalive_timeout
        assert conn.readable is not None and conn.on_readable is not None
        conn.readable.notify(conn.on_readable)

    def poll(self, conn: Connection) -> None:
        """Read what a parked connection has received, in the event loop; never blocks.

        A request the hot cache answers in one send is answered here: by its bytes, or
        else, parsed (parsing never blocks), by its request key. Anything else (and the
        end of an answer the socket could not take at once) goes to a task, with the
        request parsed here.
        """
        raw = conn.raw
        readable = conn.readable
        assert raw is not None and readable is not None and conn.on_readable is not None
        try:
            try:
                data = raw.recv(RECV_SIZE)
            except BlockingIOError:  # (TLS: part of a record) still waiting, or just adopted
                if not conn.deadline:
                    self.park(conn)
                return
            parser = conn.parser
            if parser is not None and not parser.drained:  # (never a hot answer)
                readable.notify(None)
                self._io.dispatch(lambda: self._run(conn, data))  # (b"": 408 or close)
                return
            if not data or conn.expired:
                self._table.close(conn)  # closed by the peer, or by the reaper (idle too long)
                return
            hit = self._hot.lookup(data)
            if hit is None:
                request = self._parse_in_loop(conn, data)
                if request is None:
                    return  # (gone to a task)
                entry, response, method, target = request
            else:
                entry, response = hit
                method, target = entry.method, entry.target
            # (The hot path of the whole server: kept to the calls it needs.)
            self.served += 1
            conn.hot_streak = True
            conn.status = status = entry.status
            conn.sent = size = len(response)
            conn.last_request = started = time.monotonic()
            try:
                sent = raw.send(response)
            except BlockingIOError:
                sent = 0
            if status >= self._log_from:
                assert self._log is not None
                self._log.record(method, target, status, size, time.monotonic() - started)
            if sent != size:
                self._send_rest(conn, response[sent:], entry.keep_alive)
            elif entry.keep_alive:  # (the watcher stays armed: see watch)
                conn.deadline = started + self._config.keepalive_timeout
                if conn.pending is not None and conn.pending():
                    self._send_rest(conn, b"", True)  # (TLS records that came along)
            else:
                self._table.close(conn)
        except OSError:
            self._table.close(conn)
        except Exception as exc:  # never into the event loop
            report_bug("connection", exc)
            self._table.close(conn)

    def _send_rest(self, conn: Connection, rest: bytes, keep_alive: bool) -> None:
        """The end of a hot answer the socket could not take at once (b"": none, but
        TLS records came with its request, still to be read) goes to a task."""
        assert conn.readable is not None
        conn.readable.notify(None)
        conn.idle = False
        conn.deadline = conn.last_request + self._config.send_timeout
        conn.parkable = keep_alive
        self._io.dispatch(lambda: self._run(conn, pending=rest))

    def _parse_in_loop(
        self, conn: Connection, data: bytes
    ) -> tuple[hotcache.Entry, bytes, str, str] | None:
        """Parse ``data`` (not a hot answer's bytes) in the event loop: the hot answer
        for its request key, with the request's method and target; else None, and the
        request (or its error) has gone to a task."""
        parser = conn.parser
        if parser is None:
            parser = conn.parser = RequestParser(body_limit=self._body_limit)
        parser.feed(data)
        parsed: Request | ProtocolError | None
        try:
            parsed = parser.next_request()
        except ProtocolError as exc:
            parsed = exc
        conn.hot_key = None
        missed: tuple[str | None] | None = None
        if isinstance(parsed, Request) and not parsed.has_body and parser.drained:
            alias = request_key(parsed)
            hit = None if alias is None else self._hot.lookup(alias)
            if hit is not None:
                return hit[0], hit[1], parsed.method, parsed.target
            conn.hot_key = data  # (alone in one read: the bytes may key an answer)
            missed = (alias,)  # (the task must not ask the cache again)
        assert conn.readable is not None
        conn.readable.notify(None)
        conn.idle = False
        self._io.dispatch(lambda: self._run(conn, parsed=parsed, missed=missed))
        return None
