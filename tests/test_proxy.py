"""Tests for :mod:`sitepeek.proxy` over real sockets.

The backend is a tiny threaded server inside the test: h11 parses what the proxy sent
(an independent, strict reader of our request side), and each test scripts the raw
bytes it answers with. The client side is a socket pair: the test holds one end and
speaks through h11 (a strict reader of our response side); a serving loop like the
handler's runs ``forward`` on the other end, in a thread with ThreadIo, or in a
greenlet with GeventIo and gevent sockets.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.socket
import h11
import pytest

from sitepeek.http11 import DEFAULT_LIMITS, RequestParser
from sitepeek.proxy import HOP_BY_HOP, ProxyRoute, forward, match, parse_route
from sitepeek.responses import SERVER
from sitepeek.websocket import accept_key
from sitepeek.workers.base import Io
from sitepeek.workers.greenlets import GeventIo
from sitepeek.workers.threads import ThreadIo

PEER = ("203.0.113.7", 51234)
BIG = 1 << 40
WAIT = 10.0


# -- the backend -----------------------------------------------------------------------
@dataclass
class Received:
    """What the backend got on one connection."""

    method: str = ""
    target: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    size: int = 0
    sha256: str = ""
    trailing: bytes = b""  # bytes after the head of an upgrade request
    closed_by_peer: threading.Event = field(default_factory=threading.Event)

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name.lower()]
        return ", ".join(values) if values else None

    @property
    def names(self) -> set[str]:
        return {k for k, _ in self.headers}


Respond = Callable[[Received, socket.socket], None]
KEEP_BODY = 1024 * 1024


class Backend:
    """A threaded HTTP server on 127.0.0.1:0 that answers with scripted bytes."""

    def __init__(self, respond: Respond, *, on_body: Callable[[int], None] | None = None):
        self.respond = respond
        self.on_body = on_body
        self.received: list[Received] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.connections: list[socket.socket] = []
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def route(self, prefix: str = "/api", path: str = "") -> ProxyRoute:
        return parse_route(f"{prefix}=http://127.0.0.1:{self.port}{path}")

    def wait_received(self, count: int = 1) -> list[Received]:
        """The records, once ``count`` connections have been accepted."""
        deadline = time.monotonic() + WAIT
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(self.received) >= count, "the backend was never connected to"
        return self.received

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        record = Received()
        self.received.append(record)
        conn.settimeout(WAIT)
        try:
            with conn:
                if self._read_request(conn, record):
                    self.respond(record, conn)
        except (OSError, h11.RemoteProtocolError):  # the proxy cut the request short
            record.closed_by_peer.set()

    def _read_request(self, conn: socket.socket, record: Received) -> bool:
        parser = h11.Connection(h11.SERVER)
        digest = hashlib.sha256()
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                parser.receive_data(conn.recv(65536))
            elif isinstance(event, h11.Request):
                record.method = event.method.decode()
                record.target = event.target.decode()
                record.headers = [(k.decode(), v.decode("latin-1")) for k, v in event.headers]
            elif isinstance(event, h11.Data):
                record.size += len(event.data)
                digest.update(event.data)
                if len(record.body) < KEEP_BODY:
                    record.body += event.data
                if self.on_body is not None:
                    self.on_body(record.size)
            elif isinstance(event, h11.EndOfMessage):
                record.sha256 = digest.hexdigest()
                record.trailing = parser.trailing_data[0]
                return True
            elif isinstance(event, h11.ConnectionClosed):
                record.closed_by_peer.set()
                return False
            else:
                raise AssertionError(f"unexpected {event!r}")

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
        self.listener.close()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.accepter.join(WAIT)
        assert not self.accepter.is_alive()
        for thread in self.threads:
            thread.join(WAIT)
            assert not thread.is_alive()


def answer(raw: bytes) -> Respond:
    def respond(record: Received, conn: socket.socket) -> None:
        conn.sendall(raw)

    return respond


def hello(record: Received, conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello")


@pytest.fixture
def backends() -> Iterator[Callable[..., Backend]]:
    started: list[Backend] = []

    def start(respond: Respond = hello, **kwargs: Any) -> Backend:
        backend = Backend(respond, **kwargs)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.close()


# -- the proxy side: a serving loop like the handler's --------------------------------
def serve(sock: socket.socket, routes: list[ProxyRoute], io: Io, **options: Any) -> None:
    parser = RequestParser(
        body_limit=lambda path: BIG if match(routes, path) else DEFAULT_LIMITS.max_body
    )
    try:
        while True:
            request = parser.next_request()
            if request is None:
                if parser.eof:
                    return
                parser.feed(sock.recv(65536))
                continue
            route = match(routes, request.path)
            assert route is not None, request.path
            if not forward(sock, request, parser, route, io, PEER, **options):
                return
    finally:
        sock.close()


@dataclass
class Proxy:
    client: socket.socket
    thread: threading.Thread

    def finished(self, timeout: float = WAIT) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


@pytest.fixture
def proxies() -> Iterator[Callable[..., Proxy]]:
    started: list[Proxy] = []

    def start(routes: list[ProxyRoute], **options: Any) -> Proxy:
        client, server = socket.socketpair()
        client.settimeout(WAIT)
        server.settimeout(WAIT)
        thread = threading.Thread(
            target=serve, args=(server, routes, ThreadIo()), kwargs=options, daemon=True
        )
        thread.start()
        proxy = Proxy(client, thread)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.client.close()
        assert proxy.finished(), "forward() did not return after the client closed"


# -- the client: h11 frames everything it sends and reads ------------------------------
@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    informational: list[int]

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name.lower()]
        return ", ".join(values) if values else None

    @property
    def names(self) -> set[str]:
        return {k for k, _ in self.headers}


class Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn = h11.Connection(h11.CLIENT)

    def send(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: Iterable[bytes] = (),
    ) -> None:
        fields = list(headers)
        if not any(k.lower() == "host" for k, _ in fields):
            fields.insert(0, ("Host", "site.test:8080"))
        self.sock.sendall(
            self.conn.send(h11.Request(method=method, target=target, headers=fields)) or b""
        )
        for piece in body:
            self.sock.sendall(self.conn.send(h11.Data(data=piece)) or b"")
        end = self.conn.send(h11.EndOfMessage())
        if end:  # (nothing for a request without a body: the peer may have closed by now)
            self.sock.sendall(end)

    def events(self) -> Iterator[Any]:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
                continue
            yield event
            if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return

    def reply(self) -> Reply:
        informational: list[int] = []
        status = 0
        headers: list[tuple[str, str]] = []
        body = bytearray()
        for event in self.events():
            if isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = [(k.decode(), v.decode("latin-1")) for k, v in event.headers]
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("closed before a complete response")
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return Reply(status, headers, bytes(body), informational)

    def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: Iterable[bytes] = (),
    ) -> Reply:
        self.send(method, target, headers, body)
        return self.reply()

    @property
    def reusable(self) -> bool:
        return self.conn.our_state is h11.IDLE


def read_closed(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


# -- routes ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("/api=http://127.0.0.1:8000", ProxyRoute("/api", "127.0.0.1", 8000, "/api")),
        ("/api/=http://127.0.0.1:8000", ProxyRoute("/api", "127.0.0.1", 8000, "/api")),
        ("/api=http://127.0.0.1:8000/", ProxyRoute("/api", "127.0.0.1", 8000, "")),
        ("/api=http://127.0.0.1:8000/v1", ProxyRoute("/api", "127.0.0.1", 8000, "/v1")),
        ("/api=http://127.0.0.1:8000/v1/", ProxyRoute("/api", "127.0.0.1", 8000, "/v1")),
        ("/api=http://localhost", ProxyRoute("/api", "localhost", 80, "/api")),
        ("/api=HTTP://LocalHost:3000", ProxyRoute("/api", "localhost", 3000, "/api")),
        ("/ws=http://[::1]:5173", ProxyRoute("/ws", "::1", 5173, "/ws")),
        ("/=http://127.0.0.1:9000", ProxyRoute("", "127.0.0.1", 9000, "")),
        (" /a/b = http://h.internal:1 ", ProxyRoute("/a/b", "h.internal", 1, "/a/b")),
    ],
)
def test_parse_route(spec: str, expected: ProxyRoute) -> None:
    assert parse_route(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/api", "expected PREFIX=URL"),
        ("=http://127.0.0.1:8000", "expected PREFIX=URL"),
        ("/api=", "expected PREFIX=URL"),
        ("api=http://127.0.0.1:8000", "must start with '/'"),
        ("/a pi=http://127.0.0.1:8000", "plain URL path"),
        ("/api?x=http://127.0.0.1:8000", "plain URL path"),
        ("/api=127.0.0.1:8000", "did you mean http://127.0.0.1:8000"),
        ("/api=https://127.0.0.1:8443", "https:// backends are not supported"),
        ("/api=ws://127.0.0.1:8000", "only http:// backends"),
        ("/api=http://user:pw@127.0.0.1:8000", "passwords"),
        ("/api=http://127.0.0.1:99999", "invalid port"),
        ("/api=http://127.0.0.1:0", "invalid port 0"),
        ("/api=http://127.0.0.1:abc", "invalid port"),
        ("/api=http://:8000", "invalid or missing host"),
        ("/api=http://bad_host name:80", "invalid or missing host"),
        ("/api=http://127.0.0.1:8000/?q=1", "query or fragment"),
        ("/api=http://127.0.0.1:8000/#x", "query or fragment"),
    ],
)
def test_parse_route_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_route(spec)
    assert message in str(info.value)
    assert repr(spec) in str(info.value)  # the message names the faulty spec


def test_match_longest_prefix_on_segments() -> None:
    api = parse_route("/api=http://127.0.0.1:1")
    auth = parse_route("/api/auth=http://127.0.0.1:2")
    other = parse_route("/apix=http://127.0.0.1:3")
    routes = [api, auth, other]
    assert match(routes, "/api") is api
    assert match(routes, "/api/") is api
    assert match(routes, "/api/users") is api
    assert match(routes, "/api/auth") is auth
    assert match(routes, "/api/auth/login") is auth
    assert match(routes, "/api/authx") is api
    assert match(routes, "/apix/1") is other
    assert match(routes, "/apixy") is None
    assert match(routes, "/ap") is None
    assert match(routes, "/") is None
    assert match([*routes, parse_route("/=http://127.0.0.1:4")], "/other").port == 4  # type: ignore[union-attr]
    assert match([parse_route("/=http://127.0.0.1:4")], "*") is None
    first, second = parse_route("/a=http://127.0.0.1:1"), parse_route("/a/=http://127.0.0.1:2")
    assert match([first, second], "/a/b") is first  # a tie goes to the first


@pytest.mark.parametrize(
    ("spec", "path", "rewritten"),
    [
        ("/api=http://h:1", "/api/x/y", "/api/x/y"),
        ("/api=http://h:1", "/api", "/api"),
        ("/api=http://h:1/", "/api/x", "/x"),
        ("/api=http://h:1/", "/api", "/"),
        ("/api=http://h:1/v1", "/api/x", "/v1/x"),
        ("/api=http://h:1/v1", "/api", "/v1"),
        ("/api=http://h:1/v1", "/api/", "/v1/"),
        ("/=http://h:1/v1", "/x", "/v1/x"),
        ("/=http://h:1", "/x", "/x"),
    ],
)
def test_rewrite(spec: str, path: str, rewritten: str) -> None:
    assert parse_route(spec).rewrite(path) == rewritten


def test_hop_by_hop_set() -> None:
    assert {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"} <= (
        HOP_BY_HOP
    )


# -- request side ----------------------------------------------------------------------
def test_get_is_forwarded_with_rebuilt_head(backends: Any, proxies: Any) -> None:
    backend = backends()
    proxy = proxies([backend.route()])
    reply = Client(proxy.client).request("GET", "/api/items?q=a%20b&x=1")
    assert (reply.status, reply.body, reply.header("content-type")) == (200, b"hello", "text/plain")
    (got,) = backend.received
    assert got.method == "GET"
    assert got.target == "/api/items?q=a%20b&x=1"  # query and encoding untouched
    assert got.header("host") == "site.test:8080"  # Host is kept
    assert got.header("x-forwarded-host") == "site.test:8080"
    assert got.header("x-forwarded-proto") == "http"
    assert got.header("x-forwarded-for") == "203.0.113.7"
    assert got.header("connection") == "close"


def test_prefix_rewrite_and_query_passthrough(backends: Any, proxies: Any) -> None:
    backend = backends()
    routes = [backend.route("/v1api", "/v1"), backend.route("/strip", "/")]
    client = Client(proxies(routes).client)
    for target in ("/v1api/users?id=3", "/strip/x?", "/strip", "/strip?only=query"):
        assert client.request("GET", target).status == 200
    assert [r.target for r in backend.received] == ["/v1/users?id=3", "/x?", "/", "/?only=query"]


def test_hop_by_hop_request_fields_are_dropped(backends: Any, proxies: Any) -> None:
    backend = backends()
    client = Client(proxies([backend.route()]).client)
    reply = client.request(
        "GET",
        "/api/x",
        [
            ("Connection", "keep-alive, X-Hop-Secret, x-other-hop"),
            ("X-Hop-Secret", "1"),
            ("X-Other-Hop", "2"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Trailer", "X-Checksum"),
            ("Upgrade", "h2c"),
            ("X-End-To-End", "kept"),
            ("Cookie", "a=1; b=2"),
            ("Authorization", "Bearer t"),
            ("X-Forwarded-For", "198.51.100.1"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "public.example"),
        ],
    )
    assert reply.status == 200
    (got,) = backend.received
    assert not got.names & {
        "x-hop-secret",
        "x-other-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
    }
    assert got.header("connection") == "close"
    assert got.header("x-end-to-end") == "kept"
    assert got.header("cookie") == "a=1; b=2"
    assert got.header("authorization") == "Bearer t"
    # Appended to, or kept from, what an upstream proxy said.
    assert got.header("x-forwarded-for") == "198.51.100.1, 203.0.113.7"
    assert got.header("x-forwarded-proto") == "https"
    assert got.header("x-forwarded-host") == "public.example"
    assert [k for k, _ in got.headers].count("x-forwarded-for") == 1


def test_http10_client_without_host(backends: Any, proxies: Any) -> None:
    backend = backends()
    proxy = proxies([backend.route()])
    proxy.client.sendall(b"GET /api/old HTTP/1.0\r\n\r\n")
    raw = read_closed(proxy.client)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in raw and raw.endswith(b"\r\n\r\nhello")
    (got,) = backend.received
    assert got.header("host") == f"127.0.0.1:{backend.port}"  # HTTP/1.1 needs one
    assert got.header("x-forwarded-host") is None


def test_absolute_form_target(backends: Any, proxies: Any) -> None:
    backend = backends()
    proxy = proxies([backend.route()])
    proxy.client.sendall(b"GET http://site.test/api/a?b HTTP/1.1\r\nHost: ignored\r\n\r\n")
    client = Client(proxy.client)
    client.conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.conn.send(h11.EndOfMessage())
    assert client.reply().status == 200
    (got,) = backend.received
    assert (got.target, got.header("host")) == ("/api/a?b", "site.test")


def test_post_content_length_body(backends: Any, proxies: Any) -> None:
    backend = backends(answer(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"))
    client = Client(proxies([backend.route()]).client)
    body = b"name=sitepeek&x=" + b"y" * 100_000
    reply = client.request(
        "POST", "/api/form", [("Content-Length", str(len(body)))], [body[:10], body[10:]]
    )
    assert reply.status == 201
    (got,) = backend.received
    assert got.header("content-length") == str(len(body))
    assert got.header("transfer-encoding") is None
    assert bytes(got.body) == body


def test_post_chunked_body_keeps_chunked_and_drops_trailers(backends: Any, proxies: Any) -> None:
    backend = backends()
    proxy = proxies([backend.route()])
    proxy.client.sendall(
        b"POST /api/c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        b"GET /api/next HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    client = Client(proxy.client)
    for _ in range(2):
        client.conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        client.conn.send(h11.EndOfMessage())
        assert client.reply().status == 200
    first, second = sorted(backend.received, key=lambda r: r.target)
    assert first.target == "/api/c"
    assert first.header("transfer-encoding") == "chunked"
    assert first.header("content-length") is None
    assert bytes(first.body) == b"hello world"
    assert first.header("x-trailer") is None
    assert second.target == "/api/next"


def test_empty_post_keeps_content_length_zero(backends: Any, proxies: Any) -> None:
    backend = backends()
    client = Client(proxies([backend.route()]).client)
    assert client.request("POST", "/api/x", [("Content-Length", "0")]).status == 200
    assert backend.received[0].header("content-length") == "0"


def test_expect_100_continue_is_answered_once_the_backend_is_there(
    backends: Any, proxies: Any
) -> None:
    backend = backends()
    proxy = proxies([backend.route()])
    proxy.client.sendall(
        b"PUT /api/up HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = proxy.client.recv(100)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    proxy.client.sendall(b"data")
    client = Client(proxy.client)
    client.conn.send(h11.Request(method="PUT", target="/", headers=[("Host", "x")]))
    client.conn.send(h11.EndOfMessage())
    assert client.reply().status == 200
    (got,) = backend.received
    assert got.header("expect") is None and bytes(got.body) == b"data"


def test_big_upload_streams_with_bounded_memory(backends: Any, proxies: Any) -> None:
    """5 MB through the proxy while tracemalloc watches: nothing holds the whole body."""
    size = 5 * 1024 * 1024
    piece = bytes(range(256)) * 256  # 64 KiB
    backend = backends(answer(b"HTTP/1.1 204 No Content\r\n\r\n"))
    for framing in ([("Content-Length", str(size))], [("Transfer-Encoding", "chunked")]):
        client = Client(proxies([backend.route()]).client)
        tracemalloc.start()
        try:
            reply = client.request("POST", "/api/upload", framing, (piece for _ in range(80)))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert reply.status == 204
        got = backend.received[-1]
        assert got.size == size
        assert got.sha256 == hashlib.sha256(piece * 80).hexdigest()
        assert peak < 3 * 1024 * 1024, f"peak {peak} bytes for a 5 MB body"


def test_request_body_streams_before_it_is_complete(backends: Any, proxies: Any) -> None:
    first_part = threading.Event()
    backend = backends(on_body=lambda seen: first_part.set())
    client = Client(proxies([backend.route()]).client)

    def body() -> Iterator[bytes]:
        yield b"first part;"
        # The backend must see the first part while the client still holds the rest.
        assert first_part.wait(WAIT), "the proxy buffered the request body"
        yield b"second part"

    reply = client.request("POST", "/api/s", [("Transfer-Encoding", "chunked")], body())
    assert reply.status == 200
    assert bytes(backend.received[0].body) == b"first part;second part"


# -- response side ---------------------------------------------------------------------
CHUNKED_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
    b"6\r\nhello \r\n5;x=y\r\nworld\r\n0\r\nX-Trailer: 1\r\n\r\n"
)


@pytest.mark.parametrize(
    ("method", "raw", "status", "body", "length", "chunked"),
    [
        pytest.param(
            "GET",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            200,
            b"hello",
            "5",
            False,
            id="length",
        ),
        pytest.param(
            "GET",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc",
            200,
            b"abc",
            "3",
            False,
            id="length-list-normalised",
        ),
        pytest.param("GET", CHUNKED_RESPONSE, 200, b"hello world", None, True, id="chunked"),
        pytest.param(
            "GET",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close",
            200,
            b"until close",
            None,
            True,
            id="close-delimited",
        ),
        pytest.param(
            "GET",
            b"HTTP/1.0 200 OK\r\n\r\nold server",
            200,
            b"old server",
            None,
            True,
            id="http10-backend",
        ),
        pytest.param(
            "GET",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
            204,
            b"",
            None,
            False,
            id="204",
        ),
        pytest.param(
            "GET",
            b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 42\r\n\r\n',
            304,
            b"",
            "42",
            False,
            id="304",
        ),
        pytest.param(
            "HEAD",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
            200,
            b"",
            "1234",
            False,
            id="head",
        ),
        pytest.param(
            "HEAD",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            200,
            b"",
            None,
            False,
            id="head-chunked",
        ),
        pytest.param(
            "GET",
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope",
            404,
            b"nope",
            "4",
            False,
            id="error-status-relayed",
        ),
        pytest.param(
            "GET",
            b"HTTP/1.1 299 Custom\r\nContent-Length: 0\r\n\r\n",
            299,
            b"",
            "0",
            False,
            id="unknown-status",
        ),
    ],
)
def test_response_framing_and_keep_alive(
    backends: Any,
    proxies: Any,
    method: str,
    raw: bytes,
    status: int,
    body: bytes,
    length: str | None,
    chunked: bool,
) -> None:
    backend = backends(answer(raw))
    client = Client(proxies([backend.route()]).client)
    reply = client.request(method, "/api/r")
    assert (reply.status, reply.body) == (status, body)
    assert reply.header("content-length") == length
    assert reply.header("transfer-encoding") == ("chunked" if chunked else None)
    assert reply.header("x-trailer") is None
    # The client connection is reused for a second proxied request.
    assert client.reusable
    again = client.request(method, "/api/r")
    assert (again.status, again.body) == (status, body)
    assert len(backend.received) == 2  # one backend connection per request


def test_close_delimited_to_http10_client_closes(backends: Any, proxies: Any) -> None:
    backend = backends(answer(b"HTTP/1.1 200 OK\r\n\r\nstream"))
    proxy = proxies([backend.route()])
    proxy.client.sendall(b"GET /api/x HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
    raw = read_closed(proxy.client)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Connection: close" in head and b"Transfer-Encoding" not in head
    assert body == b"stream"


def test_http10_keep_alive_with_length(backends: Any, proxies: Any) -> None:
    backend = backends()
    proxy = proxies([backend.route()])
    request = b"GET /api/x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    proxy.client.sendall(request)
    data = b""
    while not data.endswith(b"hello"):
        data += proxy.client.recv(4096)
    assert b"\r\nConnection: keep-alive\r\n" in data
    proxy.client.sendall(request)  # the same connection serves again
    data = b""
    while not data.endswith(b"hello"):
        data += proxy.client.recv(4096)


def test_hop_by_hop_response_fields_are_dropped(backends: Any, proxies: Any) -> None:
    backend = backends(
        answer(
            b"HTTP/1.1 200 OK\r\nConnection: close, X-Backend-Hop\r\nX-Backend-Hop: 1\r\n"
            b"Keep-Alive: timeout=5\r\nProxy-Connection: close\r\nTrailer: X-T\r\n"
            b"Upgrade: h2c\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nX-End: kept\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        )
    )
    client = Client(proxies([backend.route()]).client)
    reply = client.request("GET", "/api/x")
    assert reply.body == b"ok"
    assert not reply.names & {
        "x-backend-hop",
        "keep-alive",
        "proxy-connection",
        "trailer",
        "upgrade",
        "connection",
    }
    assert reply.header("x-end") == "kept"
    assert [v for k, v in reply.headers if k == "set-cookie"] == ["a=1", "b=2"]  # never merged
    assert client.reusable  # the backend's Connection: close is its own hop's business


ADDED = [
    ("Cache-Control", "no-store"),
    ("Link", "</a.css>; rel=preload"),
    ("link", "</b.js>; rel=preload"),
    ("Set-Cookie", "theme=dark"),
]


def values_of(reply: Reply, name: str) -> list[str]:
    return [value for key, value in reply.headers if key == name]


def test_added_fields_replace_the_backends_of_the_same_name(backends: Any, proxies: Any) -> None:
    """--header/--cors fields follow the one override rule (responses.without_overridden)."""
    backend = backends(
        answer(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nLink: </c.css>\r\n"
            b"Set-Cookie: session=1\r\ncache-control: public\r\nX-Kept: yes\r\n"
            b"Content-Length: 2\r\n\r\nok"
        )
    )
    client = Client(proxies([backend.route()], extra_headers=ADDED).client)
    reply = client.request("GET", "/api/x")
    assert (reply.status, reply.body) == (200, b"ok")
    assert values_of(reply, "cache-control") == ["no-store"]
    # Two lines of one name are both sent, as one (RFC 9110 §5.3).
    assert values_of(reply, "link") == ["</a.css>; rel=preload, </b.js>; rel=preload"]
    # A cookie is never replaced: the backend's session survives an added one.
    assert values_of(reply, "set-cookie") == ["theme=dark", "session=1"]
    assert values_of(reply, "x-kept") == ["yes"]


def test_added_fields_on_the_failure_page(proxies: Any) -> None:
    route = parse_route(f"/api=http://127.0.0.1:{free_port()}")
    added = [*ADDED, ("Server", "mine")]
    reply = Client(proxies([route], extra_headers=added).client).request("GET", "/api/x")
    assert reply.status == 502
    assert values_of(reply, "cache-control") == ["no-store"]
    assert values_of(reply, "link") == ["</a.css>; rel=preload, </b.js>; rel=preload"]
    assert values_of(reply, "set-cookie") == ["theme=dark"]
    # As on every answer of sitepeek's own, Date and Server are sitepeek's.
    assert values_of(reply, "server") == [SERVER]


def test_early_hints_are_relayed(backends: Any, proxies: Any) -> None:
    backend = backends(
        answer(
            b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
    )
    client = Client(proxies([backend.route()]).client)
    reply = client.request("GET", "/api/x")
    assert (reply.informational, reply.status, reply.body) == ([103], 200, b"ok")


def test_response_streams_before_it_is_complete(backends: Any, proxies: Any) -> None:
    go_on = threading.Event()

    def respond(record: Received, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        assert go_on.wait(WAIT), "the client never saw the first chunk"
        conn.sendall(b"4\r\nlast\r\n0\r\n\r\n")

    backend = backends(respond)
    client = Client(proxies([backend.route()]).client)
    client.send("GET", "/api/events")
    received = bytearray()
    for event in client.events():
        if isinstance(event, h11.Data):
            received += event.data
            go_on.set()
    assert received == b"firstlast"


def test_pipelined_requests_are_answered_in_order(backends: Any, proxies: Any) -> None:
    def respond(record: Received, conn: socket.socket) -> None:
        body = record.target.encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))

    backend = backends(respond)
    proxy = proxies([backend.route()])
    proxy.client.sendall(b"".join(b"GET /api/%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(3)))
    client = Client(proxy.client)
    for i in range(3):
        client.conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        client.conn.send(h11.EndOfMessage())
        assert client.reply().body == b"/api/%d" % i


# -- failures --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_backend_down_is_a_quick_502_page(proxies: Any) -> None:
    port = free_port()
    route = parse_route(f"/api=http://127.0.0.1:{port}")
    client = Client(proxies([route]).client)
    started = time.monotonic()
    reply = client.request("GET", "/api/x")
    assert time.monotonic() - started < 1.0
    assert reply.status == 502
    assert reply.header("content-type") == "text/html; charset=utf-8"
    assert reply.header("content-length") == str(len(reply.body))
    page = reply.body.decode()
    assert f"sitepeek could not reach http://127.0.0.1:{port}: connection refused" in page
    assert "<code>/api</code>" in page
    # The connection survives: a second request gets its page too.
    assert client.reusable
    assert client.request("HEAD", "/api/y").status == 502


def test_backend_down_with_a_body_is_a_502_and_the_body_is_skipped(proxies: Any) -> None:
    route = parse_route(f"/api=http://127.0.0.1:{free_port()}")
    client = Client(proxies([route]).client)
    reply = client.request("POST", "/api/x", [("Content-Length", "3")], [b"abc"])
    assert reply.status == 502
    assert client.request("GET", "/api/y").status == 502  # framing stayed in step


def test_backend_that_never_answers_is_a_504_within_the_timeout(
    backends: Any, proxies: Any
) -> None:
    release = threading.Event()
    backend = backends(lambda record, conn: release.wait(WAIT) and None)
    client = Client(proxies([backend.route()], read_timeout=0.5).client)
    started = time.monotonic()
    try:
        reply = client.request("GET", "/api/slow")
    finally:
        release.set()
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 2.0
    assert reply.status == 504
    assert f"http://127.0.0.1:{backend.port} did not respond within 0.5 s" in reply.body.decode()


def test_connect_timeout_is_a_504(proxies: Any) -> None:
    # A listener whose backlog is full: the kernel drops further SYNs, so connect waits.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.settimeout(0.2)
            with contextlib.suppress(OSError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        try:
            route = parse_route(f"/api=http://127.0.0.1:{port}")
            client = Client(proxies([route], connect_timeout=0.3).client)
            started = time.monotonic()
            reply = client.request("GET", "/api/x")
            assert time.monotonic() - started < 2.0
            assert reply.status == 504
            assert "no answer within 0.3 s" in reply.body.decode()
        finally:
            for filler in fillers:
                filler.close()


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "malformed status line", id="garbage"),
        pytest.param(b"", "closed the connection without a response", id="empty"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "both Transfer-Encoding and Content-Length",
            id="cl-and-te",
        ),
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            "switched protocols without being asked",
            id="unasked-101",
        ),
    ],
)
def test_invalid_response_is_a_502(backends: Any, proxies: Any, raw: bytes, detail: str) -> None:
    backend = backends(answer(raw))
    client = Client(proxies([backend.route()]).client)
    reply = client.request("GET", "/api/x")
    assert reply.status == 502
    assert detail in reply.body.decode()
    assert f"http://127.0.0.1:{backend.port}" in reply.body.decode()


def test_backend_failing_mid_body_closes_the_client_connection(backends: Any, proxies: Any) -> None:
    backend = backends(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"))
    proxy = proxies([backend.route()])
    client = Client(proxy.client)
    client.send("GET", "/api/x")
    with pytest.raises(h11.RemoteProtocolError):  # truncated, never passed off as complete
        client.reply()
    assert proxy.finished()


def test_client_going_away_mid_stream_closes_the_backend(backends: Any, proxies: Any) -> None:
    cut: list[Received] = []

    def respond(record: Received, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(400):
                conn.sendall(b"400\r\n" + b"x" * 1024 + b"\r\n")
                time.sleep(0.01)
        except OSError:
            cut.append(record)

    backend = backends(respond)
    proxy = proxies([backend.route()])
    client = Client(proxy.client)
    client.send("GET", "/api/stream")
    for event in client.events():
        if isinstance(event, h11.Data):
            break
    proxy.client.close()
    assert proxy.finished()
    deadline = time.monotonic() + WAIT
    while not cut and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cut, "the backend kept streaming into a closed proxy connection"


def test_failure_page_escapes_what_it_shows() -> None:
    from sitepeek.proxy import _failure_page

    page = _failure_page(502, "bad <script>", ProxyRoute("/a<b>", "h", 1, "/a<b>")).decode()
    assert "<script>" not in page and "&lt;script&gt;" in page and "/a&lt;b&gt;" in page


# -- WebSocket -------------------------------------------------------------------------
def websocket_echo(record: Received, conn: socket.socket) -> None:
    key = record.header("sec-websocket-key") or ""
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: %b\r\n\r\nwelcome;" % accept_key(key).encode()
    )
    if record.trailing:
        conn.sendall(record.trailing)
    while data := conn.recv(65536):
        conn.sendall(data)
    record.closed_by_peer.set()


WS_HANDSHAKE = (
    b"GET /api/ws HTTP/1.1\r\nHost: site.test\r\nUpgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nOrigin: http://site.test\r\n\r\n"
)


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "closed during the handshake"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def recv_exactly(sock: socket.socket, size: int, already: bytes = b"") -> bytes:
    data = already
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "closed early"
        data += chunk
    return data


def check_tunnel(client: socket.socket, backend: Backend, early: bytes) -> None:
    head, rest = read_head(client)
    assert head.startswith(b"HTTP/1.1 101 ")
    lines = head.lower().split(b"\r\n")
    assert b"upgrade: websocket" in lines and b"connection: upgrade" in lines
    assert b"sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=" in lines
    expected = b"welcome;" + early
    assert recv_exactly(client, len(expected), rest) == expected
    for message in (b"\x81\x05hello", b"x" * 200_000):
        client.sendall(message)
        assert recv_exactly(client, len(message)) == message
    (got,) = backend.received
    assert got.header("upgrade") == "websocket"
    assert got.header("connection") == "Upgrade"
    assert got.header("sec-websocket-key") == "dGhlIHNhbXBsZSBub25jZQ=="
    assert got.header("origin") == "http://site.test"


def test_websocket_tunnel_with_threads(backends: Any, proxies: Any) -> None:
    backend = backends(websocket_echo)
    proxy = proxies([backend.route()])
    early = b"\x81\x05early"  # sent with the handshake, before the 101
    proxy.client.sendall(WS_HANDSHAKE + early)
    check_tunnel(proxy.client, backend, early)
    proxy.client.close()  # the client leaves: the tunnel ends, the backend sees it
    assert proxy.finished()
    assert backend.wait_received()[0].closed_by_peer.wait(WAIT)


def test_websocket_tunnel_ends_when_the_backend_closes(backends: Any, proxies: Any) -> None:
    def respond(record: Received, conn: socket.socket) -> None:
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\nbye"
        )

    backend = backends(respond)
    proxy = proxies([backend.route()])
    proxy.client.sendall(WS_HANDSHAKE)
    head, rest = read_head(proxy.client)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert rest + read_closed(proxy.client) == b"bye"
    assert proxy.finished()


def test_refused_upgrade_is_an_ordinary_response(backends: Any, proxies: Any) -> None:
    backend = backends(answer(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno"))
    proxy = proxies([backend.route()])
    proxy.client.sendall(WS_HANDSHAKE)
    client = Client(proxy.client)
    client.conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.conn.send(h11.EndOfMessage())
    reply = client.reply()
    assert (reply.status, reply.body) == (403, b"no")
    assert client.request("GET", "/api/again").status == 403  # still HTTP on this connection


# -- gevent ----------------------------------------------------------------------------
def test_gevent_get_and_websocket_tunnel(backends: Any) -> None:
    backend = backends(websocket_echo)
    plain = backends()
    routes = [backend.route("/api"), plain.route("/plain")]
    io = GeventIo()

    client_sock, server_sock = gevent.socket.socketpair()
    client_sock.settimeout(WAIT)
    server = gevent.spawn(serve, server_sock, routes, io)
    try:
        client = Client(client_sock)
        reply = client.request("POST", "/plain/x?y=1", [("Content-Length", "2")], [b"hi"])
        assert (reply.status, reply.body) == (200, b"hello")
        assert plain.received[0].target == "/plain/x?y=1"
        assert bytes(plain.received[0].body) == b"hi"
        assert client.request("GET", "/plain/again").status == 200  # keep-alive
        # A backend that is down, under gevent too.
        down_sock, down_server = gevent.socket.socketpair()
        down_sock.settimeout(WAIT)
        down_route = parse_route(f"/api=http://127.0.0.1:{free_port()}")
        down = gevent.spawn(serve, down_server, [down_route], io)
        assert Client(down_sock).request("GET", "/api/x").status == 502
        down_sock.close()
        down.join(WAIT)
        assert down.dead
    finally:
        client_sock.close()
        server.join(WAIT)
    assert server.dead

    ws_client, ws_server = gevent.socket.socketpair()
    ws_client.settimeout(WAIT)
    tunnel = gevent.spawn(serve, ws_server, routes, io)
    ws_client.sendall(WS_HANDSHAKE)
    check_tunnel(ws_client, backend, b"")
    ws_client.close()
    tunnel.join(WAIT)
    assert tunnel.dead
    assert backend.wait_received()[0].closed_by_peer.wait(WAIT)


def test_backend_socket_is_of_the_client_socket_kind(backends: Any) -> None:
    """forward() connects with type(sock): gevent sockets under gevent, plain otherwise."""
    from sitepeek.proxy import _Exchange

    backend = backends()
    route = backend.route()
    parser = RequestParser()
    parser.feed(b"GET /api HTTP/1.1\r\nHost: h\r\n\r\n")
    request = parser.next_request()
    assert request is not None
    for kind in (socket.socket, gevent.socket.socket):
        sock = kind(socket.AF_INET, socket.SOCK_STREAM)
        try:
            exchange = _Exchange(sock, request, parser, route, ThreadIo(), None)
            connected = exchange._connect()
            assert type(connected) is kind
            connected.close()
        finally:
            sock.close()


# -- odds and ends ---------------------------------------------------------------------
def test_route_validates_itself() -> None:
    with pytest.raises(ValueError, match="no final"):
        ProxyRoute("/api/", "h", 1, "/api")
    with pytest.raises(ValueError, match="no final"):
        ProxyRoute("api", "h", 1, "")
    with pytest.raises(ValueError, match="port"):
        ProxyRoute("/api", "h", 0, "/api")
    assert ProxyRoute("/ws", "::1", 5173, "/ws").origin == "http://[::1]:5173"


def test_host_names_are_resolved_and_every_address_tried(backends: Any, proxies: Any) -> None:
    # "localhost" may resolve to ::1 first, where nothing listens: 127.0.0.1 is tried next.
    backend = backends()
    route = parse_route(f"/api=http://localhost:{backend.port}")
    assert Client(proxies([route]).client).request("GET", "/api/x").status == 200


def test_unresolvable_host_is_a_502(proxies: Any) -> None:
    route = parse_route("/api=http://no-such-host.invalid:8000")
    reply = Client(proxies([route]).client).request("GET", "/api/x")
    assert reply.status == 502
    assert "cannot resolve no-such-host.invalid" in reply.body.decode()


def test_client_connection_close_is_honoured(backends: Any, proxies: Any) -> None:
    backend = backends()
    proxy = proxies([backend.route()])
    reply = Client(proxy.client).request("GET", "/api/x", [("Connection", "close")])
    assert reply.header("connection") == "close"
    assert proxy.finished()


def test_slow_request_body_is_a_408_and_closes(backends: Any, proxies: Any) -> None:
    backend = backends()
    proxy = proxies([backend.route()], read_timeout=0.3)
    proxy.client.sendall(b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
    raw = read_closed(proxy.client)
    assert raw.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"Connection: close" in raw
    assert proxy.finished()
    assert backend.wait_received()[0].closed_by_peer.wait(WAIT)


def test_chunked_body_over_the_limit_is_a_413(backends: Any) -> None:
    backend = backends()
    route = backend.route()
    client_sock, server_sock = socket.socketpair()
    with client_sock, server_sock:
        parser = RequestParser(body_limit=lambda path: 4)
        client_sock.sendall(
            b"POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"
        )
        request = None
        while request is None:
            parser.feed(server_sock.recv(65536))
            request = parser.next_request()
        keep = forward(server_sock, request, parser, route, ThreadIo(), None)
        assert keep is False
        client_sock.settimeout(WAIT)
        assert client_sock.recv(65536).startswith(b"HTTP/1.1 413 Content Too Large\r\n")
    # The backend had the first chunk, then its connection was cut: never a whole body.
    (got,) = backend.wait_received()
    assert got.closed_by_peer.wait(WAIT)
    assert got.sha256 == ""
