"""Forward requests under a path prefix to a local backend (``--proxy /api=http://...``).

What a dev server's proxy does (Vite's ``server.proxy``, webpack-dev-server's
``proxy``), for a backend on this machine, over the worker model's own sockets.

Choices, and why:

* **Prefix rewrite, nginx's rule.** With no path in the URL the request path is kept
  (``/api=http://127.0.0.1:8000``: ``/api/x`` -> ``/api/x``, Vite's and webpack's
  default). With a path, the prefix is *replaced* by it (``/api=http://h:8000/v1``:
  ``/api/x`` -> ``/v1/x``; ``/api=http://h:8000/``: ``/api/x`` -> ``/x``). The query
  string is passed through untouched, the path is never decoded or normalised.
* **Host is kept** (Vite's ``changeOrigin: false``, the default): the backend sees the
  host the browser used, so the links, redirects and cookies it makes point at
  sitepeek. ``X-Forwarded-Host`` carries it too, ``X-Forwarded-For`` gets the client's
  address appended, ``X-Forwarded-Proto: http``; an X-Forwarded-Host or -Proto an
  upstream proxy already set is kept.
* **One backend connection per request**, with ``Connection: close``: nothing to pool
  or to go stale for a development proxy, and a backend restart never breaks a reused
  connection. The *client* connection stays alive whenever framing allows.
* **Hop-by-hop fields are dropped both ways** (RFC 9110 §7.6.1): Connection,
  Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade and every
  field the Connection header names; each hop is framed anew. A request body is sent
  with its exact Content-Length, or chunked if it came chunked; ``Expect:
  100-continue`` is answered by sitepeek once the backend is connected. A response
  with a Content-Length keeps it; a chunked or close-delimited one is sent chunked to
  an HTTP/1.1 client (the connection stays alive) and close-delimited to HTTP/1.0.
* **Failures are pages, never hangs.** Connect, every read and every write have a
  timeout. Before the response head has reached the client, a failure is a 502 page
  (504 for a timeout) naming the backend; after it, the client connection is closed,
  as a truncated body must not look complete. A client that goes away closes the
  backend connection.
* **WebSocket upgrades are tunnelled**: the handshake is forwarded (Upgrade kept), the
  backend's 101 relayed, then bytes are copied both ways -- the backend-to-client
  direction in a task of the worker model (``io.spawn``), the other in the current
  one -- until either side closes. The tunnel has no idle timeout by default: an HMR
  socket sits idle for minutes and a dropped one reloads the page.

The request and response are written and read in one direction at a time: a backend
that answers a large upload with a large response *while* still reading it would
stall until the read timeout. Development backends read the body first.

Why one module of this size: one exchange (request head, body, response, tunnel,
failure page) is one state machine; the route grammar lives apart in :mod:`routes`.
"""

from __future__ import annotations

import contextlib
import html
import ipaddress
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from sitepeek.concurrency import Io
from sitepeek.http11 import (
    HOP_BY_HOP,
    BadGateway,
    BodyData,
    EndOfBody,
    Framing,
    ProtocolError,
    Request,
    RequestParser,
    ResponseHead,
    ResponseParser,
    combine_fields,
    reason_phrase,
    response_head,
)
from sitepeek.representation import http_date
from sitepeek.responses import SERVER, overridable, without_overridden
from sitepeek.routes import ProxyRoute, match, parse_route

__all__ = ["HOP_BY_HOP", "ClientWriter", "ProxyRoute", "forward", "match", "parse_route"]

RECV_SIZE = 64 * 1024
# Request fields rebuilt by forward() rather than copied.
_REBUILT = frozenset({"content-length", "expect", "x-forwarded-for"})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_TUNNEL_JOIN_SECONDS = 5.0


# -- forwarding ------------------------------------------------------------------------
class ClientWriter(Protocol):
    """Where the response to the client goes: the connection's counting writer, so
    the request log shows the status and bytes that really went out."""

    def begin(self, status: int) -> None:
        """The final status of the response about to be written (1xx excluded)."""

    def write(self, data: bytes) -> None:
        """Send ``data`` as it is, all of it; raises OSError."""


class _SocketWriter:
    """A ClientWriter straight to a socket (nothing counts)."""

    def __init__(self, sock: socket.socket) -> None:
        self.write = sock.sendall

    def begin(self, status: int) -> None:
        pass


class _Failure(Exception):
    """The exchange failed; answer with ``status`` if nothing final was sent yet."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status} {detail}")
        self.status = status
        self.detail = detail


class _BackendWriteFailed(_Failure):
    """The backend stopped reading the request (it may have answered early)."""


class _ClientGone(Exception):
    """The client closed, reset or stalled its connection: nothing more can be sent."""


def forward(
    sock: socket.socket,
    request: Request,
    parser: RequestParser,
    route: ProxyRoute,
    io: Io,
    peer: object,
    *,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    tunnel_timeout: float | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
    client: ClientWriter | None = None,
) -> bool:
    """Forward ``request`` (just returned by ``parser``) to ``route``'s backend.

    Streams the request body from ``sock`` (through ``parser``) and the response back
    to it. ``peer`` is the client's address as accept() returned it (or None), for
    X-Forwarded-For. ``read_timeout`` bounds each wait for the backend (and for the
    client, while its body is read); ``tunnel_timeout`` the idle time of a WebSocket
    tunnel (None: until either side closes). Returns whether the client connection
    can be kept alive; never raises for network trouble on either side.
    ``extra_headers`` (--header, --cors) go on every final response, the backend's
    and our failure pages alike, replacing the backend's fields of the same name
    (the one rule: :func:`sitepeek.responses.without_overridden`).
    Everything for the client is written through ``client`` (default: ``sock``).
    """
    timeouts = _Timeouts(connect_timeout, read_timeout, tunnel_timeout)
    exchange = _Exchange(sock, request, parser, route, io, peer, timeouts)
    exchange.extra = tuple(combine_fields(extra_headers))
    exchange.overrides = overridable(exchange.extra)
    if client is not None:
        exchange.client = client
    return exchange.run()


@dataclass(frozen=True, slots=True)
class _Timeouts:
    connect: float = 5.0
    read: float = 60.0
    tunnel: float | None = None


_DEFAULT_TIMEOUTS = _Timeouts()


class _Exchange:
    """One request forwarded and its response relayed."""

    def __init__(
        self,
        sock: socket.socket,
        request: Request,
        parser: RequestParser,
        route: ProxyRoute,
        io: Io,
        peer: object,
        timeouts: _Timeouts = _DEFAULT_TIMEOUTS,
    ) -> None:
        self.sock = sock
        self.request = request
        self.parser = parser
        self.route = route
        self.io = io
        self.peer = peer
        self.timeouts = timeouts
        self.upgrade = _is_websocket_upgrade(request)
        self.body_done = not request.has_body
        self.head_queued = False  # the final response head is ready to go to the client
        self.committed = False  # ... and has gone: a failure can no longer be a page
        self.extra: tuple[tuple[str, str], ...] = ()
        self.overrides: frozenset[str] = frozenset()  # the names in extra that replace
        self.client: ClientWriter = _SocketWriter(sock)

    # -- the whole exchange ------------------------------------------------------------
    def run(self) -> bool:
        request = self.request
        try:
            backend = self._connect()
        except _Failure as failure:
            # The body, if any, is still unread: the handler discards it before the next
            # request -- unless the client holds it back for a 100 it will never get.
            held_back = request.has_body and request.expects_continue
            return self._send_failure(failure, request.keep_alive and not held_back)
        try:
            return self._exchange(backend)
        except _ClientGone:
            return False
        except _Failure as failure:
            if self.committed:
                return False  # a truncated response must not look complete: close
            return self._send_failure(failure, request.keep_alive and self.body_done)
        finally:
            with contextlib.suppress(OSError):
                backend.close()

    def _exchange(self, backend: socket.socket) -> bool:
        backend.settimeout(self.timeouts.read)
        self._send_backend(backend, self._request_head())
        if self.request.has_body:
            # A backend that answers early (401, 413) and stops reading: relay that.
            with contextlib.suppress(_BackendWriteFailed):
                self._send_body(backend)
        return self._relay_response(backend)

    # -- backend connection ------------------------------------------------------------
    def _connect(self) -> socket.socket:
        """A connected backend socket of the client socket's kind (gevent or plain)."""
        route = self.route
        deadline = time.monotonic() + self.timeouts.connect
        last_error: OSError | None = None
        for family, address in self._addresses():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # (Under TLS, the kind of socket the TLS layer runs on.)
            kind = getattr(self.sock, "tcp_type", type(self.sock))
            backend = kind(family, socket.SOCK_STREAM)
            try:
                backend.settimeout(remaining)
                backend.connect(address)
                backend.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except TimeoutError:
                backend.close()
                last_error = None
                break
            except OSError as exc:
                backend.close()
                last_error = exc
                continue
            return backend
        if last_error is None:  # out of time
            raise _Failure(
                504,
                f"sitepeek could not reach {route.origin}: "
                f"no answer within {self.timeouts.connect:g} s",
            )
        raise _Failure(502, f"sitepeek could not reach {route.origin}: {_describe(last_error)}")

    def _addresses(self) -> list[tuple[int, tuple[object, ...]]]:
        host, port = self.route.host, self.route.port
        with contextlib.suppress(ValueError):
            ip = ipaddress.ip_address(host)
            return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (host, port))]
        try:
            # getaddrinfo blocks: off the event loop in the greenlet model.
            infos = self.io.offload(lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            raise _Failure(
                502,
                f"sitepeek could not reach {self.route.origin}: "
                f"cannot resolve {host} ({_describe(exc)})",
            ) from None
        return [(int(family), tuple(address)) for family, _, _, _, address in infos]

    def _send_backend(self, backend: socket.socket, data: bytes) -> None:
        try:
            backend.sendall(data)
        except TimeoutError:
            raise _BackendWriteFailed(
                504, f"{self.route.origin} stopped reading the request for {self.timeouts.read:g} s"
            ) from None
        except OSError as exc:
            raise _BackendWriteFailed(
                502, f"{self.route.origin} closed the connection: {_describe(exc)}"
            ) from None

    def _recv_backend(self, backend: socket.socket) -> bytes:
        try:
            return backend.recv(RECV_SIZE)
        except TimeoutError:
            raise _Failure(
                504, f"{self.route.origin} did not respond within {self.timeouts.read:g} s"
            ) from None
        except OSError as exc:
            raise _Failure(
                502, f"{self.route.origin} closed the connection: {_describe(exc)}"
            ) from None

    # -- client connection -------------------------------------------------------------
    def _send_client(self, data: bytes) -> None:
        try:
            self.client.write(data)
        except OSError:  # timeouts included: the client stopped reading
            raise _ClientGone from None

    # -- request -----------------------------------------------------------------------
    def _request_head(self) -> bytes:
        request = self.request
        route = self.route
        target = route.rewrite(request.path)
        if request.query is not None:
            target += "?" + request.query
        headers = request.headers
        drop = HOP_BY_HOP | _REBUILT | _tokens(request.header("connection"))
        lines = [f"{request.method} {target} HTTP/1.1\r\n"]
        lines += [
            f"{_title_case(name)}: {value}\r\n"
            for name, value in headers.items()
            if name not in drop
        ]
        if "host" not in headers:  # an HTTP/1.0 client; HTTP/1.1 requires one
            lines.append(f"Host: {route.origin.removeprefix('http://')}\r\n")
        forwarded_for = headers.get("x-forwarded-for", "")
        address = _client_address(self.peer)
        if address is not None:
            forwarded_for = f"{forwarded_for}, {address}" if forwarded_for else address
        if forwarded_for:
            lines.append(f"X-Forwarded-For: {forwarded_for}\r\n")
        if "x-forwarded-proto" not in headers:
            lines.append("X-Forwarded-Proto: http\r\n")
        if "x-forwarded-host" not in headers and "host" in headers:
            lines.append(f"X-Forwarded-Host: {headers['host']}\r\n")
        if request.has_body:
            if "transfer-encoding" in headers:
                lines.append("Transfer-Encoding: chunked\r\n")
            else:
                lines.append(f"Content-Length: {_declared_length(headers)}\r\n")
        elif "content-length" in headers:
            lines.append("Content-Length: 0\r\n")  # the one length without a body
        if self.upgrade:
            lines.append(f"Upgrade: {request.header('upgrade')}\r\nConnection: Upgrade\r\n")
        else:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    def _send_body(self, backend: socket.socket) -> None:
        """Stream the request body from the client to the backend, re-framed."""
        request = self.request
        chunked = "transfer-encoding" in request.headers
        if request.expects_continue:
            self._send_client(_CONTINUE)  # the backend is there: let the client send
        sock = self.sock
        previous_timeout = sock.gettimeout()
        sock.settimeout(self.timeouts.read)
        try:
            while True:
                try:
                    piece = self.parser.next_body_chunk()
                except ProtocolError as exc:
                    if self.parser.eof:
                        raise _ClientGone from None
                    raise _Failure(exc.status, exc.reason) from None
                if isinstance(piece, EndOfBody):
                    break
                if piece is None:
                    self.parser.feed(self._recv_client())
                    continue
                if chunked:
                    piece = b"%x\r\n%b\r\n" % (len(piece), piece)
                self._send_backend(backend, piece)
            if chunked:
                self._send_backend(backend, _LAST_CHUNK)
            self.body_done = True
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(previous_timeout)

    def _recv_client(self) -> bytes:
        try:
            return self.sock.recv(RECV_SIZE)
        except TimeoutError:
            raise _Failure(408, "The request body did not arrive in time") from None
        except OSError:
            raise _ClientGone from None

    # -- response ----------------------------------------------------------------------
    def _relay_response(self, backend: socket.socket) -> bool:
        """Read the backend's response and send it on; returns keep-alive."""
        request = self.request
        parser = ResponseParser(request.method)
        out: list[bytes] = []
        chunk_out = False
        keep_alive = False
        while True:
            try:
                event = parser.next_event()
            except BadGateway as exc:
                raise _Failure(
                    502,
                    f"sitepeek got an invalid response from {self.route.origin}: "
                    f"{_lower_first(exc.reason)}",
                ) from None
            if event is None:
                if out:
                    self._flush(out)
                parser.feed(self._recv_backend(backend))
            elif isinstance(event, ResponseHead):
                if event.status == 101:
                    if not self.upgrade:
                        raise _Failure(
                            502, f"{self.route.origin} switched protocols without being asked"
                        )
                    self.client.begin(101)
                    out.append(self._client_head(event, chunked=False, keep_alive=True))
                    out.append(parser.take_buffered())
                    self._flush(out)
                    return self._tunnel(backend)
                if event.informational:
                    # RFC 9110 §15.2: relay 1xx to an HTTP/1.1 client, except the 100
                    # sitepeek answered for itself (Expect is not forwarded).
                    if event.status != 100 and request.version == "1.1":
                        out.append(self._client_head(event, chunked=False, keep_alive=True))
                    continue
                delimited = event.framing in (Framing.CHUNKED, Framing.CLOSE)
                chunk_out = delimited and request.version == "1.1"
                keep_alive = (
                    request.keep_alive and self.body_done and not (delimited and not chunk_out)
                )
                self.client.begin(event.status)
                out.append(self._client_head(event, chunked=chunk_out, keep_alive=keep_alive))
                self.head_queued = True
            elif isinstance(event, BodyData):
                data = event.data
                out.append(b"%x\r\n%b\r\n" % (len(data), data) if chunk_out else data)
            else:  # EndOfMessage
                if chunk_out:
                    out.append(_LAST_CHUNK)
                self._flush(out)
                return keep_alive

    def _flush(self, out: list[bytes]) -> None:
        # One send for the head and the first body bytes (Nagle, delayed ACK).
        data = b"".join(out)
        out.clear()
        if data:
            self.committed = self.head_queued
            self._send_client(data)

    def _client_head(self, head: ResponseHead, *, chunked: bool, keep_alive: bool) -> bytes:
        status = head.status
        drop = HOP_BY_HOP | {"content-length"} | _tokens(head.header("connection"))
        extra = self.extra if status >= 200 and status != 101 else ()
        lines = [f"HTTP/1.1 {status} {head.reason or reason_phrase(status)}\r\n"]
        # Before the backend's fields: the override rule keeps the first of each name.
        lines += [f"{name}: {value}\r\n" for name, value in extra]
        lines += [
            f"{name}: {value}\r\n" for name, value in head.headers if name.lower() not in drop
        ]
        length = _response_length(head)
        if length is not None:
            lines.append(f"Content-Length: {length}\r\n")
        if status == 101:
            lines.append(f"Upgrade: {head.header('upgrade') or 'websocket'}\r\n")
            lines.append("Connection: Upgrade\r\n")
        elif status >= 200:
            if chunked:
                lines.append("Transfer-Encoding: chunked\r\n")
            if not keep_alive:
                lines.append("Connection: close\r\n")
            elif self.request.version == "1.0":
                lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        data = "".join(lines).encode("latin-1")
        return without_overridden(data, self.overrides) if extra and self.overrides else data

    # -- WebSocket tunnel --------------------------------------------------------------
    def _tunnel(self, backend: socket.socket) -> bool:
        """Copy bytes both ways until either side closes; the connection is then done."""
        sock = self.sock
        for each in (sock, backend):
            each.settimeout(self.timeouts.tunnel)
        early = self.parser.take_buffered()  # sent by the client after its handshake
        done = self.io.signal()

        def backend_to_client() -> None:
            try:
                _pump(backend, self.client.write)
            finally:
                _shutdown(sock)
                _shutdown(backend)
                done.set()

        try:
            if early:
                backend.sendall(early)
        except OSError:
            done.set()
        else:
            self.io.spawn(backend_to_client)
            try:
                _pump(sock, backend.sendall)
            finally:
                _shutdown(backend)
                _shutdown(sock)
        done.wait(_TUNNEL_JOIN_SECONDS)
        for each in (backend, sock):
            with contextlib.suppress(OSError):
                each.close()
        return False

    # -- failure page ------------------------------------------------------------------
    def _send_failure(self, failure: _Failure, keep_alive: bool) -> bool:
        status = failure.status
        body = _failure_page(status, failure.detail, self.route)
        headers = [
            ("Date", http_date(time.time())),
            ("Server", SERVER),
            *self.extra,  # (after Date and Server, before the fields they replace)
            ("Content-Type", "text/html; charset=utf-8"),
            ("Cache-Control", "no-store"),
            ("Content-Length", str(len(body))),
        ]
        if not keep_alive:
            headers.append(("Connection", "close"))
        elif self.request.version == "1.0":
            headers.append(("Connection", "keep-alive"))
        head = without_overridden(response_head(status, headers), self.overrides)
        self.client.begin(status)
        try:
            self.client.write(head if self.request.method == "HEAD" else head + body)
        except OSError:
            return False
        return keep_alive


def _pump(source: socket.socket, sink: Callable[[bytes], None]) -> None:
    """Copy until ``source`` closes or either side fails."""
    try:
        while data := source.recv(RECV_SIZE):
            sink(data)
    except OSError:
        pass


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _is_websocket_upgrade(request: Request) -> bool:
    """RFC 6455 §4.1: GET, HTTP/1.1, Connection: upgrade, Upgrade: websocket."""
    return (
        request.method == "GET"
        and request.version == "1.1"
        and "upgrade" in _tokens(request.header("connection"))
        and "websocket" in _tokens(request.header("upgrade"))
    )


def _tokens(value: str | None) -> frozenset[str]:
    """The lowercase tokens of a comma-separated field (Connection, Upgrade)."""
    if not value:
        return frozenset()
    return frozenset(t for t in (part.strip().lower() for part in value.split(",")) if t)


def _declared_length(headers: Mapping[str, str]) -> int:
    # The parser validated it: identical values at most (RFC 9112 §6.3 item 5).
    return int(headers.get("content-length", "0").split(",")[0].strip())


def _response_length(head: ResponseHead) -> int | None:
    """The Content-Length to send the client, normalised; None for none."""
    if head.framing is Framing.LENGTH:
        return head.content_length
    if head.framing is not Framing.NONE or head.status < 200 or head.status == 204:
        return None  # RFC 9110 §8.6: never in 1xx or 204
    # HEAD and 304: the length the body would have had, if the backend said so clearly.
    value = head.header("content-length")
    if value is None:
        return None
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1:
        return None
    (text,) = values
    return int(text) if text.isdigit() and text.isascii() and len(text) <= 18 else None


def _client_address(peer: object) -> str | None:
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str) and peer[0]:
        return peer[0]
    return None


def _title_case(name: str) -> str:
    """``x-forwarded-for`` -> ``X-Forwarded-For``: what naive backends compare against."""
    return "-".join(part[:1].upper() + part[1:] for part in name.split("-"))


def _describe(exc: OSError) -> str:
    return _lower_first(exc.strerror or str(exc) or type(exc).__name__)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _failure_page(status: int, detail: str, route: ProxyRoute) -> bytes:
    title = f"{status} {reason_phrase(status)}"
    hint = ""
    if status in (502, 504):  # the backend's fault, not the request's
        hint = (
            f"<p>Requests under <code>{html.escape(route.prefix or '/')}</code> are "
            f"forwarded to <code>{html.escape(route.origin)}</code> "
            "(<code>--proxy</code>). Is the backend running?</p>"
        )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{title}</title><meta name="viewport" content="width=device-width">'
        "<style>body{font:16px/1.5 system-ui,sans-serif;margin:15vh auto;max-width:34rem;"
        "padding:0 1rem;color:#222}h1{font-size:1.6rem;margin:0 0 .5rem}"
        "p{color:#666}code{color:#222}"
        "@media(prefers-color-scheme:dark){body,code{background:#111;color:#eee}}"
        "</style></head>\n"
        f"<body><h1>{title}</h1><p>{html.escape(detail)}</p>{hint}"
        f"<p><small>{SERVER}</small></p></body></html>\n"
    ).encode()
