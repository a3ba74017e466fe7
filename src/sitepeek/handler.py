"""The one connection loop shared by every worker model.

socket <-> :mod:`http11` <-> :mod:`resolver` / :mod:`representation`. This is the only
place that turns exceptions into status codes. It is written against the plain
socket interface that gevent's cooperative sockets share with the standard library's,
plus the :class:`~sitepeek.concurrency.Io` primitives its worker model supplies.
"""

from __future__ import annotations

import _socket
import errno
import html
import os
import socket
import stat
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from sitepeek import (
    compression,
    entities,
    hotcache,
    inject,
    livereload,
    proxy,
    websocket,
)
from sitepeek.changes import ChangeFeed
from sitepeek.concurrency import Io
from sitepeek.config import Config
from sitepeek.connections import CloseConnection, Connection, ConnectionTable, Park
from sitepeek.entities import Entity
from sitepeek.http11 import (
    DEFAULT_LIMITS,
    ProtocolError,
    Request,
    RequestParser,
    reason_phrase,
)
from sitepeek.http11 import response_head as _response_head
from sitepeek.log import io_scheduler, make_request_log
from sitepeek.plan import Error, Forward, Page, Plan, Redirect, SendEntity, SendFile, Upgrade
from sitepeek.representation import (
    ByteRange,
    Precondition,
    evaluate_preconditions,
    evaluate_range,
)
from sitepeek.resolver import File
from sitepeek.responses import (
    SERVER,
    DateCache,
    error_page,
    header_bytes,
    overridable,
)
from sitepeek.site import Site

RECV_SIZE = 64 * 1024
# A file modified less than this long ago may be mid-write: wait for it to settle
# (at most WRITE_SETTLE_MAX) before reading a version of it.
WRITE_SETTLE = 0.02  # below the 30 ms reload debounce: a reload never waits here
WRITE_SETTLE_MAX = 0.5
# sendfile() in chunks, so a file rewritten in place is noticed between them.
SENDFILE_CHUNK = 1 << 20
# Files up to this size are copied (pread + send) rather than sent zero-copy, so an
# in-place rewrite during a download can never reach the client mixed (see _sendfile).
COPY_LIMIT = 16 * 1024 * 1024
COPY_CHUNK = 256 * 1024
# After answering with "Connection: close", read what the client still sends for a
# moment, so our response is not destroyed by a TCP reset (RFC 9112 §9.6).
# Bodies up to this size compress inline (a few ms at most); larger ones in the worker
# model's thread pool, so the event loop keeps serving meanwhile.
INLINE_COMPRESSION = 256 * 1024
# Codings we can serve: produced on the fly (compression.AVAILABLE) or from a
# precompressed sidecar file; server preference order.
_KNOWN_CODINGS = ("br", "zstd", "gzip")
# A proxied request body is streamed to the backend, never stored: allow uploads.
PROXY_BODY_LIMIT = 1 << 40
_OK = b"HTTP/1.1 200 OK\r\n"
_NOT_MODIFIED = b"HTTP/1.1 304 Not Modified\r\n"
LINGER_SECONDS = 0.5
LINGER_BYTES = 256 * 1024

Headers = list[tuple[str, str]]
T = TypeVar("T")


class Handler:
    """Serves the HTTP/1.1 connections of one process, whatever the worker model."""

    def __init__(
        self,
        config: Config,
        io: Io,
        feed: ChangeFeed | None = None,
        claim: Callable[[str], bool] | None = None,
    ) -> None:
        """``claim(key)`` is True for the first caller of a key across the server's
        processes: a notice (a malformed _redirects line) is printed once, not once
        per worker."""
        self._config = config
        self._io = io
        static = list(config.header)
        if config.cors:
            static.append(("Access-Control-Allow-Origin", "*"))
        self._static_headers = tuple(static)
        self._static_extra = header_bytes(static)
        self._static_overrides = overridable(static)
        self._log = make_request_log(config, schedule_flush=io_scheduler(io))
        self._dates = DateCache()
        self._entities = entities.EntityCache()
        self._variants = compression.VariantCache()
        self._variant_fields: dict[str, tuple[bytes, bytes]] = {}
        self._table = ConnectionTable(
            io, config.keepalive_timeout, config.header_timeout, config.send_timeout
        )
        self.requests = 0
        self._broadcaster: livereload.Broadcaster | None = None
        self._snippet: bytes | None = None
        self._client: Entity | None = None
        if config.reload:
            broadcaster = self._broadcaster = livereload.Broadcaster(io)
            script = livereload.client_script()
            self._snippet = livereload.client_tag(script)
            self._client = entities.from_bytes(
                livereload.CLIENT_PATH, script, config.compress, immutable=True
            )
            if feed is not None:
                feed.subscribe(
                    lambda event: io.call_soon_threadsafe(lambda: broadcaster.on_event(event))
                )
        self._site = Site(
            config,
            broadcaster=self._broadcaster,
            client=self._client,
            snippet=self._snippet,
            claim=claim,
        )
        gate = self._broadcaster
        self._hot = hotcache.HotAnswers(
            self._site.resolver.root,
            self._dates,
            self._site.rules,
            None if gate is None else lambda: gate.settled,
            _KNOWN_CODINGS,
        )
        self._stopping = False

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
        self._variants.close()
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
        raises."""
        conn = self._open(sock, peer)
        if conn is not None:
            self._run(conn)

    def adopt(self, sock: socket.socket, peer: object = None) -> None:
        """Take an accepted connection without a task of its own; never blocks or raises.

        Where the model can wait for readability without a task (gevent), a
        connection waiting for its next request is only a watcher: a request the hot
        cache answers is answered right in the event loop's callback, and a task is
        spawned only for the others, until the connection is idle again. Elsewhere
        it is :meth:`serve` in a new task.
        """
        conn = self._open(sock, peer)
        if conn is None:
            return
        if conn.readable is None or conn.raw is None:
            self._io.spawn(lambda: self._run(conn))
            return
        conn.parkable = True
        conn.on_readable = lambda: self._poll(conn)
        self._poll(conn)  # the request often arrives with the connection

    def _open(self, sock: socket.socket, peer: object) -> Connection | None:
        conn = self._table.open(sock, peer)
        if conn is None:
            return None
        wrapped = getattr(sock, "_sock", None)
        # (gevent's inner socket is a _socket.socket, not a socket.socket.)
        if isinstance(wrapped, _socket.socket) and wrapped.gettimeout() == 0.0:
            conn.raw = wrapped
            conn.readable = self._io.read_wait(wrapped.fileno())
        return conn

    def _run(self, conn: Connection, first: bytes = b"", pending: bytes = b"") -> None:
        """Serve ``conn`` in this task until it closes or parks; never raises.

        ``first``: bytes already received; ``pending``: the rest of a hot answer the
        event loop could not send at once (when its request asked to close, the
        connection is then closed: ``conn.parkable`` is False).
        """
        linger = parked = False
        try:
            if pending:
                conn.sendall(pending)
                if not conn.parkable:
                    return
            linger = self._serve_requests(conn, first)
            if linger and not self.stopping:
                self._linger(conn.sock)
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

    def _park(self, conn: Connection) -> None:
        """Wait for the next request as a watcher (the connection is idle)."""
        if self.stopping:
            self._table.close(conn)
            return
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
                self._io.spawn(lambda: self._run(conn, pending=response[sent:]))
                return
            readable.notify(None)
            conn.idle = False
            self._io.spawn(lambda: self._run(conn, data))
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
                self._send_error(conn, None, exc.status, exc.reason, keep_alive=False)
                return True
            except TimeoutError:
                if parser.has_partial_request:
                    self._send_error(conn, None, 408, "Request Timeout", keep_alive=False)
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
        head_deadline = 0.0
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
                if conn.hot_streak and conn.parkable and parser.drained:
                    raise Park
                conn.deadline = now + self._config.keepalive_timeout
            else:
                if not head_deadline:
                    head_deadline = now + self._config.header_timeout
                if now >= head_deadline:
                    raise TimeoutError
                conn.deadline = head_deadline
            conn.reading = True
            try:
                data = conn.recv(RECV_SIZE)
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
            return self._send_error(out, request, 500, "Internal Server Error", False)
        if isinstance(plan, Forward):
            assert out.parser is not None
            out.deadline = 0.0  # the proxy has its own connect, read and tunnel timeouts
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
        if isinstance(plan, Upgrade):
            assert out.parser is not None and self._broadcaster is not None
            out.deadline = 0.0
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
            if isinstance(plan, SendFile):  # (the common case first, without a call)
                out.hot = plan.candidate
                return self._send_file(out, request, plan.file, keep_alive, plan.status)
            return self._write(out, request, plan, keep_alive)
        except (OSError, CloseConnection):
            raise
        except Exception as exc:  # a bug must cost one response, not the server
            _report_bug(request.path, exc)
            return self._send_error(out, request, 500, "Internal Server Error", False)

    def _write(self, out: Connection, request: Request, plan: Plan, keep: bool) -> bool:
        """Write ``plan`` as the answer to ``request``; returns keep-alive."""
        if isinstance(plan, SendFile):
            out.hot = plan.candidate
            return self._send_file(out, request, plan.file, keep, plan.status)
        if isinstance(plan, Error):
            keep = keep and not plan.close
            return self._send_error(out, request, plan.status, plan.detail, keep, plan.headers)
        if isinstance(plan, Redirect):
            return self._send_location(out, request, plan.status, plan.location, keep)
        if isinstance(plan, Page):
            headers = self._base_headers(keep, request)
            headers += plan.headers
            self._send(out, request, plan.status, headers, plan.body)
            return keep
        if isinstance(plan, SendEntity):
            return self._send_entity(out, request, plan.entity, -1, keep)
        raise AssertionError(f"no writer for {plan!r}")  # (Forward, Upgrade: see _respond)

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
            self._send_error(conn, request, exc.status, exc.reason, False, extra)
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

    def _base_headers(self, keep_alive: bool, request: Request | None) -> Headers:
        headers = [("Date", self._dates.now()), ("Server", SERVER)]
        if not keep_alive:
            headers.append(("Connection", "close"))
        elif request is not None and request.version == "1.0":
            headers.append(("Connection", "keep-alive"))
        return headers

    def _send_file(
        self, out: Connection, request: Request, file: File, keep: bool, status: int = 200
    ) -> bool:
        """Send a file: as the resource itself (200/206/304), or as the body of another
        status (a custom 404 page), which takes no conditionals, ranges or coding."""
        cached = None
        if file.stat is not None:
            cached = self._entities.get(file.fs_path, file.stat)
            if cached is not None and cached.body is not None:
                if status != 200:
                    return self._send_page(out, request, cached, -1, keep, status)
                return self._send_entity(out, request, cached, -1, keep, file.fs_path)
            if cached is not None and status == 200:
                # A large file whose compressed variant is ready: no need to open it.
                sent = self._try_variant(out, request, cached, -1, keep, file.fs_path)
                if sent is not None:
                    return sent
        try:
            # O_NONBLOCK: should the path have become a FIFO since it was resolved,
            # opening it must not wait for a writer.
            fd = os.open(file.fs_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            return self._send_open_error(out, request, exc, keep)
        try:
            # Everything below uses this descriptor: the response is one version of
            # the file even if it is replaced or rewritten meanwhile.
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return self._send_error(out, request, 404, "Not Found", keep)
            st = self._settled_stat(fd, st)
            try:
                if cached is not None and cached.identity == entities.identity(st):
                    entity = cached  # metadata of a large file: nothing to read
                else:
                    entity, st = entities.load(
                        file.fs_path, fd, st, self._snippet, self._config.compress
                    )
            except entities.FileChanged:
                # Rewritten in place faster than we can read one version: closing is
                # the honest answer (a browser retries an idempotent request on a
                # closed keep-alive connection); a half-written body never is.
                raise CloseConnection from None
            self._entities.put(file.fs_path, entity)
            if status != 200:
                return self._send_page(out, request, entity, fd, keep, status)
            return self._send_entity(out, request, entity, fd, keep, file.fs_path)
        finally:
            os.close(fd)

    def _settled_stat(self, fd: int, st: os.stat_result) -> os.stat_result:
        """Wait (briefly, cooperatively) while the file is still being written.

        A file rewritten in place with several writes is torn on disk between them: a
        version stamped with the first write's mtime is not a version at all. A file
        modified in the last WRITE_SETTLE seconds is read only once that much time has
        passed without a change (bounded: a file written continuously is served after
        WRITE_SETTLE_MAX as it then is, and checked while it is sent).
        """
        waited = 0.0
        while waited < WRITE_SETTLE_MAX:
            age = time.time() - st.st_mtime_ns / 1e9
            if not 0 <= age < WRITE_SETTLE:
                break
            pause = WRITE_SETTLE - age
            self._io.signal().wait(pause)
            waited += pause
            st = os.fstat(fd)
        return st

    def _send_open_error(
        self, out: Connection, request: Request, exc: OSError, keep: bool
    ) -> bool:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return self._send_error(out, request, 403, "Forbidden", keep)
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
            # Out of descriptors: the file exists; say so, and when to try again.
            return self._send_error(
                out,
                request,
                503,
                "The server is busy; try again.",
                False,
                [("Retry-After", "1")],
            )
        return self._send_error(out, request, 404, "Not Found", keep)

    def _send_page(
        self, out: Connection, request: Request, entity: Entity, fd: int, keep: bool, status: int
    ) -> bool:
        head = b"".join(
            (
                f"HTTP/1.1 {status} {reason_phrase(status)}\r\n".encode(),
                self._prefix(out, keep, request.version),
                b"Content-Type: %s\r\nCache-Control: no-cache\r\n"
                % entity.content_type.encode("latin-1"),
                b"Content-Length: %d\r\n\r\n" % entity.size,
            )
        )
        if request.method == "HEAD":
            out.sendall(head)
        elif entity.body is not None:
            out.sendall(head + entity.body)
        else:
            out.sendall(head)
            self._sendfile(out, fd, 0, entity.size, entity.identity)
        return keep

    def _prefix(self, out: Connection, keep: bool, version: str) -> bytes:
        """Date, Server, Connection and this request's extra header lines."""
        prefix = self._dates.prefix(keep, version)
        return prefix + out.extra if out.extra else prefix

    def _send_entity(
        self,
        out: Connection,
        request: Request,
        entity: Entity,
        fd: int,
        keep: bool,
        path: str | None = None,
    ) -> bool:
        """Answer with ``entity`` or, when negotiated, a compressed variant of it.

        ``fd`` is the open file when the body is not cached; ``path`` its real path,
        for precompressed sidecars. A Range request always gets the identity
        representation, so ranges and compression can never disagree.
        """
        sent = self._try_variant(out, request, entity, fd, keep, path)
        return sent if sent is not None else self._send_identity(out, request, entity, fd, keep)

    def _try_variant(
        self,
        out: Connection,
        request: Request,
        entity: Entity,
        fd: int,
        keep: bool,
        path: str | None,
    ) -> bool | None:
        """Send a compressed variant if one is negotiated and at hand; None otherwise.

        With ``fd`` -1 (the file is not open) only a variant already compressed, or a
        sidecar, is at hand.
        """
        if not entity.compressible or "range" in request.headers:
            return None
        variant = self._select_variant(entity, fd, path, request.header("accept-encoding"))
        if variant is None:
            return None
        variant_fd = -1 if variant.body is not None else self._variants.open(variant)
        if variant_fd is None:
            return None
        try:
            return self._send_variant(out, request, entity, variant, variant_fd, keep)
        finally:
            if variant_fd >= 0:
                os.close(variant_fd)

    def _select_variant(
        self, entity: Entity, fd: int, path: str | None, accept_encoding: str
    ) -> compression.Variant | None:
        """The compressed variant to send, or None for identity (RFC 9110 §12.5.3)."""
        header = accept_encoding or None
        coding = compression.negotiate(header, _KNOWN_CODINGS)
        if coding is None or coding == compression.IDENTITY:
            # Nothing acceptable but identity was refused too: we send identity anyway
            # rather than 406 (RFC 9110 §12.5.3 allows either); a preview must show.
            return None
        if path is not None and not entity.transformed:
            sidecar = compression.find_sidecar(path, entity.identity[2], coding)
            if sidecar is not None:
                return sidecar
        if coding not in compression.AVAILABLE:
            coding = compression.negotiate(header, compression.AVAILABLE)
            if coding is None or coding == compression.IDENTITY:
                return None
        key = (entity.identity, entity.etag)
        variant = self._variants.get(key, coding)
        if variant is None:
            offload = self._io.offload if entity.size > INLINE_COMPRESSION else _inline
            try:
                if entity.body is not None:
                    variant = self._variants.get_or_compress_body(key, coding, entity.body, offload)
                elif fd >= 0:
                    variant = self._variants.get_or_compress(key, coding, fd, entity.size, offload)
                else:
                    return None
            except (entities.FileChanged, OSError):
                return None
        # Incompressible after all (already-minified binary-ish text): send identity.
        return variant if variant.size < entity.size else None

    def _send_variant(
        self,
        out: Connection,
        request: Request,
        entity: Entity,
        variant: compression.Variant,
        fd: int,
        keep: bool,
    ) -> bool:
        etag = variant.etag(entity.etag)
        fields = self._variant_fields.get(etag)
        if fields is None:
            if len(self._variant_fields) > 4096:
                self._variant_fields.clear()
            fields = self._variant_fields[etag] = entities.header_fields(
                entity.content_type, etag, entity.last_modified or None, True, variant.coding
            )
        method = request.method
        precondition = evaluate_preconditions(method, request.headers, etag, entity.last_modified)
        if precondition is Precondition.NOT_MODIFIED:
            rest = out.extra + fields[1] + b"Content-Length: %d\r\n\r\n" % variant.size
            if variant.body is not None:  # (a sidecar is a file of its own)
                self._send_remembered(out, request, _NOT_MODIFIED, rest, keep, entity)
            else:
                out.sendall(_NOT_MODIFIED + self._dates.prefix(keep, request.version) + rest)
            return keep
        if precondition is Precondition.FAILED:
            return self._send_error(out, request, 412, "Precondition Failed", keep)
        if variant.body is not None:
            rest = out.extra + fields[0] + b"Content-Length: %d\r\n\r\n" % variant.size
            if method != "HEAD":
                rest += variant.body
            self._send_remembered(out, request, _OK, rest, keep, entity)
            return keep
        head = b"".join(
            (
                _OK,
                self._prefix(out, keep, request.version),
                fields[0],
                b"Content-Length: %d\r\n\r\n" % variant.size,
            )
        )
        if method == "HEAD":
            out.sendall(head)
        else:
            out.sendall(head)
            self._sendfile(out, fd, 0, variant.size)
        return keep

    def _send_identity(
        self, out: Connection, request: Request, entity: Entity, fd: int, keep: bool
    ) -> bool:
        """Answer with the entity itself (ranges apply); ``fd`` when not cached."""
        method = request.method
        headers = request.headers
        size = entity.size
        precondition = evaluate_preconditions(method, headers, entity.etag, entity.last_modified)
        if precondition is Precondition.NOT_MODIFIED:
            # RFC 9110 §15.4.5: the validators and caching fields, no content; RFC 9110
            # §8.6 allows the Content-Length the 200 would have had.
            rest = out.extra + entity.validator_fields + b"Content-Length: %d\r\n\r\n" % size
            self._send_remembered(out, request, _NOT_MODIFIED, rest, keep, entity)
            return keep
        if precondition is Precondition.FAILED:
            return self._send_error(out, request, 412, "Precondition Failed", keep)
        byte_range = (
            evaluate_range(method, headers, size, entity.etag, entity.last_modified)
            if "range" in headers
            else None
        )
        if byte_range is None:
            status_line, start, length, extra = b"HTTP/1.1 200 OK\r\n", 0, size, b""
        elif isinstance(byte_range, ByteRange):
            status_line = b"HTTP/1.1 206 Partial Content\r\n"
            start, length = byte_range.start, byte_range.length
            extra = b"Content-Range: %s\r\n" % byte_range.content_range(size).encode()
        else:
            return self._send_error(
                out,
                request,
                416,
                "Range Not Satisfiable",
                keep,
                [("Content-Range", f"bytes */{size}")],
            )
        head = b"".join(
            (
                status_line,
                self._prefix(out, keep, request.version),
                entity.fields,
                extra,
                b"Content-Length: %d\r\n\r\n" % length,
            )
        )
        body = entity.body
        if byte_range is None and body is not None:
            # One send: head and body in separate writes stall on Nagle + delayed ACK.
            rest = out.extra + entity.fields + b"Content-Length: %d\r\n\r\n" % length
            if method != "HEAD":
                rest += body
            self._send_remembered(out, request, status_line, rest, keep, entity)
        elif method == "HEAD":
            out.sendall(head)
        elif body is not None:
            out.sendall(head + body[start : start + length])
        else:
            out.sendall(head)
            self._sendfile(out, fd, start, length, entity.identity)
        return keep

    # -- the hot cache -------------------------------------------------------------
    def _send_remembered(
        self,
        out: Connection,
        request: Request,
        status_line: bytes,
        rest: bytes,
        keep: bool,
        entity: Entity,
    ) -> None:
        """Send an answer made of bytes at hand; the hot cache may keep it for the same
        request bytes (see HotAnswers.respond)."""
        response = self._hot.respond(
            out.hot,
            status_line,
            keep,
            request.version,
            rest,
            entity.identity,
            entity.compressible,
            request.method,
            request.target,
            out.overrides,
        )
        out.status = int(status_line[9:12])  # (set: the override rule is applied)
        out.sendall(response)

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

    def _sendfile(
        self,
        out: Connection,
        fd: int,
        offset: int,
        count: int,
        identity: entities.Identity | None = None,
    ) -> None:
        """Send ``count`` bytes of ``fd`` from ``offset``: zero-copy or copied.

        With ``identity`` (a file of the site), a file rewritten in place during the
        response closes the connection, so a client never gets a complete-looking body
        that mixes two versions. sendfile cannot promise that: what it queued is read
        from the page cache when the client reads it, after any later rewrite. So a
        file up to COPY_LIMIT is copied (read, check, send), and only larger ones (media,
        archives) go out with zero-copy sendfile, checked between chunks and before the
        last byte: a rewrite racing the client's reading of already-queued data can
        still mix there (README, "Files that change while served").

        The connection's deadline is renewed for every chunk: a large download may take
        long, but a client that stops reading is cut off after send_timeout.
        """
        if identity is not None and count <= COPY_LIMIT:
            self._send_copy(out, fd, offset, count, identity)
            return
        fileno = out.sock.fileno()
        timeout = self._config.send_timeout
        expected = identity[1:3] + identity[4:] if identity is not None else None
        while count > 0:
            chunk = min(count, SENDFILE_CHUNK)
            if expected is not None:
                if _content_version(os.fstat(fd)) != expected:
                    raise CloseConnection
                if chunk == count and count > 1:
                    chunk -= 1  # the last byte goes out after one more check
            out.deadline = time.monotonic() + timeout
            try:
                sent = os.sendfile(fileno, fd, offset, chunk)
            except BlockingIOError:
                # Only a non-blocking (gevent) socket gets here: a thread's sendfile
                # blocks. The reaper enforces out.deadline while we wait.
                if out.writable is None:
                    out.writable = self._io.write_wait(fileno)
                if out.writable is None:
                    raise
                out.writable.wait()
                continue
            if sent == 0:
                raise CloseConnection  # the file shrank under us: close, never hang
            out.sent += sent
            offset += sent
            count -= sent

    def _send_copy(
        self, out: Connection, fd: int, offset: int, count: int, identity: entities.Identity
    ) -> None:
        """Read a chunk, check the file is still that version, send it; repeat."""
        expected = identity[1:3] + identity[4:]
        while count > 0:
            data = os.pread(fd, min(count, COPY_CHUNK), offset)
            if not data or _content_version(os.fstat(fd)) != expected:
                raise CloseConnection  # shrank or rewritten: never send a mix
            out.deadline = time.monotonic() + self._config.send_timeout
            out.sock.sendall(data)
            out.sent += len(data)
            offset += len(data)
            count -= len(data)

    def _send_location(
        self, out: Connection, request: Request, status: int, location: str, keep: bool
    ) -> bool:
        escaped = html.escape(location, quote=True)
        body = (
            f'<!doctype html><meta charset="utf-8"><title>Moved</title>'
            f'<p>Moved to <a href="{escaped}">{escaped}</a>.</p>\n'
        ).encode()
        headers = self._base_headers(keep, request)
        headers += [
            ("Location", location),
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ]
        self._send(out, request, status, headers, body)
        return keep

    def _send_error(
        self,
        out: Connection,
        request: Request | None,
        status: int,
        detail: str,
        keep_alive: bool,
        extra: Sequence[tuple[str, str]] = (),
    ) -> bool:
        body = error_page(status, detail)
        if self._snippet is not None:
            body = inject.inject(body, self._snippet)
        headers = self._base_headers(keep_alive, request)
        headers += extra
        headers += [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Cache-Control", "no-cache"),
            ("Content-Length", str(len(body))),
        ]
        self._send(out, request, status, headers, body)
        return keep_alive

    @staticmethod
    def _send(
        out: Connection, request: Request | None, status: int, headers: Headers, body: bytes
    ) -> None:
        if out.overrides:
            headers = [
                (n, v)
                for n, v in headers
                if n.lower() not in out.overrides or n in ("Date", "Server", "Content-Length")
            ]
        head = _response_head(status, headers)
        if out.extra:
            head = head[:-2] + out.extra + b"\r\n"
        if request is not None and request.method == "HEAD":
            out.sendall(head)
        else:
            out.sendall(head + body)

    @staticmethod
    def _linger(sock: socket.socket) -> None:
        """Half-close, then drain briefly so the client reads our final response."""
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(LINGER_SECONDS)
            deadline = time.monotonic() + LINGER_SECONDS
            drained = 0
            while drained < LINGER_BYTES and time.monotonic() < deadline:
                data = sock.recv(RECV_SIZE)
                if not data:
                    break
                drained += len(data)
        except OSError:
            pass


def _content_version(st: os.stat_result) -> tuple[int, int, int]:
    """(ino, mtime_ns, size): the part of an Identity that a rewrite in place changes."""
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _inline(work: Callable[[], T]) -> T:
    return work()


def _report_bug(where: str, exc: Exception) -> None:
    print(f"sitepeek: internal error ({where}): {exc!r}", file=sys.stderr, flush=True)
