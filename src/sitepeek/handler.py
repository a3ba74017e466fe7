"""The one connection loop shared by every worker model.

socket <-> :mod:`http11` <-> :mod:`resolver` / :mod:`representation`. This is the only
place that turns exceptions into status codes. It is written against the plain
socket interface that gevent's cooperative sockets share with the standard library's,
plus the :class:`~sitepeek.workers.base.Io` primitives its worker model supplies.
"""

from __future__ import annotations

import contextlib
import errno
import html
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sitepeek import __version__, entities
from sitepeek.config import Config
from sitepeek.entities import Entity
from sitepeek.http11 import ProtocolError, Request, RequestParser, is_known_method, reason_phrase
from sitepeek.http11 import response_head as _response_head
from sitepeek.representation import (
    ByteRange,
    Precondition,
    evaluate_preconditions,
    evaluate_range,
    http_date,
)
from sitepeek.resolver import BadPath, File, Forbidden, Redirect, Resolver
from sitepeek.workers.base import Io

SERVER = f"sitepeek/{__version__}"
ALLOW = "GET, HEAD, OPTIONS"
RECV_SIZE = 64 * 1024
SENDFILE_CHUNK = 1 << 30
# After answering with "Connection: close", read what the client still sends for a
# moment, so our response is not destroyed by a TCP reset (RFC 9112 §9.6).
LINGER_SECONDS = 0.5
LINGER_BYTES = 256 * 1024

Headers = list[tuple[str, str]]


class _CloseConnection(Exception):
    """The connection cannot continue (peer gone, file changed mid-response)."""


@dataclass(slots=True, eq=False)
class _Connection:
    sock: socket.socket
    idle: bool = True
    idle_since: float = 0.0


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

    def __init__(self, config: Config, io: Io) -> None:
        self._config = config
        self._io = io
        self._resolver = Resolver(config.root)
        self._dates = _DateCache()
        self._entities = entities.EntityCache()
        self._connections: set[_Connection] = set()
        self._lock = threading.Lock()
        self.stopping = False

    # -- lifecycle, called by the worker model ---------------------------------------
    def begin_shutdown(self) -> None:
        """Stop reusing connections and close the idle ones at once."""
        self.stopping = True
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
        """Close the connection that has been idle longest, to make room for a new one.

        Called by the worker model when it is at ``max_connections``: an idle
        keep-alive connection is cheap for its client to reopen, a new client waiting
        in the backlog is not (nginx reclaims idle connections the same way).
        """
        with self._lock:
            idle = [conn for conn in self._connections if conn.idle]
        if not idle:
            return False
        _shutdown(min(idle, key=lambda conn: conn.idle_since).sock)
        return True

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    # -- one connection ------------------------------------------------------------
    def serve(self, sock: socket.socket, peer: object = None) -> None:
        """Serve one accepted connection until it closes; never raises."""
        conn = _Connection(sock, idle_since=time.monotonic())
        with self._lock:
            self._connections.add(conn)
        linger = False
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            linger = self._serve_requests(conn)
            if linger and not self.stopping:
                self._linger(sock)
        except (OSError, _CloseConnection):
            pass  # the peer went away or the response could not be completed
        except Exception as exc:  # a bug must cost one connection, never the server
            _report_bug("connection", exc)
        finally:
            with self._lock:
                self._connections.discard(conn)
            with contextlib.suppress(OSError):
                sock.close()

    def _serve_requests(self, conn: _Connection) -> bool:
        """Answer requests until the connection should close; True to linger."""
        parser = RequestParser()
        while True:
            try:
                request = self._read_request(conn, parser)
            except ProtocolError as exc:
                self._send_error(conn.sock, None, exc.status, exc.reason, keep_alive=False)
                return True
            except TimeoutError:
                if parser.has_partial_request:
                    self._send_error(conn.sock, None, 408, "Request Timeout", keep_alive=False)
                return False
            if request is None:
                return False
            conn.sock.settimeout(self._config.send_timeout)  # for the writes that follow
            keep_alive = self._respond(conn.sock, request)
            conn.idle_since = time.monotonic()
            if not keep_alive or self.stopping:
                return not keep_alive

    def _read_request(self, conn: _Connection, parser: RequestParser) -> Request | None:
        """The next request, None when the peer closed or we are stopping.

        Raises ProtocolError, or TimeoutError when the client is too slow: an idle
        keep-alive connection gets ``keepalive_timeout``; once a request has begun,
        its whole head must arrive within ``header_timeout``.
        """
        sock = conn.sock
        deadline = 0.0
        while True:
            request = parser.next_request()
            if request is not None or parser.eof:
                conn.idle = False
                return request
            # Idle means no request in progress: what shutdown and reclaim may close.
            conn.idle = not parser.has_partial_request
            if not conn.idle:
                now = time.monotonic()
                if not deadline:
                    deadline = now + self._config.header_timeout
                timeout = deadline - now
                if timeout <= 0:
                    raise TimeoutError
            else:
                if self.stopping:
                    return None
                timeout = self._config.keepalive_timeout
            sock.settimeout(timeout)
            parser.feed(sock.recv(RECV_SIZE))

    # -- responses -----------------------------------------------------------------
    def _respond(self, sock: socket.socket, request: Request) -> bool:
        """Answer one request; returns whether the connection stays open."""
        keep_alive = request.keep_alive and not self.stopping
        if request.has_body and request.expects_continue:
            # We answer without reading the body the client holds back (RFC 9110
            # §10.1.1), so the connection cannot be reused.
            keep_alive = False
        method = request.method
        if method not in ("GET", "HEAD"):
            return self._respond_other_method(sock, request, keep_alive)
        try:
            resolution = self._resolver.resolve(request.path, request.query)
            if isinstance(resolution, File):
                return self._send_file(sock, request, resolution, keep_alive)
            if isinstance(resolution, Redirect):
                return self._send_redirect(sock, request, resolution, keep_alive)
            if isinstance(resolution, Forbidden):
                return self._send_error(sock, request, 403, "Forbidden", keep_alive)
            if isinstance(resolution, BadPath):
                return self._send_error(sock, request, 400, resolution.reason, keep_alive)
            return self._send_error(sock, request, 404, "Not Found", keep_alive)
        except (OSError, _CloseConnection):
            raise
        except Exception as exc:  # a bug must cost one response, not the server
            _report_bug(request.path, exc)
            return self._send_error(sock, request, 500, "Internal Server Error", False)

    def _respond_other_method(self, sock: socket.socket, request: Request, keep: bool) -> bool:
        if request.method == "OPTIONS":
            headers = self._base_headers(keep, request)
            headers.append(("Allow", ALLOW))  # RFC 9110 §8.6: no Content-Length in a 204
            sock.sendall(_response_head(204, headers))
            return keep
        if is_known_method(request.method):
            return self._send_error(
                sock, request, 405, "Method Not Allowed", keep, [("Allow", ALLOW)]
            )
        return self._send_error(sock, request, 501, "Not Implemented", keep, [("Allow", ALLOW)])

    def _base_headers(self, keep_alive: bool, request: Request | None) -> Headers:
        headers = [("Date", self._dates.now()), ("Server", SERVER)]
        if not keep_alive:
            headers.append(("Connection", "close"))
        elif request is not None and request.version == "1.0":
            headers.append(("Connection", "keep-alive"))
        return headers

    def _send_file(self, sock: socket.socket, request: Request, file: File, keep: bool) -> bool:
        if file.stat is not None:
            cached = self._entities.get(file.fs_path, file.stat)
            if cached is not None:
                return self._send_entity(sock, request, cached, -1, keep)
        try:
            # O_NONBLOCK: should the path have become a FIFO since it was resolved,
            # opening it must not wait for a writer.
            fd = os.open(file.fs_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            return self._send_open_error(sock, request, exc, keep)
        try:
            # Everything below uses this descriptor: the response is one version of
            # the file even if it is replaced or rewritten meanwhile.
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return self._send_error(sock, request, 404, "Not Found", keep)
            try:
                entity, st = entities.load(file.fs_path, fd, st)
            except entities.FileChanged:
                return self._send_error(
                    sock,
                    request,
                    503,
                    "The file is being written; try again.",
                    keep,
                    [("Retry-After", "1")],
                )
            self._entities.put(file.fs_path, entity)
            return self._send_entity(sock, request, entity, fd, keep)
        finally:
            os.close(fd)

    def _send_open_error(
        self, sock: socket.socket, request: Request, exc: OSError, keep: bool
    ) -> bool:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return self._send_error(sock, request, 403, "Forbidden", keep)
        return self._send_error(sock, request, 404, "Not Found", keep)

    def _send_entity(
        self, sock: socket.socket, request: Request, entity: Entity, fd: int, keep: bool
    ) -> bool:
        """Answer with ``entity``; ``fd`` is its open file when the body is not cached."""
        method = request.method
        headers = request.headers
        size = entity.size
        precondition = evaluate_preconditions(method, headers, entity.etag, entity.last_modified)
        if precondition is Precondition.NOT_MODIFIED:
            # RFC 9110 §15.4.5: the validators and caching fields, no content; RFC 9110
            # §8.6 allows the Content-Length the 200 would have had.
            sock.sendall(
                b"HTTP/1.1 304 Not Modified\r\n"
                + self._dates.prefix(keep, request.version)
                + entity.validator_fields
                + b"Content-Length: %d\r\n\r\n" % size
            )
            return keep
        if precondition is Precondition.FAILED:
            return self._send_error(sock, request, 412, "Precondition Failed", keep)
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
                sock,
                request,
                416,
                "Range Not Satisfiable",
                keep,
                [("Content-Range", f"bytes */{size}")],
            )
        head = b"".join(
            (
                status_line,
                self._dates.prefix(keep, request.version),
                entity.fields,
                extra,
                b"Content-Length: %d\r\n\r\n" % length,
            )
        )
        body = entity.body
        if method == "HEAD":
            sock.sendall(head)
        elif body is not None:
            # One send: head and body in separate writes stall on Nagle + delayed ACK.
            sock.sendall(head + (body if length == size else body[start : start + length]))
        else:
            sock.sendall(head)
            self._sendfile(sock, fd, start, length)
        return keep

    def _sendfile(self, sock: socket.socket, fd: int, offset: int, count: int) -> None:
        """Zero-copy send; the socket is non-blocking underneath in every model."""
        out = sock.fileno()
        timeout = self._config.send_timeout
        while count > 0:
            try:
                sent = os.sendfile(out, fd, offset, min(count, SENDFILE_CHUNK))
            except BlockingIOError:
                self._io.wait_writable(sock, timeout)
                continue
            if sent == 0:
                raise _CloseConnection  # the file shrank under us: close, never hang
            offset += sent
            count -= sent

    def _send_redirect(
        self, sock: socket.socket, request: Request, redirect: Redirect, keep: bool
    ) -> bool:
        location = redirect.location
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
        self._send(sock, request, redirect.status, headers, body)
        return keep

    def _send_error(
        self,
        sock: socket.socket,
        request: Request | None,
        status: int,
        detail: str,
        keep_alive: bool,
        extra: Sequence[tuple[str, str]] = (),
    ) -> bool:
        body = _error_page(status, detail)
        headers = self._base_headers(keep_alive, request)
        headers += extra
        headers += [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Cache-Control", "no-cache"),
            ("Content-Length", str(len(body))),
        ]
        self._send(sock, request, status, headers, body)
        return keep_alive

    @staticmethod
    def _send(
        sock: socket.socket, request: Request | None, status: int, headers: Headers, body: bytes
    ) -> None:
        head = _response_head(status, headers)
        if request is not None and request.method == "HEAD":
            sock.sendall(head)
        else:
            sock.sendall(head + body)

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
