"""The one connection loop shared by every worker model.

Read a request (:mod:`http11`, deadlines, 408, ``ProtocolError`` -> its status), ask
the hot cache, else ask :meth:`sitepeek.site.Site.decide` for a plan and write it (the
:class:`~sitepeek.writer.Writer`, the proxy, the reload WebSocket), then log what went
out. This is the only place that turns exceptions into status codes. It is written
against the plain socket interface that gevent's cooperative sockets share with the
standard library's, plus the :class:`~sitepeek.concurrency.Io` primitives its worker
model supplies.

Why one module of this size: the read loop, the hot path that answers from the event
loop (``_poll``) and the task that takes over from it hand one connection back and
forth; split apart, each would need the other's internals.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from typing import cast

from sitepeek import (
    entities,
    hotcache,
    livereload,
    proxy,
    tls,
    websocket,
)
from sitepeek.changes import ChangeEvent, ChangeFeed, Serving
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
from sitepeek.entities import Entity
from sitepeek.hosts import HostPolicy, split_host
from sitepeek.http11 import (
    DEFAULT_LIMITS,
    ProtocolError,
    Request,
    RequestParser,
)
from sitepeek.log import io_scheduler, make_request_log
from sitepeek.plan import Error, Forward, Page, Plan, Redirect, SendEntity, SendFile, Upgrade
from sitepeek.responses import (
    DateCache,
    header_bytes,
    overridable,
)
from sitepeek.site import CA_CERT_PATH, MISDIRECTED, Site
from sitepeek.writer import KNOWN_CODINGS, Writer

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
        self._tls = (
            tls.server_context(config.cert, config.key)
            if config.cert is not None and config.key is not None
            else None
        )
        self._hosts = HostPolicy(config.host, config.allowed_host)
        self._ca_cert = None if ca_cert is None else entities.from_bytes("ca.crt", ca_cert)
        static = list(config.header)
        if config.cors:
            static.append(("Access-Control-Allow-Origin", "*"))
        self._static_headers = tuple(static)
        self._static_extra = header_bytes(static)
        self._static_overrides = overridable(static)
        self._log = make_request_log(config, schedule_flush=io_scheduler(io))
        self._dates = DateCache()
        self._table = ConnectionTable(
            io, config.keepalive_timeout, config.header_timeout, config.send_timeout
        )
        self.requests = 0
        self._broadcaster: livereload.Broadcaster | None = None
        self._snippet: bytes | None = None
        self._client: Entity | None = None
        if config.reload:
            self._broadcaster = livereload.Broadcaster(
                io,
                root=config.root,
                base=config.base,
                report=feed.report if feed else None,
                share_page=feed.share_page if feed else None,
                touch=feed.touch if feed else None,
            )
            script = livereload.client_script()
            self._snippet = livereload.client_tag(script)
            self._client = entities.from_bytes(
                livereload.CLIENT_PATH, script, config.compress, immutable=True
            )
        self._site = Site(
            config,
            broadcaster=self._broadcaster,
            client=self._client,
            snippet=self._snippet,
            claim=claim,
            ca_cert=self._ca_cert,
        )
        gate = self._broadcaster
        self._hot = hotcache.HotAnswers(
            self._site.resolver.root,
            self._dates,
            self._site.rules,
            None if gate is None else lambda: gate.settled,
            KNOWN_CODINGS,
        )
        self._stopping = False
        self._writer = Writer(
            io, self._dates, self._hot, self._snippet, config.compress, config.send_timeout
        )
        if feed is not None:  # (last: the feed replays what it knows at once)
            feed.subscribe(lambda event: io.call_soon_threadsafe(lambda: self._on_event(event)))

    def _on_event(self, event: ChangeEvent) -> None:
        """A change event, in the worker model's context (in the feed's order)."""
        if isinstance(event, Serving):
            # Before the gate opens (the BuildFinished after it): no page of the failed
            # build is answered, from the cache either.
            try:
                self._site.serve_from(event.snapshot or None)
            except OSError as exc:  # (removed behind our back: serve what there is)
                print(f"sitepeek: cannot serve {event.snapshot}: {exc}", file=sys.stderr)
            self._hot.serve_from(self._site.resolver.root, self._site.rules)
        if self._broadcaster is not None:
            self._broadcaster.on_event(event)

    @property
    def stopping(self) -> bool:
        """Connections are no longer reused (the server is shutting down)."""
        return self._stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        self._stopping = self._hot.stopping = value

    @property
    def broadcaster(self) -> livereload.Broadcaster | None:
        return self._broadcaster

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
        self._writer.close()
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
        if self._tls is not None:
            secure = self._table.open(sock, peer)
            if secure is not None:
                self._run_secure(secure)
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
        answer). Elsewhere the connection is served in a task of its own, as every TLS
        connection is (its handshake may block).
        """
        if self._tls is not None:
            secure = self._table.open(sock, peer)
            if secure is not None:
                self._io.spawn(lambda: self._run_secure(secure))
            return
        conn = self._open(sock, peer)
        if conn is None:
            return
        if conn.readable is None or conn.raw is None:
            self._io.dispatch(lambda: self._run(conn))
            return
        conn.parkable = True
        conn.on_readable = lambda: self._poll(conn)
        self._poll(conn)  # the request often arrives with the connection

    def _open(self, sock: socket.socket, peer: object) -> Connection | None:
        conn = self._table.open(sock, peer)
        if conn is None:
            return None
        raw = self._io.raw_socket(sock)
        if raw is not None:
            conn.raw = raw
            conn.readable = self._io.read_wait(raw.fileno())
        return conn

    def _run(self, conn: Connection, first: bytes = b"", pending: bytes = b"") -> None:
        """Serve ``conn`` in this task until it closes or parks; never raises.

        ``first``: bytes already received; ``pending``: the rest of a hot answer the
        event loop could not send at once (when its request asked to close, the
        connection is then closed: ``conn.parkable`` is False).
        """
        lingers = parked = False
        try:
            if pending:
                conn.sendall(pending)
                if not conn.parkable:
                    return
            lingers = self._serve_requests(conn, first)
            if lingers and not self.stopping:
                linger(conn.sock)
        except Park:
            parked = True
        except (OSError, CloseConnection):
            pass  # the peer went away or the response could not be completed
        except Exception as exc:  # a bug must cost one connection, never the server
            _report_bug("connection", exc)
        finally:
            if not parked:
                self._table.close(conn)
        if parked:
            self._park(conn)

    # -- TLS: the first bytes decide ---------------------------------------------------
    def _run_secure(self, conn: Connection) -> None:
        """Serve a connection on the TLS port, in its own task; never raises."""
        try:
            secured = self._secure(conn)
        except (OSError, CloseConnection):
            secured = False  # a failed handshake (ssl.SSLError), or the client left
        except Exception as exc:
            _report_bug("connection", exc)
            secured = False
        if secured:
            self._run(conn)
        else:
            self._table.close(conn)

    def _secure(self, conn: Connection) -> bool:
        """Start TLS on ``conn``; False when it is done with (answered or dropped).

        The handshake happens here, in the connection's task and within the header
        timeout (the reaper ends a client that stalls in it), never in the accept
        loop; the connection counts as idle meanwhile, so it never holds a slot
        against newcomers. A first byte other than a TLS handshake record's is plain
        HTTP: that request gets a redirect to its https:// URL.
        """
        assert self._tls is not None
        conn.deadline = time.monotonic() + self._config.header_timeout
        first = conn.sock.recv(RECV_SIZE)
        if not first or conn.expired:
            return False
        if not tls.is_client_hello(first):
            self._redirect_to_https(conn, first)
            return False
        raw = self._io.raw_socket(conn.sock)
        if raw is not None:
            conn.readable = self._io.read_wait(raw.fileno())  # (closed with conn)
        secure = tls.TlsSocket(conn.sock, self._tls, first, raw, conn.readable)
        secure.handshake()
        if conn.expired:
            return False
        # Socket-shaped: the methods the connection, proxy and reload code call.
        conn.sock = cast(socket.socket, secure)
        return True

    def _redirect_to_https(self, conn: Connection, first: bytes) -> None:
        """Answer a plain-HTTP request on the TLS port with its https:// URL.

        301 for GET and HEAD, 308 otherwise (RFC 9110 §15.4.9: the method is kept);
        ``no-store``, so a browser does not remember it for a later plain server on
        the same port. The local CA's certificate is the one thing served as it is:
        a phone downloads it before it can trust anything served over TLS.
        """
        parser = RequestParser()
        parser.feed(first)
        try:
            while (request := parser.next_request()) is None:
                if parser.eof:
                    return
                conn.reading = True
                try:
                    data = conn.sock.recv(RECV_SIZE)
                finally:
                    conn.reading = False
                if conn.expired:
                    self._writer.send_error(conn, None, 408, "Request Timeout", keep_alive=False)
                    return
                parser.feed(data)
        except ProtocolError as exc:
            self._writer.send_error(conn, None, exc.status, exc.reason, keep_alive=False)
            return
        self.requests += 1
        started = time.monotonic()
        host = request.header("host")
        if not host or split_host(host) is None or "@" in host or "/" in host:
            status, detail = 400, "This is an HTTPS port: send a Host header, or use https://"
            self._writer.send_error(conn, request, status, detail, keep_alive=False)
        elif not self._hosts.allows(host):
            self._writer.send_error(conn, request, 421, MISDIRECTED, keep_alive=False)
        elif (
            request.path == CA_CERT_PATH
            and self._ca_cert is not None
            and request.method in ("GET", "HEAD")
        ):
            self._writer.send_entity(conn, request, self._ca_cert, -1, False)
        else:
            status = 301 if request.method in ("GET", "HEAD") else 308
            location = tls.https_location(host, request.target)
            body = f"This is an HTTPS port: {location}\n".encode()
            headers = self._writer.base_headers(False, request)
            headers += [
                ("Location", location),
                ("Cache-Control", "no-store"),
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
            ]
            self._writer.send(conn, request, status, headers, body)
        if self._log is not None:
            duration = time.monotonic() - started
            self._log.record(request.method, request.target, conn.status, conn.sent, duration)
        if request.has_body or parser.has_partial_request:
            linger(conn.sock)

    def _park(self, conn: Connection) -> None:
        """Wait for the next request as a watcher (the connection is idle), or, where
        tasks are pooled, for the rest of a request head (its deadline stands)."""
        if self.stopping:
            self._table.close(conn)
            return
        if conn.head_deadline:
            conn.reading = True  # (the reaper shuts it for reading only: 408 can go out)
        else:
            conn.idle = True
            conn.deadline = time.monotonic() + self._config.keepalive_timeout
        assert conn.readable is not None and conn.on_readable is not None
        conn.readable.notify(conn.on_readable)

    def _poll(self, conn: Connection) -> None:
        """Read what a parked connection has received, in the event loop; never blocks.

        A request the hot cache answers in one send is answered here; anything else
        (and the end of an answer the socket could not take at once) goes to a task.
        """
        raw = conn.raw
        readable = conn.readable
        assert raw is not None and readable is not None and conn.on_readable is not None
        try:
            try:
                data = raw.recv(RECV_SIZE)
            except BlockingIOError:
                self._park(conn)
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
            if hit is not None:
                # (The hot path of the whole server: kept to the calls it needs.)
                entry, response = hit
                self.requests += 1
                conn.hot_streak = True
                conn.status = entry.status
                conn.sent = size = len(response)
                started = time.monotonic()
                try:
                    sent = raw.send(response)
                except BlockingIOError:
                    sent = 0
                conn.last_request = started
                if self._log is not None:
                    self._log.record(
                        entry.method, entry.target, entry.status, size, time.monotonic() - started
                    )
                if sent == size:
                    if not entry.keep_alive:
                        self._table.close(conn)
                        return
                    conn.deadline = started + self._config.keepalive_timeout
                    readable.notify(conn.on_readable)  # (already watching, unless adopted)
                    return
                readable.notify(None)
                conn.idle = False
                conn.deadline = started + self._config.send_timeout
                conn.parkable = entry.keep_alive
                self._io.dispatch(lambda: self._run(conn, pending=response[sent:]))
                return
            readable.notify(None)
            conn.idle = False
            self._io.dispatch(lambda: self._run(conn, data))
        except OSError:
            self._table.close(conn)
        except Exception as exc:  # never into the event loop
            _report_bug("connection", exc)
            self._table.close(conn)

    def _serve_requests(self, conn: Connection, first: bytes = b"") -> bool:
        """Answer requests until the connection should close; True to linger.

        Raises _Park when an adopted connection is idle again.
        """
        parser = conn.parser
        if parser is None:
            parser = conn.parser = RequestParser(body_limit=self._body_limit)
        while True:
            # Whatever the previous request added (_headers lines, its status) must not
            # leak into this one's answer, an error page included.
            conn.extra = self._static_extra
            conn.overrides = self._static_overrides
            conn.status = conn.sent = 0
            conn.hot = None
            try:
                request = self._read_request(conn, parser, first)
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
            self.requests += 1
            conn.hot_streak = False
            conn.last_request = started = time.monotonic()
            conn.deadline = started + self._config.send_timeout
            keep_alive = self._respond(conn, request)
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
                if conn.parkable and parser.drained and (conn.hot_streak or self._io.pooled):
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
        if self._site.route(path) is not None:
            return PROXY_BODY_LIMIT
        return DEFAULT_LIMITS.max_body

    # -- responses: writing a plan -------------------------------------------------
    def _respond(self, out: Connection, request: Request) -> bool:
        """Answer one request; returns whether the connection stays open."""
        keep_alive = request.keep_alive and not self._stopping
        try:
            plan, added = self._site.decide(request, out.hot_key)
        except (OSError, CloseConnection):
            raise
        except Exception as exc:  # a bug must cost one response, not the server
            _report_bug(request.path, exc)
            return self._writer.send_error(out, request, 500, "Internal Server Error", False)
        if not isinstance(plan, SendFile):  # (the common case: one check)
            if isinstance(plan, Forward):
                return self._forward(out, request, plan)
            if isinstance(plan, Upgrade):
                assert out.parser is not None and self._broadcaster is not None
                out.deadline = 0.0
                self._io.detach()
                self._upgrade(out, request, out.parser, self._broadcaster)
                return False
        if request.has_body and request.expects_continue:
            # We answer without reading the body the client holds back (RFC 9110
            # §10.1.1), so the connection cannot be reused.
            keep_alive = False
        if added:
            out.extra += header_bytes(added)
            out.overrides = out.overrides | overridable(added)
        try:
            if isinstance(plan, SendFile):
                out.hot = plan.candidate
                return self._writer.send_file(out, request, plan.file, keep_alive, plan.status)
            return self._write(out, request, plan, keep_alive)
        except (OSError, CloseConnection):
            raise
        except Exception as exc:  # a bug must cost one response, not the server
            _report_bug(request.path, exc)
            return self._writer.send_error(out, request, 500, "Internal Server Error", False)

    def _forward(self, out: Connection, request: Request, plan: Forward) -> bool:
        """Forward to a ``--proxy`` backend, through this connection's counting writer."""
        assert out.parser is not None
        out.deadline = 0.0  # the proxy has its own connect, read and tunnel timeouts
        self._io.detach()
        keep = proxy.forward(
            out.sock,
            request,
            out.parser,
            plan.route,
            self._io,
            out.peer,
            extra_headers=self._static_headers,
            client=out,
        )
        return keep and not self.stopping

    def _write(self, out: Connection, request: Request, plan: Plan, keep: bool) -> bool:
        """Write ``plan`` as the answer to ``request``; returns keep-alive."""
        if isinstance(plan, Error):
            keep = keep and not plan.close
            return self._writer.send_error(
                out, request, plan.status, plan.detail, keep, plan.headers
            )
        if isinstance(plan, Redirect):
            return self._writer.send_location(out, request, plan.status, plan.location, keep)
        if isinstance(plan, Page):
            headers = self._writer.base_headers(keep, request)
            headers += plan.headers
            self._writer.send(out, request, plan.status, headers, plan.body)
            return keep
        if isinstance(plan, SendEntity):
            return self._writer.send_entity(out, request, plan.entity, -1, keep)
        raise AssertionError(f"no writer for {plan!r}")  # (the others: see _respond)

    def _upgrade(
        self,
        conn: Connection,
        request: Request,
        parser: RequestParser,
        broadcaster: livereload.Broadcaster,
    ) -> None:
        """Switch to the reload WebSocket (RFC 6455 §4.2), or refuse with a status."""
        host = request.header("host")
        try:
            accept = websocket.check_handshake(
                request.method,
                request.version,
                request.headers,
                allowed_origins={f"http://{host}", f"https://{host}"},
            )
        except websocket.HandshakeError as exc:
            extra = list(exc.headers)
            if exc.status == 426:
                extra.append(("Upgrade", "websocket"))  # RFC 9110 §15.5.22
            self._writer.send_error(conn, request, exc.status, exc.reason, False, extra)
            return
        conn.sendall(websocket.handshake_response(accept))
        conn.websocket = True
        conn.idle = True  # shutdown closes it at once; the tab reconnects to the new server
        livereload.serve_websocket(
            conn.sock,
            self._io,
            broadcaster,
            parser.take_buffered(),
            lambda: self.stopping,
            conn.write,
        )

    def _answer_hot(self, conn: Connection, entry: hotcache.Entry, response: bytes) -> bool:
        """Send what was sent for the same request bytes, from a task (``_poll`` does
        the same in the event loop); True to keep the connection."""
        self.requests += 1
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


def _report_bug(where: str, exc: Exception) -> None:
    print(f"sitepeek: internal error ({where}): {exc!r}", file=sys.stderr, flush=True)
