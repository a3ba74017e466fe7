"""The TLS port's entry: a connection's first bytes decide what it is.

With ``--https`` (or ``--cert``/``--key``) every connection arrives on a port that
speaks TLS. :class:`TlsPort` takes one from the connection table and, in its own
task, reads its first bytes: a TLS handshake record starts TLS (the connection's
socket becomes a :class:`~sitepeek.tls.TlsSocket` and the handler serves it as any
other); anything else is a plain-HTTP request, answered here with a redirect to its
https:// URL (or, for a phone that cannot trust us yet, the local CA's certificate)
and closed. It writes through the handler's :class:`~sitepeek.writer.Writer`, so
what goes out is counted and logged like every other answer.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from typing import cast

from sitepeek import tls
from sitepeek.concurrency import Io
from sitepeek.connections import RECV_SIZE, CloseConnection, Connection, ConnectionTable, linger
from sitepeek.entities import Entity
from sitepeek.hosts import HostPolicy, split_host
from sitepeek.http11 import ProtocolError, RequestParser
from sitepeek.log import RequestLog, report_bug
from sitepeek.site import CA_CERT_PATH, MISDIRECTED
from sitepeek.writer import Writer

__all__ = ["TlsPort"]


class TlsPort:
    """Starts TLS on the connections of one process's TLS port, or redirects them."""

    def __init__(
        self,
        context: ssl.SSLContext,
        io: Io,
        table: ConnectionTable,
        writer: Writer,
        hosts: HostPolicy,
        header_timeout: float,
        log: RequestLog | None,
        ca_cert: Entity | None,
        *,
        counted: Callable[[], None],
        extra: bytes = b"",
        overrides: frozenset[str] = frozenset(),
    ) -> None:
        """``counted()`` is called for each plain-HTTP request answered here;
        ``extra`` and ``overrides``: the --header and --cors fields every answer here
        carries too (see :class:`~sitepeek.connections.Connection`)."""
        self._context = context
        self._io = io
        self._table = table
        self._writer = writer
        self._hosts = hosts
        self._header_timeout = header_timeout
        self._log = log
        self._ca_cert = ca_cert
        self._counted = counted
        self._extra = extra
        self._overrides = overrides

    def serve(self, conn: Connection, proceed: Callable[[Connection], None]) -> None:
        """Serve a connection on the TLS port, in its own task; never raises.
        ``proceed(conn)`` serves it once TLS is up (in this task, never raising)."""
        try:
            secured = self._secure(conn)
        except (OSError, CloseConnection):
            secured = False  # a failed handshake (ssl.SSLError), or the client left
        except Exception as exc:
            report_bug("connection", exc)
            secured = False
        if secured:
            proceed(conn)
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
        conn.deadline = time.monotonic() + self._header_timeout
        first = conn.sock.recv(RECV_SIZE)
        if not first or conn.expired:
            return False
        if not tls.is_client_hello(first):
            self._redirect_to_https(conn, first)
            return False
        raw = self._io.raw_socket(conn.sock)
        if raw is not None:
            conn.readable = self._io.read_wait(raw.fileno())  # (closed with conn)
        secure = tls.TlsSocket(conn.sock, self._context, first, raw, conn.readable)
        secure.handshake()
        if conn.expired:
            return False
        # Socket-shaped: the methods the connection, proxy and reload code call.
        conn.sock = cast(socket.socket, secure)
        # Its non-blocking side reads (decrypts) for the event loop while the
        # connection waits for a request as a watcher (Handler.adopt); what is buffered
        # above TCP (the first request often comes with the handshake's last flight)
        # must be read before it waits for TCP again.
        conn.raw = secure.nonblocking()
        conn.pending = secure.pending
        return True

    def _redirect_to_https(self, conn: Connection, first: bytes) -> None:
        """Answer a plain-HTTP request on the TLS port with its https:// URL.

        301 for GET and HEAD, 308 otherwise (RFC 9110 §15.4.9: the method is kept);
        ``no-store``, so a browser does not remember it for a later plain server on
        the same port. The local CA's certificate is the one thing served as it is:
        a phone downloads it before it can trust anything served over TLS.
        """
        writer = self._writer
        conn.extra, conn.overrides = self._extra, self._overrides
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
                    writer.send_error(conn, None, 408, "Request Timeout", keep_alive=False)
                    return
                parser.feed(data)
        except ProtocolError as exc:
            writer.send_error(conn, None, exc.status, exc.reason, keep_alive=False)
            return
        self._counted()
        started = time.monotonic()
        host = request.header("host")
        if not host or split_host(host) is None or "@" in host or "/" in host:
            status, detail = 400, "This is an HTTPS port: send a Host header, or use https://"
            writer.send_error(conn, request, status, detail, keep_alive=False)
        elif not self._hosts.allows(host):
            writer.send_error(conn, request, 421, MISDIRECTED, keep_alive=False)
        elif (
            request.path == CA_CERT_PATH
            and self._ca_cert is not None
            and request.method in ("GET", "HEAD")
        ):
            writer.send_entity(conn, request, self._ca_cert, -1, False)
        else:
            status = 301 if request.method in ("GET", "HEAD") else 308
            location = tls.https_location(host, request.target)
            body = f"This is an HTTPS port: {location}\n".encode()
            headers = [
                ("Location", location),
                ("Cache-Control", "no-store"),
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
            ]
            writer.send(conn, request, status, False, headers, body)
        if self._log is not None:
            duration = time.monotonic() - started
            self._log.record(request.method, request.target, conn.status, conn.sent, duration)
        if request.has_body or parser.has_partial_request:
            linger(conn.sock)
