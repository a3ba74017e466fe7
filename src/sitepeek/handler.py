"""The one connection loop shared by every worker model.

Read a request (:mod:`http11`, deadlines, 408, ``ProtocolError`` -> its status), answer
it from the hot cache when its bytes (or, parsed, its request key) have an answer,
else hand it to the :class:`~sitepeek.responder.Responder` (deciding and writing), then
log what went out. It is written against the plain socket interface that gevent's
cooperative sockets share with the standard library's, plus the
:class:`~sitepeek.concurrency.Io` primitives its worker model supplies: where the
model can wait for readability without a task (gevent's watchers, the threads model's
selector), an idle connection is a watcher and hot answers are sent from the event
loop (:class:`~sitepeek.parking.LoopReader`), which hands everything else back to this
read loop in a task. A connection on the TLS port first goes through
:class:`~sitepeek.tlsport.TlsPort` (TLS, or a redirect to it), then comes back here.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from sitepeek import (
    entities,
    hotcache,
    livereload,
    tls,
)
from sitepeek.changes import ChangeFeed
from sitepeek.concurrency import Io
from sitepeek.config import Config
from sitepeek.connections import (
    RECV_SIZE,
    CloseConnection,
    Connection,
    ConnectionTable,
    Park,
    linger,
)
from sitepeek.hosts import HostPolicy
from sitepeek.http11 import (
    DEFAULT_LIMITS,
    ProtocolError,
    Request,
    RequestParser,
)
from sitepeek.log import io_scheduler, make_request_log, report_bug
from sitepeek.parking import LoopReader
from sitepeek.responder import Responder
from sitepeek.tlsport import TlsPort

# A proxied request body is streamed to the backend, never stored: allow uploads.
PROXY_BODY_LIMIT = 1 << 40


class Handler:
    """Serves the HTTP/1.1 connections of one process, whatever the worker model."""

    def __init__(
        self,
        config: Config,
        io: Io,
        feed: ChangeFeed | None = None,
        claim: Callable[[str], bool] | None = None,
        ca_cert: bytes | None = None,
    ) -> None:
        """``claim(key)`` is True for the first caller of a key across the server's
        processes: a notice (a malformed _redirects line) is printed once, not once
        per worker. ``ca_cert``: the local CA's certificate (PEM), offered for download
        to phones (--https)."""
        self._config = config
        self._io = io
        context = (  # first: a bad certificate fails before anything is started
            tls.server_context(config.cert, config.key)
            if config.cert is not None and config.key is not None
            else None
        )
        ca_entity = None if ca_cert is None else entities.from_bytes("ca.crt", ca_cert)
        self._log = make_request_log(config, schedule_flush=io_scheduler(io))
        self._table = ConnectionTable(
            io, config.keepalive_timeout, config.header_timeout, config.send_timeout
        )
        self._served = 0  # requests answered by tasks (the event loop counts its own)
        responder = self._responder = Responder(config, io, feed, claim, ca_entity)
        self._hot = responder.hot
        self._writer = responder.writer
        self._route = responder.site.route
        self._stopping = False
        self._loop = LoopReader(
            config,
            io,
            self._table,
            responder.hot,
            self._log,
            run=self._run,
            body_limit=self._body_limit,
            stopping=lambda: self._stopping,
        )
        self._tls_port: TlsPort | None = None
        if context is not None:
            self._tls_port = TlsPort(
                context,
                io,
                self._table,
                self._writer,
                HostPolicy(config.host, config.allowed_host),
                config.header_timeout,
                self._log,
                ca_entity,
                counted=self._count_request,
                extra=responder.static_extra,
                overrides=responder.static_overrides,
            )

    @property
    def stopping(self) -> bool:
        """Connections are no longer reused (the server is shutting down)."""
        return self._stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        self._stopping = self._responder.stopping = value

    @property
    def broadcaster(self) -> livereload.Broadcaster | None:
        return self._responder.broadcaster

    # -- lifecycle, called by the worker model ---------------------------------------
    def begin_shutdown(self) -> None:
        """Stop reusing connections and close the idle ones at once."""
        self.stopping = True
        self._table.close_idle()

    def abort_all(self) -> None:
        """Cut every remaining connection (the shutdown deadline has passed)."""
        self.stopping = True
        self._table.abort_all()

    def reclaim_idle(self, busy_grace: float = 0.0) -> bool:
        """See :meth:`ConnectionTable.reclaim_idle`."""
        return self._table.reclaim_idle(busy_grace)

    def close(self) -> None:
        """Release what outlives connections (spooled compressed files, the log)."""
        self._responder.close()
        if self._log is not None:
            self._log.close()

    @property
    def connection_count(self) -> int:
        return len(self._table)

    def wait_for_room(self, limit: int, timeout: float) -> None:
        """Wait (at most ``timeout``) until fewer than ``limit`` connections are open."""
        self._table.wait_for_room(limit, timeout)

    def wait_closed(self, timeout: float) -> bool:
        """Wait until every connection has closed; False if some remain at ``timeout``."""
        return self._table.wait_closed(timeout)

    # -- one connection ------------------------------------------------------------
    def serve(self, sock: socket.socket, peer: object = None) -> None:
        """Serve one accepted connection until it closes, in the caller's task; never
        raises (for serving in-process, as the tests do)."""
        if self._tls_port is not None:
            secure = self._table.open(sock, peer)
            if secure is not None:
                self._tls_port.serve(secure, self._run)
            return
        conn = self._open(sock, peer)
        if conn is not None:
            self._run(conn)

    def adopt(self, sock: socket.socket, peer: object = None) -> None:
        """Take an accepted connection without a task of its own; never blocks or raises.

        Where the model can wait for readability without a task (gevent's watchers,
        the threads model's selector), a connection waiting for its next request is
        only a watcher: a request the hot cache answers is answered right in the event
        loop's callback, and a task is dispatched only for the others, until the
        connection is idle again (where tasks are pooled, it is parked after every
        answer). Elsewhere the connection is served in a task of its own. A TLS
        connection gets a task for its handshake (it may block), then waits as a
        watcher too (see :meth:`_adopt_secured`).
        """
        if self._tls_port is not None:
            secure = self._table.open(sock, peer)
            if secure is not None:
                tls_port = self._tls_port
                self._io.spawn(lambda: tls_port.serve(secure, self._adopt_secured))
            return
        conn = self._open(sock, peer)
        if conn is None:
            return
        if conn.readable is None or conn.raw is None:
            self._io.dispatch(lambda: self._run(conn))
            return
        self._loop.watch(conn)

    def _adopt_secured(self, conn: Connection) -> None:
        """Serve an adopted TLS connection, TLS up: like a plain one, it waits for its
        requests as a watcher, whose callback decrypts what arrived and encrypts a hot
        answer, never waiting (see :meth:`~sitepeek.tls.TlsSocket.send_nowait`)."""
        if conn.raw is not None and conn.readable is not None:
            conn.parkable = conn.hot_streak = True  # (waits for its first request)
            conn.on_readable = lambda: self._loop.poll(conn)
        self._run(conn)

    def _open(self, sock: socket.socket, peer: object) -> Connection | None:
        conn = self._table.open(sock, peer)
        if conn is None:
            return None
        raw = self._io.raw_socket(sock)
        if raw is not None:
            conn.raw = raw
            conn.readable = self._io.read_wait(raw.fileno())
        return conn

    def _run(
        self,
        conn: Connection,
        first: bytes = b"",
        pending: bytes = b"",
        parsed: Request | ProtocolError | None = None,
        missed: tuple[str | None] | None = None,
    ) -> None:
        """Serve ``conn`` in this task until it closes or parks; never raises.

        ``first``: bytes already received; ``pending``: the rest of a hot answer the
        event loop could not send at once (when its request asked to close, the
        connection is then closed: ``conn.parkable`` is False); ``parsed``: what the
        event loop parsed from ``conn.parser``'s bytes (a request, or its error), and
        ``missed``: its request key, when the loop found no answer under it.
        """
        lingers = parked = False
        conn.reading = False  # (parked, it was: a write that stalls is shut down whole)
        try:
            if pending:
                conn.sendall(pending)
                if not conn.parkable:
                    return
            lingers = self._serve_requests(conn, first, parsed, missed)
            if lingers and not self.stopping:
                linger(conn.sock)
        except Park:
            parked = True
        except (OSError, CloseConnection):
            pass  # the peer went away or the response could not be completed
        except Exception as exc:  # a bug must cost one connection, never the server
            report_bug("connection", exc)
        finally:
            if not parked:
                self._table.close(conn)
        if parked:
            self._loop.park(conn)

    @property
    def requests(self) -> int:
        """Requests answered so far, by tasks and by the event loop."""
        return self._served + self._loop.served

    def _count_request(self) -> None:
        self._served += 1

    def _serve_requests(
        self,
        conn: Connection,
        first: bytes = b"",
        parsed: Request | ProtocolError | None = None,
        missed: tuple[str | None] | None = None,
    ) -> bool:
        """Answer requests until the connection should close; True to linger.

        ``parsed``: the first request (or its error), already taken from the parser;
        ``missed``: its request key, already looked up in vain (see LoopReader._parse_in_loop).
        Raises _Park when an adopted connection is idle again.
        """
        parser = conn.parser
        if parser is None:
            parser = conn.parser = RequestParser(body_limit=self._body_limit)
        while True:
            # Whatever the previous request added (_headers lines, its status) must not
            # leak into this one's answer, an error page included.
            conn.extra = self._responder.static_extra
            conn.overrides = self._responder.static_overrides
            conn.status = conn.sent = 0
            conn.hot = None
            try:
                if parsed is None:
                    request = self._read_request(conn, parser, first)
                else:
                    request, parsed = self._take(conn, parsed), None
            except ProtocolError as exc:
                self._writer.send_error(conn, None, exc.status, exc.reason, keep_alive=False)
                return True
            except TimeoutError:
                if parser.has_partial_request:
                    self._writer.send_error(conn, None, 408, "Request Timeout", keep_alive=False)
                return False
            first = b""
            if request is None:
                return False
            self._served += 1
            conn.hot_streak = False
            conn.last_request = started = time.monotonic()
            conn.deadline = started + self._config.send_timeout
            keep_alive = self._responder.respond(conn, request, missed)
            missed = None
            now = time.monotonic()
            if self._log is not None:
                self._log.record(
                    request.method, request.target, conn.status, conn.sent, now - started
                )
            if conn.websocket:
                return False
            if not keep_alive or self.stopping:
                # Linger only when the client may still be sending (a pipelined request
                # or a body we did not read): closing with unread data would reset the
                # connection and could destroy our response (RFC 9112 §9.6).
                return not keep_alive and (parser.has_partial_request or request.has_body)

    @staticmethod
    def _take(conn: Connection, parsed: Request | ProtocolError) -> Request:
        """The request the event loop parsed (see LoopReader.poll), as _read_request
        returns one."""
        conn.idle = False
        conn.head_deadline = 0.0
        if isinstance(parsed, ProtocolError):
            raise parsed
        return parsed

    def _read_request(
        self, conn: Connection, parser: RequestParser, first: bytes = b""
    ) -> Request | None:
        """The next request, None when the peer closed or we are stopping.

        Requests the hot cache can answer are answered here, in the reading loop.

        Raises ProtocolError, or TimeoutError when the client is too slow: an idle
        keep-alive connection gets ``keepalive_timeout``; once a request has begun,
        its whole head must arrive within ``header_timeout`` (a trickle of bytes does
        not extend it).
        """
        hot = self._hot
        conn.hot_key = None
        if first:
            # Received by the event loop, which found no hot answer for it.
            conn.hot_key = first if parser.drained else None
            parser.feed(first)
        while True:
            request = parser.next_request()
            if request is not None or parser.eof:
                conn.idle = False
                conn.head_deadline = 0.0
                if conn.hot_key is not None and (
                    request is None or request.has_body or not parser.drained
                ):
                    conn.hot_key = None  # not one whole request alone in one read
                return request
            conn.idle = not parser.has_partial_request
            now = time.monotonic()
            if conn.idle:
                if self.stopping:
                    return None
                if (
                    conn.parkable
                    and parser.drained
                    and (conn.hot_streak or self._io.pooled)
                    and (conn.pending is None or not conn.pending())
                ):
                    raise Park
                conn.deadline = now + self._config.keepalive_timeout
            else:
                head_deadline = conn.head_deadline
                if not head_deadline:
                    head_deadline = conn.head_deadline = now + self._config.header_timeout
                if now >= head_deadline:
                    raise TimeoutError
                conn.deadline = head_deadline
            conn.reading = True
            try:
                data = self._receive(conn)
            except OSError:
                # gevent wakes a reader whose socket was shut down with an error, not
                # with EOF; either way an expired wait is a timeout.
                if conn.expired:
                    raise TimeoutError from None
                raise
            finally:
                conn.reading = False
            if conn.expired:
                raise TimeoutError
            if parser.drained and data:
                hit = hot.lookup(data)
                if hit is not None:
                    if not self._answer_hot(conn, *hit):
                        return None  # answered with Connection: close
                    conn.status = conn.sent = 0  # (the next answer is another's)
                    continue
                conn.hot_key = data
            else:
                conn.hot_key = None
            parser.feed(data)

    def _receive(self, conn: Connection) -> bytes:
        """The next bytes of a request head being read; raises Park where a pooled task
        must not wait for a slow client's next bytes (it waits as a watcher instead)."""
        raw = conn.raw
        if raw is not None and conn.parkable and self._io.pooled:
            try:
                return raw.recv(RECV_SIZE)
            except BlockingIOError:
                raise Park from None
        return conn.recv(RECV_SIZE)

    def _body_limit(self, path: str) -> int:
        """Proxied requests may carry large bodies; ours are only ever discarded."""
        if self._route(path) is not None:
            return PROXY_BODY_LIMIT
        return DEFAULT_LIMITS.max_body

    def _answer_hot(self, conn: Connection, entry: hotcache.Entry, response: bytes) -> bool:
        """Send what was sent for the same request bytes, from a task
        (:meth:`LoopReader.poll` does the same in the event loop); True to keep the
        connection."""
        self._served += 1
        conn.last_request = started = time.monotonic()
        conn.hot_streak = True
        conn.deadline = started + self._config.send_timeout
        conn.idle = False
        conn.status = entry.status  # (set: these bytes need no header filtering)
        conn.sent = 0
        conn.sendall(response)
        if self._log is not None:
            now = time.monotonic()
            self._log.record(entry.method, entry.target, entry.status, conn.sent, now - started)
        return entry.keep_alive
