"""The one connection loop shared by every worker model.

socket <-> :mod:`http11` <-> :mod:`resolver` / :mod:`representation`. This is the only
place that turns exceptions into status codes. It is written against the plain
socket interface that gevent's cooperative sockets share with the standard library's,
plus the :class:`~sitepeek.workers.base.Io` primitives its worker model supplies.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import hashlib
import html
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sitepeek import (
    __version__,
    compression,
    entities,
    hotcache,
    inject,
    listing,
    livereload,
    proxy,
    websocket,
)
from sitepeek.changes import ChangeFeed
from sitepeek.config import Config
from sitepeek.entities import Entity
from sitepeek.hosts import HostPolicy
from sitepeek.http11 import (
    DEFAULT_LIMITS,
    FRAMING_FIELDS,
    ProtocolError,
    Request,
    RequestParser,
    is_known_method,
    reason_phrase,
)
from sitepeek.http11 import response_head as _response_head
from sitepeek.log import io_scheduler, make_request_log
from sitepeek.representation import (
    ByteRange,
    Precondition,
    evaluate_preconditions,
    evaluate_range,
    http_date,
)
from sitepeek.resolver import (
    BadPath,
    File,
    Forbidden,
    Listing,
    NotFound,
    Redirect,
    Resolution,
    Resolver,
    spa_eligible,
    strip_base,
)
from sitepeek.rules import RuleMatch, RuleSet, RulesFile
from sitepeek.workers.base import FdWait, Io

SERVER = f"sitepeek/{__version__}"
ALLOW = "GET, HEAD, OPTIONS"
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
# The rules files configure the server; like Netlify and Cloudflare, never serve them.
_RULE_FILES = frozenset({"/_redirects", "/_headers"})
# A busy connection whose request began less than this ago may be done already (see
# reclaim_idle).
_JUST_ANSWERED = 0.1
_OK = b"HTTP/1.1 200 OK\r\n"
_NOT_MODIFIED = b"HTTP/1.1 304 Not Modified\r\n"
_MISDIRECTED = (
    "This server answers to localhost names only (DNS rebinding protection). "
    "To use another name, start sitepeek with --allowed-host NAME."
)
LINGER_SECONDS = 0.5
LINGER_BYTES = 256 * 1024

Headers = list[tuple[str, str]]
T = TypeVar("T")


class _CloseConnection(Exception):
    """The connection cannot continue (peer gone, file changed mid-response)."""


class _Park(Exception):
    """The connection is idle with nothing buffered: let it wait without a task."""


@dataclass(slots=True, eq=False)
class _Connection:
    """One client connection: its socket, its state, and what it was sent."""

    sock: socket.socket
    idle: bool = True  # no request in progress: shutdown and reclaim may close it
    # When its latest request began (or it was accepted): a client sees an answer
    # before the task that sent it has run on, so only start times order connections
    # the way their clients used them.
    last_request: float = 0.0
    websocket: bool = False
    # When the connection's current wait (idle, head, write) expires; 0 = none.
    # The reaper enforces it, so no I/O call needs a per-call timer.
    deadline: float = 0.0
    reading: bool = False
    expired: bool = False
    status: int = 0  # of the response being sent (for the request log)
    sent: int = 0
    extra: bytes = b""  # header lines added to this response (_headers, --header, CORS)
    # Their lowercase names: they replace sitepeek's own fields of the same name.
    overrides: frozenset[str] = frozenset()
    parser: RequestParser | None = None
    peer: object = None
    # The bytes of the request being answered when they may key a hot-cache entry
    # (they arrived alone in one read), and, once the answer is known to be a file
    # of the site, the URL path's directory and whether the build gate applies.
    hot_key: bytes | None = None
    hot_site: tuple[str, str, bool] | None = None  # (real path, URL directory, gate)
    hot_began: int = 0  # time.time_ns() before the request was resolved
    hot_rules: RuleSet | None = None

    # gevent's cooperative socket wraps a non-blocking stdlib one; trying that first
    # skips gevent's Python-level wrapper when the kernel can take the bytes at once
    # (nearly always for a small response). None for plain (threads) sockets.
    raw: _socket.socket | None = None
    readable: FdWait | None = None  # waits for ``raw`` to have bytes
    writable: FdWait | None = None  # waits for room in ``raw`` (made when first needed)
    # Adopted (see Handler.adopt): waits for its next request as a watcher, not a task.
    parkable: bool = False
    # The last request was answered from the hot cache: likely the next one too, so
    # the connection parks when idle. After any other answer its task waits on: a
    # client asking for new things each time would pay a task per request otherwise.
    hot_streak: bool = False
    on_readable: Callable[[], None] | None = None

    def sendall(self, data: bytes) -> None:
        if not self.status:
            self.status = int(data[9:12])  # "HTTP/1.1 200 ..."
            if self.overrides:
                data = _without_overridden(data, self.overrides)
        self.sent += len(data)
        raw = self.raw
        if raw is not None:
            try:
                sent = raw.send(data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        self.sock.sendall(data)

    def recv(self, size: int) -> bytes:
        raw = self.raw
        readable = self.readable
        if raw is None or readable is None:
            return self.sock.recv(size)
        while True:
            try:
                return raw.recv(size)
            except BlockingIOError:
                readable.wait()  # cooperatively


class _DateCache:
    """The Date header, formatted at most once per second, with the fields that follow."""

    __slots__ = ("_prefixes", "_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = ""
        self._prefixes: dict[tuple[bool, str], bytes] = {}

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._value = http_date(second)
            self._prefixes = {}
            self._second = second
        return self._value

    def prefix(self, keep_alive: bool, version: str) -> bytes:
        """Date, Server and Connection header lines, ready to send."""
        value = self.now()
        prefix = self._prefixes.get((keep_alive, version))
        if prefix is None:
            lines = f"Date: {value}\r\nServer: {SERVER}\r\n"
            if not keep_alive:
                lines += "Connection: close\r\n"
            elif version == "1.0":
                lines += "Connection: keep-alive\r\n"
            prefix = self._prefixes[(keep_alive, version)] = lines.encode("latin-1")
        return prefix


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
        self._claim = claim or _claim_in_process()
        self._io = io
        self._resolver = Resolver(config.root, clean_urls=config.clean_urls, listing=config.listing)
        self._hosts = HostPolicy(config.host, config.allowed_host)
        self._routes = tuple(proxy.parse_route(spec) for spec in config.proxy)
        self._base = config.base
        self._rules = RulesFile(config.root) if config.rules else None
        self._rules_seen: RuleSet | None = None
        static = list(config.header)
        if config.cors:
            static.append(("Access-Control-Allow-Origin", "*"))
        self._static_headers = tuple(static)
        self._static_extra = _header_bytes(static)
        self._static_overrides = _overridable(static)
        self._log = make_request_log(config, schedule_flush=io_scheduler(io))
        self._dates = _DateCache()
        self._entities = entities.EntityCache()
        self._hot = hotcache.HotCache()
        self._variants = compression.VariantCache()
        self._variant_fields: dict[str, tuple[bytes, bytes]] = {}
        self._connections: set[_Connection] = set()
        self._lock = threading.Lock()
        self._freed = io.signal()  # set whenever a connection closes
        self.stopping = False
        self.requests = 0
        self._reaper_stop = io.signal()
        io.spawn(self._reap)
        self._broadcaster: livereload.Broadcaster | None = None
        self._snippet: bytes | None = None
        self._client: Entity | None = None
        if config.reload:
            broadcaster = self._broadcaster = livereload.Broadcaster(
                io,
                root=config.root,
                base=config.base,
                report=feed.report if feed else None,
                share_page=feed.share_page if feed else None,
            )
            script = livereload.client_script()
            self._snippet = livereload.client_tag(script)
            self._client = entities.from_bytes(
                livereload.CLIENT_PATH, script, config.compress, immutable=True
            )
            if feed is not None:
                feed.subscribe(
                    lambda event: io.call_soon_threadsafe(lambda: broadcaster.on_event(event))
                )

    @property
    def broadcaster(self) -> livereload.Broadcaster | None:
        return self._broadcaster

    # -- lifecycle, called by the worker model ---------------------------------------
    def begin_shutdown(self) -> None:
        """Stop reusing connections and close the idle ones at once."""
        self.stopping = True
        self._reaper_stop.set()
        with self._lock:
            idle = [conn for conn in self._connections if conn.idle]
        for conn in idle:
            _shutdown(conn.sock)

    def abort_all(self) -> None:
        """Cut every remaining connection (the shutdown deadline has passed)."""
        self.stopping = True
        with self._lock:
            remaining = list(self._connections)
        for conn in remaining:
            _shutdown(conn.sock)

    def reclaim_idle(self) -> bool:
        """Close the idle connection used least recently (its latest request began
        first), to make room for a new one.

        Called by the worker model when it is at ``max_connections``: an idle
        keep-alive connection is cheap for its client to reopen, a new client waiting
        in the backlog is not (nginx reclaims idle connections the same way).
        """
        with self._lock:
            # A reload socket is idle but not reclaimable: its tab would reconnect.
            candidates = [conn for conn in self._connections if not conn.websocket]
        idle = [conn for conn in candidates if conn.idle]
        if not idle:
            return False
        oldest = min(idle, key=lambda conn: conn.last_request)
        now = time.monotonic()
        for conn in candidates:
            if (
                not conn.idle
                and conn.last_request < oldest.last_request
                and now - conn.last_request < _JUST_ANSWERED
            ):
                # Used before ``oldest`` and still busy, but only just: its answer may
                # be sent already, the thread that sent it not having run on yet (its
                # client has moved on). Ask again in a moment rather than close a
                # connection its client used more recently.
                return False
        _shutdown(oldest.sock)
        return True

    def close(self) -> None:
        """Release what outlives connections (spooled compressed files, the log)."""
        self._variants.close()
        if self._log is not None:
            self._log.close()

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def wait_for_room(self, limit: int, timeout: float) -> None:
        """Wait (at most ``timeout``) until fewer than ``limit`` connections are open."""
        self._freed.clear()
        if len(self._connections) >= limit:
            self._freed.wait(timeout)

    def wait_closed(self, timeout: float) -> bool:
        """Wait until every connection has closed; False if some remain at ``timeout``."""
        deadline = time.monotonic() + timeout
        while self._connections:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._freed.clear()
            if self._connections:
                self._freed.wait(min(left, 0.05))
        return True

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

    def _open(self, sock: socket.socket, peer: object) -> _Connection | None:
        conn = _Connection(sock, last_request=time.monotonic(), peer=peer)
        try:
            # Blocking without a per-call timeout: deadlines are the reaper's job.
            sock.settimeout(None)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            with contextlib.suppress(OSError):
                sock.close()
            return None
        wrapped = getattr(sock, "_sock", None)
        # (gevent's inner socket is a _socket.socket, not a socket.socket.)
        if isinstance(wrapped, _socket.socket) and wrapped.gettimeout() == 0.0:
            conn.raw = wrapped
            conn.readable = self._io.read_wait(wrapped.fileno())
        with self._lock:
            self._connections.add(conn)
        return conn

    def _close(self, conn: _Connection) -> None:
        with self._lock:
            self._connections.discard(conn)
        if conn.readable is not None:
            conn.readable.close()
        if conn.writable is not None:
            conn.writable.close()
        with contextlib.suppress(OSError):
            conn.sock.close()
        self._freed.set()

    def _run(self, conn: _Connection, first: bytes = b"", pending: bytes = b"") -> None:
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
        except _Park:
            parked = True
        except (OSError, _CloseConnection):
            pass  # the peer went away or the response could not be completed
        except Exception as exc:  # a bug must cost one connection, never the server
            _report_bug("connection", exc)
        finally:
            if not parked:
                self._close(conn)
        if parked:
            self._park(conn)

    def _park(self, conn: _Connection) -> None:
        """Wait for the next request as a watcher (the connection is idle)."""
        if self.stopping:
            self._close(conn)
            return
        conn.idle = True
        conn.deadline = time.monotonic() + self._config.keepalive_timeout
        assert conn.readable is not None and conn.on_readable is not None
        conn.readable.notify(conn.on_readable)

    def _poll(self, conn: _Connection) -> None:
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
                self._close(conn)  # closed by the peer, or by the reaper (idle too long)
                return
            entry = self._hot.get(data)
            if entry is not None and self._hot_fresh(data, entry):
                # (The hot path of the whole server: kept to the calls it needs.)
                self.requests += 1
                conn.hot_streak = True
                conn.status = entry.status
                response = self._stamped(entry)
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
                        self._close(conn)
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
            self._close(conn)
        except Exception as exc:  # never into the event loop
            _report_bug("connection", exc)
            self._close(conn)

    def _serve_requests(self, conn: _Connection, first: bytes = b"") -> bool:
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
            conn.hot_site = None
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
            if (
                request.path == livereload.SOCKET_PATH
                and self._broadcaster is not None
                and "websocket" in request.header("upgrade").lower()
                and self._hosts.allows(request.header("host"))
            ):
                # (A foreign Host falls through to _respond, which answers 421.)
                conn.deadline = 0.0
                self._upgrade(conn, request, parser, self._broadcaster)
                return False
            conn.last_request = started = time.monotonic()
            conn.deadline = started + self._config.send_timeout
            keep_alive = self._respond(conn, request)
            now = time.monotonic()
            if self._log is not None:
                self._log.record(
                    request.method, request.target, conn.status, conn.sent, now - started
                )
            if not keep_alive or self.stopping:
                # Linger only when the client may still be sending (a pipelined request
                # or a body we did not read): closing with unread data would reset the
                # connection and could destroy our response (RFC 9112 §9.6).
                return not keep_alive and (parser.has_partial_request or request.has_body)

    def _read_request(
        self, conn: _Connection, parser: RequestParser, first: bytes = b""
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
                    raise _Park
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
                entry = hot.get(data)
                if entry is not None and self._hot_fresh(data, entry):
                    if not self._answer_hot(conn, entry):
                        return None  # answered with Connection: close
                    conn.status = conn.sent = 0  # (the next answer is another's)
                    continue
                conn.hot_key = data
            else:
                conn.hot_key = None
            parser.feed(data)

    def _body_limit(self, path: str) -> int:
        """Proxied requests may carry large bodies; ours are only ever discarded."""
        if self._routes and proxy.match(self._routes, path) is not None:
            return PROXY_BODY_LIMIT
        return DEFAULT_LIMITS.max_body

    def _reap(self) -> None:
        """Enforce connection deadlines: one periodic sweep instead of a timer per call.

        A connection waiting to read is shut down for reading, so its recv returns
        and it can still answer 408; one stuck in a write is shut down entirely.
        """
        config = self._config
        interval = min(config.keepalive_timeout, config.header_timeout, config.send_timeout)
        interval = min(1.0, max(0.05, interval / 10))
        while not self._reaper_stop.wait(interval):
            now = time.monotonic()
            with self._lock:
                expired = [c for c in self._connections if c.deadline and now > c.deadline]
            for conn in expired:
                if conn.expired:
                    continue
                conn.expired = True
                how = socket.SHUT_RD if conn.reading else socket.SHUT_RDWR
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(how)

    # -- responses -----------------------------------------------------------------
    def _respond(self, out: _Connection, request: Request) -> bool:
        """Answer one request; returns whether the connection stays open."""
        keep_alive = request.keep_alive and not self.stopping
        host = request.headers.get("host")
        if host is not None and not self._hosts.allows(host):
            # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends
            # "Host: evil.example". Answer as the host this server is not.
            return self._send_error(out, request, 421, _MISDIRECTED, False)
        path = request.path
        if self._routes:
            route = proxy.match(self._routes, path)
            if route is not None and out.parser is not None:
                out.deadline = 0.0  # the proxy has its own connect, read and tunnel timeouts
                keep = proxy.forward(
                    out.sock,
                    request,
                    out.parser,
                    route,
                    self._io,
                    out.peer,
                    extra_headers=self._static_headers,
                )
                return keep and not self.stopping
        if request.has_body and request.expects_continue:
            # We answer without reading the body the client holds back (RFC 9110
            # §10.1.1), so the connection cannot be reused.
            keep_alive = False
        try:
            if path.startswith(livereload.PREFIX):
                if request.method not in ("GET", "HEAD"):
                    return self._respond_other_method(out, request, keep_alive)
                return self._respond_internal(out, request, keep_alive)
            site_path = path
            if self._base != "/":
                inner = strip_base(path, self._base)
                if inner is None:
                    return self._outside_base(out, request, keep_alive)
                site_path = inner
            rules = self._current_rules() if self._rules is not None else None
            if rules is not None:
                headers = rules.headers_for(site_path)
                if headers:
                    out.extra += _header_bytes(headers)
                    out.overrides = out.overrides | _overridable(headers)
            if request.method not in ("GET", "HEAD"):
                return self._respond_other_method(out, request, keep_alive)
            if self._broadcaster is not None and _may_be_html(site_path):
                # A burst of changes is being written: wait (bounded) for it to settle,
                # so a page never shows a half-written build.
                self._broadcaster.wait_until_settled(site_path)
            return self._respond_site(out, request, site_path, rules, keep_alive)
        except (OSError, _CloseConnection):
            raise
        except Exception as exc:  # a bug must cost one response, not the server
            _report_bug(request.path, exc)
            return self._send_error(out, request, 500, "Internal Server Error", False)

    def _respond_site(
        self, out: _Connection, request: Request, path: str, rules: RuleSet | None, keep: bool
    ) -> bool:
        """GET/HEAD for a path of the site (below the base path); ``rules`` as loaded for
        this request (None with --no-rules)."""
        if rules is not None and path in _RULE_FILES:
            return self._send_error(out, request, 404, "Not Found", keep)
        if out.hot_key is not None:
            out.hot_began = time.time_ns()
        resolved: list[Resolution] = []

        def resolution() -> Resolution:
            if not resolved:
                resolved.append(self._resolver.resolve(path, request.query))
            return resolved[0]

        if rules is not None:
            match = rules.match_redirect(
                path,
                request.query,
                file_exists=lambda: not isinstance(resolution(), NotFound | BadPath),
            )
            if match is not None:
                return self._apply_rule(out, request, match, keep)
        found = resolution()
        if isinstance(found, NotFound):
            return self._not_found(out, request, path, keep)
        if out.hot_key is not None and isinstance(found, File):
            out.hot_site = (found.fs_path, path[: path.rfind("/")], _may_be_html(path))
            out.hot_rules = rules
        return self._send_resolution(out, request, found, keep)

    def _send_resolution(
        self, out: _Connection, request: Request, found: Resolution, keep: bool, status: int = 200
    ) -> bool:
        if isinstance(found, File):
            return self._send_file(out, request, found, keep, status)
        if isinstance(found, Redirect):
            location = self._site_url(found.location)
            return self._send_location(out, request, found.status, location, keep)
        if isinstance(found, Listing):
            return self._send_listing(out, request, found, keep)
        if isinstance(found, Forbidden):
            return self._send_error(out, request, 403, "Forbidden", keep)
        if isinstance(found, BadPath):
            return self._send_error(out, request, 400, found.reason, keep)
        return self._send_error(out, request, 404, "Not Found", keep)

    def _not_found(self, out: _Connection, request: Request, path: str, keep: bool) -> bool:
        """SPA fallback, then the site's own 404.html, then ours."""
        if self._config.spa is not None and spa_eligible(
            path, request.method, request.header("accept", "*/*")
        ):
            app = self._resolver.resolve_file(self._config.spa)
            if app is not None:
                return self._send_file(out, request, app, keep)
        page = self._resolver.resolve_file("404.html")
        if page is not None:
            return self._send_file(out, request, page, keep, status=404)
        return self._send_error(out, request, 404, "Not Found", keep)

    def _apply_rule(self, out: _Connection, request: Request, match: RuleMatch, keep: bool) -> bool:
        """A _redirects rule: redirect, rewrite (200) or custom 404."""
        if match.is_redirect:
            target = match.target
            if target.startswith("/"):
                target = self._site_url(target)
            return self._send_location(out, request, match.status, target, keep)
        target_path, _, _ = match.target.partition("?")
        found = self._resolver.resolve(target_path)
        if isinstance(found, Redirect) and match.status == 200:
            # A rewrite to a directory without its slash: serve its index instead.
            found = self._resolver.resolve(target_path.rstrip("/") + "/")
        if isinstance(found, File | Listing):
            return self._send_resolution(out, request, found, keep, match.status)
        return self._not_found(out, request, target_path, keep)

    def _outside_base(self, out: _Connection, request: Request, keep: bool) -> bool:
        """With --base /repo/: "/" and "/repo" redirect to "/repo/"; the rest is 404."""
        if request.path in ("/", self._base[:-1]):
            location = self._base + (f"?{request.query}" if request.query else "")
            return self._send_location(out, request, 302, location, keep)
        return self._send_error(
            out, request, 404, f"Not Found: this site is served under {self._base}", keep
        )

    def _site_url(self, location: str) -> str:
        """A path of the site as a URL path of this server (under the base path)."""
        return self._base[:-1] + location if self._base != "/" else location

    def _current_rules(self) -> RuleSet:
        assert self._rules is not None
        rules = self._rules.current()
        if rules is not self._rules_seen:
            self._rules_seen = rules
            if rules.warnings and self._claim(_rules_version(self._config.root, rules)):
                for warning in rules.warnings:
                    print(f"sitepeek: {warning}", file=sys.stderr, flush=True)
        return rules

    def _send_listing(self, out: _Connection, request: Request, found: Listing, keep: bool) -> bool:
        entries = listing.scan(found.fs_path, self._resolver.root)
        if entries is None:
            return self._send_error(out, request, 403, "Forbidden", keep)
        url_path = self._site_url(found.url_path)
        if listing.wants_json(request.header("accept")):
            body = listing.render_json(url_path, entries)
            ctype = "application/json"
        else:
            body = listing.render_html(url_path, entries)
            if self._snippet is not None:
                body = inject.inject(body, self._snippet)
            ctype = "text/html; charset=utf-8"
        headers = self._base_headers(keep, request)
        headers += [
            ("Content-Type", ctype),
            ("Cache-Control", "no-cache"),
            ("Vary", "Accept"),
            ("Content-Length", str(len(body))),
        ]
        self._send(out, request, 200, headers, body)
        return keep

    def _respond_internal(self, out: _Connection, request: Request, keep: bool) -> bool:
        """sitepeek's own URLs under /__sitepeek__/ (never files of the site)."""
        if request.path == livereload.CLIENT_PATH and self._client is not None:
            return self._send_entity(out, request, self._client, -1, keep)
        if request.path == livereload.SOCKET_PATH and self._broadcaster is not None:
            return self._send_error(
                out,
                request,
                426,
                "This URL speaks WebSocket only.",
                keep,
                [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
            )
        return self._send_error(out, request, 404, "Not Found", keep)

    def _upgrade(
        self,
        conn: _Connection,
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
            conn.sock, self._io, broadcaster, parser.take_buffered(), lambda: self.stopping
        )

    def _respond_other_method(self, out: _Connection, request: Request, keep: bool) -> bool:
        if request.method == "OPTIONS":
            headers = self._base_headers(keep, request)
            headers.append(("Allow", ALLOW))  # RFC 9110 §8.6: no Content-Length in a 204
            if self._config.cors and "access-control-request-method" in request.headers:
                # A CORS preflight (Fetch standard §3.2.2): GET and HEAD only, any
                # origin, the request headers the page asked for, no credentials.
                headers.append(("Access-Control-Allow-Methods", ALLOW))
                asked = request.header("access-control-request-headers")
                if asked:
                    headers.append(("Access-Control-Allow-Headers", asked))
                headers.append(("Access-Control-Max-Age", "600"))
            self._send(out, request, 204, headers, b"")
            return keep
        if is_known_method(request.method):
            return self._send_error(
                out, request, 405, "Method Not Allowed", keep, [("Allow", ALLOW)]
            )
        return self._send_error(out, request, 501, "Not Implemented", keep, [("Allow", ALLOW)])

    def _base_headers(self, keep_alive: bool, request: Request | None) -> Headers:
        headers = [("Date", self._dates.now()), ("Server", SERVER)]
        if not keep_alive:
            headers.append(("Connection", "close"))
        elif request is not None and request.version == "1.0":
            headers.append(("Connection", "keep-alive"))
        return headers

    def _send_file(
        self, out: _Connection, request: Request, file: File, keep: bool, status: int = 200
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
                raise _CloseConnection from None
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
        self, out: _Connection, request: Request, exc: OSError, keep: bool
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
        self, out: _Connection, request: Request, entity: Entity, fd: int, keep: bool, status: int
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

    def _prefix(self, out: _Connection, keep: bool, version: str) -> bytes:
        """Date, Server, Connection and this request's extra header lines."""
        prefix = self._dates.prefix(keep, version)
        return prefix + out.extra if out.extra else prefix

    def _send_entity(
        self,
        out: _Connection,
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
        out: _Connection,
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
        out: _Connection,
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
        self, out: _Connection, request: Request, entity: Entity, fd: int, keep: bool
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
        out: _Connection,
        request: Request,
        status_line: bytes,
        rest: bytes,
        keep: bool,
        entity: Entity,
    ) -> None:
        """Send an answer made of bytes at hand, and keep it for the same request bytes
        when it is a file of the site that can be checked for changes cheaply."""
        key = out.hot_key
        site = out.hot_site
        if (
            key is None
            or site is None
            or self.stopping
            or len(rest) > hotcache.MAX_RESPONSE
            or not self._hot.wanted(key)
        ):
            out.sendall(status_line + self._dates.prefix(keep, request.version) + rest)
            return
        entry = hotcache.Entry(
            status_line,
            keep,
            request.version,
            rest,
            site[0],
            entity.identity,
            (),
            out.hot_rules,
            site[2],
            request.method,
            request.target,
            out.overrides,
        )
        response = self._stamped(entry)
        out.sendall(response)
        if entity.compressible and any(
            compression.has_sidecar(site[0], coding) for coding in _KNOWN_CODINGS
        ):
            return  # a sidecar rewritten in place would change no directory
        dirs = hotcache.capture(
            self._resolver.root, site[0], site[1], entity.identity, out.hot_began
        )
        if dirs is not None:
            entry.dirs = dirs
            self._hot.put(key, entry)

    def _answer_hot(self, conn: _Connection, entry: hotcache.Entry) -> bool:
        """Send what was sent for the same request bytes, from a task (``_poll`` does
        the same in the event loop); True to keep the connection."""
        self.requests += 1
        conn.last_request = started = time.monotonic()
        conn.hot_streak = True
        conn.deadline = started + self._config.send_timeout
        conn.idle = False
        conn.status = entry.status  # (set: these bytes need no header filtering)
        conn.sent = 0
        conn.sendall(self._stamped(entry))
        if self._log is not None:
            now = time.monotonic()
            self._log.record(entry.method, entry.target, entry.status, conn.sent, now - started)
        return entry.keep_alive

    def _hot_fresh(self, key: bytes, entry: hotcache.Entry) -> bool:
        """May ``entry`` answer its request bytes again now?"""
        if self.stopping:
            return False  # the answer must say Connection: close
        if entry.html and self._broadcaster is not None and not self._broadcaster.settled:
            return False  # a burst of changes is being written: the gate decides
        root_version = None
        rules = self._rules
        if rules is not None:
            # (New rules: a miss, and the full path reports their warnings.)
            current, root_version = rules.current_with_root()  # (one stat of the root)
            if current is not entry.rules or root_version is None:
                return False
        if hotcache.fresh(entry, root_version):
            return True
        self._hot.discard(key, entry)
        return False

    def _stamped(self, entry: hotcache.Entry) -> bytes:
        """The entry's response with this second's Date."""
        second, response = entry.stamped
        now = int(time.time())
        if second != now:
            response = (
                entry.status_line + self._dates.prefix(entry.keep_alive, entry.version) + entry.rest
            )
            if entry.overrides:
                response = _without_overridden(response, entry.overrides)
            entry.stamped = (now, response)
        return response

    def _sendfile(
        self,
        out: _Connection,
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
                    raise _CloseConnection
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
                raise _CloseConnection  # the file shrank under us: close, never hang
            out.sent += sent
            offset += sent
            count -= sent

    def _send_copy(
        self, out: _Connection, fd: int, offset: int, count: int, identity: entities.Identity
    ) -> None:
        """Read a chunk, check the file is still that version, send it; repeat."""
        expected = identity[1:3] + identity[4:]
        while count > 0:
            data = os.pread(fd, min(count, COPY_CHUNK), offset)
            if not data or _content_version(os.fstat(fd)) != expected:
                raise _CloseConnection  # shrank or rewritten: never send a mix
            out.deadline = time.monotonic() + self._config.send_timeout
            out.sock.sendall(data)
            out.sent += len(data)
            offset += len(data)
            count -= len(data)

    def _send_location(
        self, out: _Connection, request: Request, status: int, location: str, keep: bool
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
        out: _Connection,
        request: Request | None,
        status: int,
        detail: str,
        keep_alive: bool,
        extra: Sequence[tuple[str, str]] = (),
    ) -> bool:
        body = _error_page(status, detail)
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
        out: _Connection, request: Request | None, status: int, headers: Headers, body: bytes
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


def _without_overridden(data: bytes, names: frozenset[str]) -> bytes:
    """Drop the later of two fields named in ``names`` from the head in ``data``.

    The extra fields (_headers, --header) are placed right after Date/Server/Connection,
    before sitepeek's own Content-Type, Cache-Control and the rest: keeping the first
    of each name lets them replace ours, as Cloudflare Pages does.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data
    lines = data[:end].split(b"\r\n")
    seen: set[str] = set()
    kept = [lines[0]]
    for line in lines[1:]:
        name = line.partition(b":")[0].decode("latin-1").lower()
        if name in names:
            if name in seen:
                continue
            seen.add(name)
        kept.append(line)
    return b"\r\n".join(kept) + data[end:]


def _claim_in_process() -> Callable[[str], bool]:
    claimed: set[str] = set()

    def claim(key: str) -> bool:
        first = key not in claimed
        claimed.add(key)
        return first

    return claim


def _rules_version(root: object, rules: RuleSet) -> str:
    """Identifies one version of the rules files' warnings (what is reported once)."""
    stamps = []
    for name in ("_redirects", "_headers"):
        try:
            st = os.stat(os.path.join(str(root), name))
            stamps.append(f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}")
        except OSError:
            stamps.append("-")
    text = "\n".join((*stamps, *rules.warnings))
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def _overridable(headers: Sequence[tuple[str, str]]) -> frozenset[str]:
    """Names of added fields that replace ours; Set-Cookie may repeat (RFC 6265 §3)."""
    return frozenset(name.lower() for name, _ in headers) - {"set-cookie"} - FRAMING_FIELDS


def _content_version(st: os.stat_result) -> tuple[int, int, int]:
    """(ino, mtime_ns, size): the part of an Identity that a rewrite in place changes."""
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _header_bytes(headers: Sequence[tuple[str, str]]) -> bytes:
    return "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")


def _inline(work: Callable[[], T]) -> T:
    return work()


def _may_be_html(path: str) -> bool:
    """Could this URL path be answered with an HTML page (cheap, before resolving)?"""
    last = path.rsplit("/", 1)[-1]
    return not last or "." not in last or last.lower().endswith((".html", ".htm"))


def _report_bug(where: str, exc: Exception) -> None:
    print(f"sitepeek: internal error ({where}): {exc!r}", file=sys.stderr, flush=True)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _error_page(status: int, detail: str) -> bytes:
    title = f"{status} {reason_phrase(status)}"
    text = html.escape(detail if detail != reason_phrase(status) else "")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{title}</title><meta name="viewport" content="width=device-width">'
        "<style>body{font:16px/1.5 system-ui,sans-serif;margin:15vh auto;max-width:34rem;"
        "padding:0 1rem;color:#222}h1{font-size:1.6rem;margin:0 0 .5rem}"
        "p{color:#666}@media(prefers-color-scheme:dark){body{background:#111;color:#eee}}"
        "</style></head>\n"
        f"<body><h1>{title}</h1><p>{text}</p><p><small>{SERVER}</small></p></body></html>\n"
    ).encode()
