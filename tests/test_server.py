"""Behavioural suite over real sockets; runs once per worker model (see conftest).

Every response is framed by h11 (``H11Client``), never by hand, so a wrong
Content-Length or a stray byte shows up as a framing error or a broken follow-up
request on the same connection. Where the server closes the connection the bytes are
read to EOF first (``recv_until_closed``) and then framed by h11 as well.
"""

from __future__ import annotations

import email.utils
import os
import re
import select
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conftest import (
    H11Client,
    Response,
    Server,
    as_served,
    recv_until_closed,
    request,
    served,
    start_server,
)

# Long enough for a loaded machine, short enough that a hang fails fast.
TIMEOUT = 3.0
SMALL = b"0123456789" * 100
IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)
# An error page is a short HTML document, never a stack trace or a directory dump.
MAX_ERROR_PAGE = 4096


# -- helpers ---------------------------------------------------------------------------
class _Replay:
    """Bytes already read from a closed connection, offered to h11 like a socket."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def recv(self, size: int) -> bytes:
        chunk, self._data = self._data[:size], self._data[size:]
        return chunk

    def sendall(self, data: bytes) -> None:
        raise AssertionError("a replayed connection cannot send")


def head_bytes(
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    version: str = "HTTP/1.1",
    host: str | None = "127.0.0.1",
) -> bytes:
    """A request head as raw bytes (no body)."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def connect(server: Server) -> socket.socket:
    return server.connect(timeout=TIMEOUT)


def exchange_until_closed(server: Server, data: bytes, method: str = "GET") -> list[Response]:
    """Send ``data``, read until the server closes, frame every response with h11.

    ``recv_until_closed`` returns only at EOF (or a reset), so a server that keeps the
    connection open fails this with a socket timeout. The last response must announce
    the close, and nothing may follow it.
    """
    with connect(server) as sock:
        sock.sendall(data)
        raw = recv_until_closed(sock)
    assert raw.startswith(b"HTTP/1.1 "), raw[:200]
    client = H11Client(_Replay(raw))  # type: ignore[arg-type]
    responses = []
    while True:
        responses.append(client.read_response(method))
        if responses[-1].header("connection") == "close":
            break
    trailing, _ = client.conn.trailing_data
    assert trailing + client.sock.recv(1 << 20) == b"", "bytes after the final response"
    return responses


def closing_response(server: Server, data: bytes, method: str = "GET") -> Response:
    """The one response to ``data``, after which the server must close."""
    responses = exchange_until_closed(server, data, method)
    assert len(responses) == 1, [r.status for r in responses]
    return responses[0]


def assert_common_headers(response: Response) -> None:
    """Date (a current IMF-fixdate), Server and Content-Length on every response."""
    date = response.header("date")
    assert date is not None and IMF_FIXDATE.fullmatch(date), date
    sent = email.utils.parsedate_to_datetime(date)
    assert abs((datetime.now(UTC) - sent).total_seconds()) < 60
    server_header = response.header("server")
    assert server_header is not None and server_header.startswith("sitepeek/")
    length = response.header("content-length")
    assert length is not None and length.isdigit(), response.raw_headers
    assert [k.lower() for k, _ in response.raw_headers].count("content-length") == 1


def assert_exact_length(response: Response) -> None:
    assert_common_headers(response)
    assert int(response.header("content-length") or -1) == len(response.body)


def assert_error_page(response: Response, status: int) -> None:
    """A small HTML page naming the status, framed by an exact Content-Length."""
    assert response.status == status, (response.status, response.body[:300])
    assert_exact_length(response)
    assert response.header("content-type") == "text/html; charset=utf-8"
    assert response.body.lower().startswith(b"<!doctype html")
    assert str(status).encode() in response.body
    assert 0 < len(response.body) <= MAX_ERROR_PAGE


def assert_closed(response: Response) -> None:
    assert response.header("connection") == "close", response.raw_headers


def without_date(response: Response) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in response.raw_headers if k.lower() != "date"]


def unique_name(suffix: str = ".txt") -> str:
    return f"tmp-{uuid.uuid4().hex}{suffix}"


# -- which file a URL means --------------------------------------------------------------
def test_root_serves_index_html(server: Server) -> None:
    response = request(server, "GET", "/")
    assert response.status == 200
    assert response.body == served(server.root / "index.html")
    assert response.header("content-type") == "text/html; charset=utf-8"


@pytest.mark.parametrize(
    ("target", "file"),
    [
        ("/sub/", "sub/index.html"),
        ("/htm/", "htm/index.htm"),
        ("/evil.com/", "evil.com/index.html"),
    ],
)
def test_directory_with_slash_serves_its_index(server: Server, target: str, file: str) -> None:
    response = request(server, "GET", target)
    assert response.status == 200
    assert response.body == served(server.root / file)
    assert response.header("content-type") == "text/html; charset=utf-8"
    assert_exact_length(response)


def test_directory_without_index_is_listed(server: Server) -> None:
    # Listings are on by default (--no-listing: 404; see test_production.py).
    response = request(server, "GET", "/noindex/")
    assert response.status == 200
    assert response.header("content-type") == "text/html; charset=utf-8"
    assert b'href="file.txt"' in response.body


def test_missing_file_is_404(server: Server) -> None:
    assert_error_page(request(server, "GET", "/no-such-file.txt"), 404)


def test_file_with_trailing_slash_is_404(server: Server) -> None:
    assert_error_page(request(server, "GET", "/small.txt/"), 404)


@pytest.mark.parametrize(
    ("target", "location"),
    [
        ("/sub", "/sub/"),
        ("/sub?x=1", "/sub/?x=1"),
        ("/sub?a=1&b=%2F", "/sub/?a=1&b=%2F"),
        ("/htm", "/htm/"),
        ("/noindex", "/noindex/"),
        # A leading "//" must never reach a Location: browsers read it as another host.
        ("//evil.com", "/evil.com/"),
        ("///evil.com", "/evil.com/"),
        ("//evil.com?x=1", "/evil.com/?x=1"),
        ("/sub/./../evil.com", "/evil.com/"),
    ],
)
def test_directory_without_slash_redirects(server: Server, target: str, location: str) -> None:
    response = request(server, "GET", target)
    assert response.status == 301
    assert response.header("location") == location
    assert response.header("content-type") == "text/html; charset=utf-8"
    assert_exact_length(response)


@pytest.mark.parametrize("target", ["//evil.com", "/\\evil.com", "//evil.com/..", "/%2Fevil.com"])
def test_no_open_redirect(server: Server, target: str) -> None:
    response = request(server, "GET", target)
    location = response.header("location")
    if location is not None:
        assert location.startswith("/")
        assert not location.startswith(("//", "/\\")), location


@pytest.mark.parametrize(
    ("target", "file"),
    [
        ("/small.txt?x=1", "small.txt"),
        ("/small.txt?", "small.txt"),
        ("/small.txt?/../../etc/passwd", "small.txt"),
        ("/small.txt?file=.secret", "small.txt"),
        ("/?sub/index.html", "index.html"),
        ("/sub/?../../index.html", "sub/index.html"),
        ("/index.html?%00", "index.html"),
    ],
)
def test_query_never_changes_the_file(server: Server, target: str, file: str) -> None:
    response = request(server, "GET", target)
    assert response.status == 200
    assert response.body == served(server.root / file)


# -- percent-decoding -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("/caf%C3%A9.txt", "crème\n".encode()),
        ("/caf%c3%a9.txt", "crème\n".encode()),
        ("/a%20b.txt", b"space\n"),
        ("/a+b.txt", b"plus\n"),  # "+" is literal in a path, not a space
        ("/a%2Bb.txt", b"plus\n"),
        ("/a%2bb.txt", b"plus\n"),
        ("/%73mall.txt", SMALL),
        ("/sub/%69ndex.html", as_served(b"<p>sub</p>\n")),
    ],
)
def test_percent_decoding(server: Server, target: str, body: bytes) -> None:
    response = request(server, "GET", target)
    assert response.status == 200
    assert response.body == body


@pytest.mark.parametrize(
    "target",
    [
        # Decoded once these are "%2e%2e" and "%C3%A9" literally: no such files.
        "/%252e%252e/%252e%252e/etc/passwd",
        "/sub/%252e%252e/%252e%252e/etc/passwd",
        "/caf%25C3%25A9.txt",
        "/a%2520b.txt",
    ],
)
def test_percent_decoding_happens_exactly_once(server: Server, target: str) -> None:
    assert_error_page(request(server, "GET", target), 404)


# -- media types --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "media", "charset"),
    [
        ("/index.html", "text/html", True),
        ("/htm/index.htm", "text/html", True),
        ("/style.css", "text/css", True),
        ("/app.js", "text/javascript", True),
        ("/module.mjs", "text/javascript", True),
        ("/small.txt", "text/plain", True),
        ("/data.json", "application/json", None),
        ("/logo.svg", "image/svg+xml", None),
        ("/image.webp", "image/webp", False),
        ("/font.woff2", "font/woff2", False),
    ],
)
def test_content_type(server: Server, target: str, media: str, charset: bool | None) -> None:
    """Text carries charset=utf-8; binary types none; JSON and SVG may have it."""
    value = request(server, "GET", target).header("content-type")
    if charset is None:
        assert value in (media, f"{media}; charset=utf-8")
    else:
        assert value == (f"{media}; charset=utf-8" if charset else media)


# -- headers on every response ----------------------------------------------------------
def test_file_response_headers(server: Server) -> None:
    response = request(server, "GET", "/small.txt")
    assert response.status == 200
    assert response.body == SMALL
    assert_exact_length(response)
    assert response.header("cache-control") == "no-cache"
    assert response.header("accept-ranges") == "bytes"
    etag = response.header("etag")
    assert etag is not None and re.fullmatch(r'"[\x21\x23-\x7e]+"', etag), etag
    last_modified = response.header("last-modified")
    assert last_modified is not None and IMF_FIXDATE.fullmatch(last_modified)
    mtime = int((server.root / "small.txt").stat().st_mtime)
    assert email.utils.parsedate_to_datetime(last_modified).timestamp() == mtime


def test_empty_file(server: Server) -> None:
    response = request(server, "GET", "/empty.txt")
    assert response.status == 200
    assert response.body == b""
    assert response.header("content-length") == "0"


@pytest.mark.parametrize(
    ("method", "target", "headers", "status"),
    [
        ("GET", "/small.txt", {}, 200),
        ("GET", "/large.bin", {}, 200),
        ("GET", "/small.txt", {"Range": "bytes=0-9"}, 206),
        ("GET", "/large.bin", {"Range": "bytes=100-70000"}, 206),
        ("GET", "/sub", {}, 301),
        ("GET", "/small.txt", {"If-None-Match": "*"}, 304),
        ("GET", "/missing", {}, 404),
        ("GET", "/small.txt%00", {}, 400),
        ("POST", "/small.txt", {"Content-Length": "0"}, 405),
        ("GET", "/small.txt", {"If-Match": '"nope"'}, 412),
        ("GET", "/small.txt", {"Range": "bytes=5000-"}, 416),
        ("BREW", "/pot", {}, 501),
        ("HEAD", "/small.txt", {}, 200),
        ("HEAD", "/missing", {}, 404),
    ],
)
def test_every_response_is_exactly_framed(
    server: Server, method: str, target: str, headers: dict[str, str], status: int
) -> None:
    """Date, Server and Content-Length everywhere; the next request still parses."""
    with connect(server) as sock:
        client = H11Client(sock)
        response = client.request(method, target, headers)
        assert response.status == status
        assert_common_headers(response)
        if method == "HEAD" or status == 304:
            assert response.body == b""
        else:
            assert int(response.header("content-length") or -1) == len(response.body)
        # Any byte too many or too few would break the framing of the next response.
        follow_up = client.request("GET", "/small.txt")
        assert follow_up.status == 200
        assert follow_up.body == SMALL


# -- HEAD -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "target", ["/small.txt", "/", "/large.bin", "/sub", "/missing", "/logo.svg", "/empty.txt"]
)
def test_head_has_the_headers_of_get_and_no_body(server: Server, target: str) -> None:
    with connect(server) as sock:
        client = H11Client(sock)
        get = client.request("GET", target)
        head = client.request("HEAD", target)
        assert head.status == get.status
        assert head.body == b""
        assert without_date(head) == without_date(get)
        assert_common_headers(head)
        again = client.request("GET", "/small.txt")
        assert again.status == 200
        assert again.body == SMALL


def test_head_then_pipelined_get(server: Server) -> None:
    with connect(server) as sock:
        client = H11Client(sock)
        client.send_raw(head_bytes("HEAD", "/large.bin") + head_bytes("GET", "/small.txt"))
        head = client.read_response("HEAD")
        assert head.status == 200
        assert head.body == b""
        assert head.header("content-length") == str(3 * 1024 * 1024 + 17)
        get = client.read_response("GET")
        assert get.body == SMALL


# -- methods ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_write_methods_are_405_with_allow(server: Server, method: str) -> None:
    with connect(server) as sock:
        client = H11Client(sock)
        response = client.request(method, "/small.txt", {"Content-Length": "0"})
        assert_error_page(response, 405)
        allow = {m.strip() for m in (response.header("allow") or "").split(",")}
        assert {"GET", "HEAD"} <= allow
        assert method not in allow
        assert client.request("GET", "/small.txt").status == 200


def test_unknown_method_is_501(server: Server) -> None:
    with connect(server) as sock:
        client = H11Client(sock)
        assert_error_page(client.request("BREW", "/pot"), 501)
        assert client.request("GET", "/small.txt").status == 200


@pytest.mark.parametrize("target", ["/small.txt", "*"])
def test_options_is_204_with_allow(server: Server, target: str) -> None:
    with connect(server) as sock:
        client = H11Client(sock)
        response = client.request("OPTIONS", target)
        assert response.status == 204
        assert response.body == b""
        allow = {m.strip() for m in (response.header("allow") or "").split(",")}
        assert {"GET", "HEAD", "OPTIONS"} <= allow
        assert response.header("date") is not None
        assert response.header("server") is not None
        # RFC 9110 §8.6: a server MUST NOT send Content-Length in a 204 response.
        assert response.header("content-length") is None, response.raw_headers
        assert client.request("GET", "/small.txt").status == 200


SMUGGLED = b"GET /data.json HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest.mark.parametrize(
    ("framing", "body"),
    [
        ({"Content-Length": "5"}, b"hello"),
        ({"Content-Length": str(len(SMUGGLED))}, SMUGGLED),
        ({"Transfer-Encoding": "chunked"}, b"5\r\nhello\r\n0\r\n\r\n"),
        (
            {"Transfer-Encoding": "chunked"},
            f"{len(SMUGGLED):x}\r\n".encode()
            + SMUGGLED
            + b"\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: yes\r\n\r\n",
        ),
    ],
    ids=["length", "length-smuggle", "chunked", "chunked-smuggle-trailer"],
)
def test_request_body_is_skipped_before_the_next_pipelined_request(
    server: Server, framing: dict[str, str], body: bytes
) -> None:
    """The body (even one that looks like a request) is consumed, never answered."""
    with connect(server) as sock:
        client = H11Client(sock)
        client.send_raw(
            head_bytes("POST", "/small.txt", framing) + body + head_bytes("GET", "/small.txt")
        )
        assert_error_page(client.read_response("POST"), 405)
        second = client.read_response("GET")
        assert second.status == 200
        assert second.body == SMALL


# -- persistent connections and pipelining ------------------------------------------------
def test_keep_alive_serves_many_requests_on_one_connection(server: Server) -> None:
    with server.connect() as sock:
        client = H11Client(sock)
        for _ in range(5):
            assert client.request("GET", "/small.txt").status == 200


def test_ten_pipelined_requests_in_one_write_are_answered_in_order(server: Server) -> None:
    files = [
        "small.txt",
        "style.css",
        "data.json",
        "app.js",
        "sub/index.html",
        "small.txt",
        "logo.svg",
        "module.mjs",
        "htm/index.htm",
        "index.html",
    ]
    with connect(server) as sock:
        client = H11Client(sock)
        client.send_raw(b"".join(head_bytes("GET", "/" + name) for name in files))
        for name in files:
            response = client.read_response("GET")
            assert response.status == 200
            assert response.body == served(server.root / name), name
        assert client.request("GET", "/empty.txt").status == 200


def test_pipelined_requests_across_large_responses(server: Server) -> None:
    large = served(server.root / "large.bin")
    with connect(server) as sock:
        client = H11Client(sock)
        client.send_raw(
            head_bytes("GET", "/large.bin")
            + head_bytes("GET", "/small.txt")
            + head_bytes("GET", "/large.bin", {"Range": "bytes=-100"})
        )
        assert client.read_response().body == large
        assert client.read_response().body == SMALL
        assert client.read_response().body == large[-100:]


def test_http10_without_keep_alive_closes(server: Server) -> None:
    response = closing_response(
        server, head_bytes("GET", "/small.txt", version="HTTP/1.0", host=None)
    )
    assert response.status == 200
    assert response.body == SMALL
    assert_exact_length(response)


def test_http10_with_keep_alive_stays_open(server: Server) -> None:
    with connect(server) as sock:
        client = H11Client(sock)
        for _ in range(3):
            client.send_raw(
                head_bytes(
                    "GET", "/small.txt", {"Connection": "keep-alive"}, version="HTTP/1.0", host=None
                )
            )
            response = client.read_response()
            assert response.status == 200
            assert response.body == SMALL
            assert response.header("connection") == "keep-alive"
            assert_exact_length(response)


def test_connection_close_is_honoured(server: Server) -> None:
    response = closing_response(server, head_bytes("GET", "/small.txt", {"Connection": "close"}))
    assert response.status == 200
    assert response.body == SMALL
    assert_closed(response)


def test_pipelined_request_after_connection_close_is_not_answered(server: Server) -> None:
    data = head_bytes("GET", "/small.txt", {"Connection": "close"}) + head_bytes("GET", "/")
    response = closing_response(server, data)
    assert response.body == SMALL


def test_absolute_form_target(server: Server) -> None:
    with connect(server) as sock:
        client = H11Client(sock)
        target = f"http://127.0.0.1:{server.port}/small.txt"
        response = client.request("GET", target, {"Host": f"127.0.0.1:{server.port}"})
        assert response.status == 200
        assert response.body == SMALL
        assert client.request("GET", "/style.css").status == 200


# -- malformed requests -------------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [
        head_bytes("POST", "/", {"Content-Length": "5", "Transfer-Encoding": "chunked"})
        + b"0\r\n\r\n",
        head_bytes("POST", "/", {"Transfer-Encoding": "chunked", "Content-Length": "5"})
        + b"0\r\n\r\n",
    ],
    ids=["cl-te", "te-cl"],
)
def test_content_length_with_transfer_encoding_is_400_and_close(
    server: Server, data: bytes
) -> None:
    response = closing_response(server, data + head_bytes("GET", "/small.txt"))
    assert_error_page(response, 400)
    assert_closed(response)


@pytest.mark.parametrize("value", ["abc", "-1", "+5", "1.0", "5, 6", "0x10", ""])
def test_invalid_content_length_is_400(server: Server, value: str) -> None:
    data = head_bytes("POST", "/", {"Content-Length": value}) + b"hello"
    response = closing_response(server, data)
    assert_error_page(response, 400)
    assert_closed(response)


def test_request_line_over_8k_is_414(server: Server) -> None:
    response = closing_response(server, head_bytes("GET", "/" + "a" * (9 * 1024)))
    assert_error_page(response, 414)
    assert_closed(response)


def test_request_line_just_under_8k_is_served(server: Server) -> None:
    target = "/small.txt?" + "q" * (8 * 1024 - 100)
    response = request(server, "GET", target)
    assert response.status == 200
    assert response.body == SMALL


def test_100_header_fields_are_accepted(server: Server) -> None:
    headers = {f"X-Field-{i}": "v" for i in range(99)}  # plus Host: 100 fields
    response = request(server, "GET", "/small.txt", headers)
    assert response.status == 200


def test_101_header_fields_are_431(server: Server) -> None:
    headers = {f"X-Field-{i}": "v" for i in range(100)}  # plus Host: 101 fields
    response = closing_response(server, head_bytes("GET", "/small.txt", headers))
    assert_error_page(response, 431)
    assert_closed(response)


def test_header_section_over_64k_is_431(server: Server) -> None:
    headers = {"X-Big-1": "a" * (40 * 1024), "X-Big-2": "b" * (40 * 1024)}
    response = closing_response(server, head_bytes("GET", "/small.txt", headers))
    assert_error_page(response, 431)
    assert_closed(response)


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x01\x02garbage\xff\xfe\r\n\r\n",
        b"hello world\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: localhost\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: x\r\nHost: localhost\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ],
)
def test_garbage_is_400_and_close(server: Server, data: bytes) -> None:
    response = closing_response(server, data)
    assert_error_page(response, 400)
    assert_closed(response)


def test_tls_client_hello_is_400_without_waiting_for_a_line_end(server: Server) -> None:
    """A TLS handshake on the plain port can never become a request: answer at once.

    The bytes hold no line end, so a server that waits for the end of the request line
    answers only when its header timeout expires (408), long after this test's.
    """
    hello = bytes.fromhex(
        "160301009e0100009a0303"
        + "ab" * 32
        + "00"
        + "0004130113020100"
        + "0021000b000403000102002b0003020304"
    )
    assert b"\n" not in hello
    started = time.monotonic()
    response = closing_response(server, hello)
    assert_error_page(response, 400)
    assert time.monotonic() - started < TIMEOUT


@pytest.mark.parametrize(
    "data",
    [
        head_bytes("GET", "/", version="HTTP/2.0"),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        head_bytes("GET", "/", version="HTTP/3.0"),
    ],
    ids=["http2", "h2-preface", "http3"],
)
def test_unsupported_http_version_is_505(server: Server, data: bytes) -> None:
    response = closing_response(server, data)
    assert_error_page(response, 505)
    assert_closed(response)


def test_missing_host_in_http11_is_400(server: Server) -> None:
    response = closing_response(server, head_bytes("GET", "/small.txt", host=None))
    assert_error_page(response, 400)
    assert_closed(response)


@pytest.mark.parametrize(
    "target",
    [
        "/small.txt%00",
        "/index.html%00.txt",
        "/%00/small.txt",
        "/../x",
        "/%2e%2e/x",
        "/%2E%2E/x",
        "/.%2e/x",
        "/sub/../../x",
        "/sub/%2e%2e/%2e%2e/etc/passwd",
        "/caf%C3.txt",  # not UTF-8
        "/%zz.txt",  # not a percent-encoding
    ],
)
def test_bad_paths_are_400(server: Server, target: str) -> None:
    with connect(server) as sock:
        client = H11Client(sock)
        assert_error_page(client.request("GET", target), 400)
        # A bad path is a bad URL, not a broken connection: framing is intact.
        assert client.request("GET", "/small.txt").body == SMALL


# -- timeouts ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_timeouts(server: Server) -> Iterator[Server]:
    """A second server of the same model whose header and keep-alive timeouts are short."""
    srv = start_server(
        server.root, server.model, "--header-timeout", "0.5", "--keepalive-timeout", "0.5"
    )
    yield srv
    code = srv.stop()
    assert code == 0, srv.stderr_text()
    assert "Traceback" not in srv.stderr_text()


def test_stalled_request_line_gets_408_and_close(server: Server, quick_timeouts: Server) -> None:
    with connect(quick_timeouts) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /small.txt HT")
        raw = recv_until_closed(sock)
    elapsed = time.monotonic() - started
    assert raw.startswith(b"HTTP/1.1 408 "), raw[:100]
    response = H11Client(_Replay(raw)).read_response()  # type: ignore[arg-type]
    assert_error_page(response, 408)
    assert_closed(response)
    assert 0.4 < elapsed < TIMEOUT


def test_stalled_header_section_gets_408(server: Server, quick_timeouts: Server) -> None:
    with connect(quick_timeouts) as sock:
        sock.sendall(b"GET /small.txt HTTP/1.1\r\nHost: localhost\r\n")
        raw = recv_until_closed(sock)
    assert raw.startswith(b"HTTP/1.1 408 "), raw[:100]


def test_trickled_request_head_cannot_outlast_the_header_timeout(
    server: Server, quick_timeouts: Server
) -> None:
    """The header timeout bounds the whole head, not the gap between two bytes."""
    with connect(quick_timeouts) as sock:
        started = time.monotonic()
        sock.sendall(b"G")
        for byte in b"ET /small.txt HTTP/1.1\r\nX-Slow: " + b"y" * 1000:
            # One byte per 0.1 s, until the server answers (or we give up).
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable or time.monotonic() - started > TIMEOUT:
                break
            sock.sendall(bytes([byte]))
        raw = recv_until_closed(sock)
    assert raw.startswith(b"HTTP/1.1 408 "), raw[:100]
    assert time.monotonic() - started < TIMEOUT


def test_idle_keep_alive_connection_is_closed_silently(
    server: Server, quick_timeouts: Server
) -> None:
    with connect(quick_timeouts) as sock:
        client = H11Client(sock)
        assert client.request("GET", "/small.txt").status == 200
        started = time.monotonic()
        assert recv_until_closed(sock) == b""  # no 408 for a client that sent nothing
    assert time.monotonic() - started < TIMEOUT


def test_connection_that_never_sends_is_closed_silently(
    server: Server, quick_timeouts: Server
) -> None:
    with connect(quick_timeouts) as sock:
        assert recv_until_closed(sock) == b""


# -- conditional requests ---------------------------------------------------------------
def _validators(server: Server, target: str = "/small.txt") -> tuple[str, str]:
    response = request(server, "GET", target)
    etag, last_modified = response.header("etag"), response.header("last-modified")
    assert etag is not None and last_modified is not None
    return etag, last_modified


def test_if_none_match_with_the_etag_is_304(server: Server) -> None:
    etag, _ = _validators(server)
    with connect(server) as sock:
        client = H11Client(sock)
        response = client.request("GET", "/small.txt", {"If-None-Match": etag})
        assert response.status == 304
        assert response.body == b""
        assert response.header("etag") == etag
        assert response.header("cache-control") == "no-cache"
        assert_common_headers(response)
        # RFC 9110 §8.6: a Content-Length in a 304 is the one a 200 would have sent.
        assert response.header("content-length") == str(len(SMALL))
        assert client.request("GET", "/small.txt").body == SMALL


@pytest.mark.parametrize(
    "value",
    ["*", "{etag}", "W/{etag}", '"other", {etag}', '"a,b" ,W/{etag} , "z"'],
)
def test_if_none_match_forms_that_match(server: Server, value: str) -> None:
    etag, _ = _validators(server)
    for method in ("GET", "HEAD"):
        with connect(server) as sock:
            response = H11Client(sock).request(
                method, "/small.txt", {"If-None-Match": value.format(etag=etag)}
            )
        assert response.status == 304, (method, value)
        assert response.header("etag") == etag


@pytest.mark.parametrize("value", ['"nope"', 'W/"nope"', "garbage"])
def test_if_none_match_that_does_not_match_is_200(server: Server, value: str) -> None:
    response = request(server, "GET", "/small.txt", {"If-None-Match": value})
    assert response.status == 200
    assert response.body == SMALL


def test_if_modified_since_last_modified_is_304(server: Server) -> None:
    etag, last_modified = _validators(server)
    response = request(server, "GET", "/small.txt", {"If-Modified-Since": last_modified})
    assert response.status == 304
    assert response.body == b""
    assert response.header("etag") == etag


def test_if_modified_since_in_the_past_is_200(server: Server) -> None:
    headers = {"If-Modified-Since": "Sun, 06 Nov 1994 08:49:37 GMT"}
    assert request(server, "GET", "/small.txt", headers).body == SMALL


def test_if_none_match_takes_precedence_over_if_modified_since(server: Server) -> None:
    _, last_modified = _validators(server)
    headers = {"If-None-Match": '"stale"', "If-Modified-Since": last_modified}
    response = request(server, "GET", "/small.txt", headers)
    assert response.status == 200
    assert response.body == SMALL


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_if_match_that_fails_is_412(server: Server, method: str) -> None:
    with connect(server) as sock:
        client = H11Client(sock)
        response = client.request(method, "/small.txt", {"If-Match": '"nope"'})
        assert response.status == 412
        assert_common_headers(response)
        if method == "GET":
            assert_error_page(response, 412)
        assert client.request("GET", "/small.txt").body == SMALL


def test_if_match_with_the_etag_is_200(server: Server) -> None:
    etag, _ = _validators(server)
    for value in (etag, "*"):
        response = request(server, "GET", "/small.txt", {"If-Match": value})
        assert response.status == 200
        assert response.body == SMALL


def test_if_unmodified_since_in_the_past_is_412(server: Server) -> None:
    headers = {"If-Unmodified-Since": "Sun, 06 Nov 1994 08:49:37 GMT"}
    assert_error_page(request(server, "GET", "/small.txt", headers), 412)


def test_if_unmodified_since_last_modified_is_200(server: Server) -> None:
    _, last_modified = _validators(server)
    response = request(server, "GET", "/small.txt", {"If-Unmodified-Since": last_modified})
    assert response.status == 200


def test_conditionals_do_not_apply_to_missing_files(server: Server) -> None:
    for headers in ({"If-None-Match": "*"}, {"If-Match": '"x"'}):
        assert_error_page(request(server, "GET", "/missing.txt", headers), 404)


# -- ranges -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [
        ("bytes=0-9", 0, 9),
        ("bytes=-10", 990, 999),
        ("bytes=990-", 990, 999),
        ("bytes=500-500", 500, 500),
        ("bytes=990-5000", 990, 999),
        ("bytes=-5000", 0, 999),
        ("BYTES=0-9", 0, 9),
        ("bytes=0-4,5-9", 0, 9),  # adjacent ranges coalesce into one
    ],
)
def test_single_range_is_206(server: Server, spec: str, start: int, end: int) -> None:
    with connect(server) as sock:
        client = H11Client(sock)
        response = client.request("GET", "/small.txt", {"Range": spec})
        assert response.status == 206
        assert response.header("content-range") == f"bytes {start}-{end}/1000"
        assert response.body == SMALL[start : end + 1]
        assert_exact_length(response)
        assert response.header("etag") is not None
        assert client.request("GET", "/small.txt").body == SMALL


@pytest.mark.parametrize(
    "spec", ["bytes=5000-", "bytes=1000-1000", "bytes=-0", "bytes=1000-,2000-"]
)
def test_unsatisfiable_range_is_416(server: Server, spec: str) -> None:
    with connect(server) as sock:
        client = H11Client(sock)
        response = client.request("GET", "/small.txt", {"Range": spec})
        assert_error_page(response, 416)
        assert response.header("content-range") == "bytes */1000"
        assert client.request("GET", "/small.txt").body == SMALL


def test_range_on_empty_file_is_416(server: Server) -> None:
    response = request(server, "GET", "/empty.txt", {"Range": "bytes=0-0"})
    assert_error_page(response, 416)
    assert response.header("content-range") == "bytes */0"


@pytest.mark.parametrize(
    "spec", ["bytes=0-1,5-6", "bytes=9-9,0-0", "bytes=9-5", "bytes=x-y", "items=0-9", "bytes 0-9"]
)
def test_ranges_we_ignore_give_the_full_200(server: Server, spec: str) -> None:
    response = request(server, "GET", "/small.txt", {"Range": spec})
    assert response.status == 200
    assert response.body == SMALL
    assert response.header("content-range") is None


def test_many_overlapping_ranges_never_amplify(server: Server) -> None:
    response = request(server, "GET", "/small.txt", {"Range": "bytes=" + ",".join(["0-"] * 50)})
    assert response.status in (200, 206)
    assert len(response.body) <= len(SMALL)
    assert response.body == SMALL
    if response.status == 206:
        assert response.header("content-range") == "bytes 0-999/1000"


def test_if_range_with_current_etag_is_206(server: Server) -> None:
    etag, _ = _validators(server)
    response = request(server, "GET", "/small.txt", {"Range": "bytes=0-9", "If-Range": etag})
    assert response.status == 206
    assert response.body == SMALL[:10]


@pytest.mark.parametrize("old", ['"0-0-0"', 'W/"{etag}"', "Sun, 06 Nov 1994 08:49:37 GMT"])
def test_if_range_that_does_not_match_is_200(server: Server, old: str) -> None:
    etag, _ = _validators(server)
    headers = {"Range": "bytes=0-9", "If-Range": old.replace('"{etag}"', etag)}
    response = request(server, "GET", "/small.txt", headers)
    assert response.status == 200
    assert response.body == SMALL


@pytest.mark.parametrize("spec", ["bytes=0-9", "bytes=5000-", "bytes=0-1,5-6"])
def test_head_ignores_range_as_rfc_9110_requires(server: Server, spec: str) -> None:
    # RFC 9110 §14.2: range handling is defined for GET only; a server MUST ignore
    # Range on other methods. So HEAD with Range has the headers of a plain GET.
    with connect(server) as sock:
        client = H11Client(sock)
        get = client.request("GET", "/small.txt")
        head = client.request("HEAD", "/small.txt", {"Range": spec})
        assert head.status == get.status == 200
        assert without_date(head) == without_date(get)
        assert head.body == b""


# -- large files ------------------------------------------------------------------------
def test_large_file_is_byte_identical(server: Server) -> None:
    expected = served(server.root / "large.bin")
    with connect(server) as sock:
        client = H11Client(sock)
        response = client.request("GET", "/large.bin")
        assert response.status == 200
        assert response.header("content-length") == str(len(expected))
        assert response.body == expected
        assert response.header("content-type") == "application/octet-stream"
        assert client.request("GET", "/small.txt").body == SMALL


@pytest.mark.parametrize(
    ("start", "end"), [(1_000_000, 2_000_000), (65_535, 65_536 + 65_536), (0, 3 * 1024 * 1024)]
)
def test_large_file_range_is_byte_identical(server: Server, start: int, end: int) -> None:
    expected = served(server.root / "large.bin")
    response = request(server, "GET", "/large.bin", {"Range": f"bytes={start}-{end}"})
    assert response.status == 206
    assert response.header("content-range") == f"bytes {start}-{end}/{len(expected)}"
    assert response.body == expected[start : end + 1]


def test_client_leaving_mid_download_does_not_disturb_others(server: Server) -> None:
    expected = served(server.root / "large.bin")
    leaver = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    leaver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    leaver.settimeout(TIMEOUT)
    with leaver:
        leaver.connect(("127.0.0.1", server.port))
        leaver.sendall(head_bytes("GET", "/large.bin"))
        received = 0
        while received < len(expected) // 2:
            chunk = leaver.recv(65536)
            assert chunk, "closed before half of the file"
            received += len(chunk)
        with connect(server) as other:
            client = H11Client(other)
            client.send_raw(head_bytes("GET", "/large.bin"))
            # Leave abruptly (RST) while the server is still sending to us.
            leaver.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            leaver.close()
            response = client.read_response()
            assert response.status == 200
            assert response.body == expected
            assert client.request("GET", "/small.txt").body == SMALL
    assert request(server, "GET", "/small.txt").body == SMALL


def test_concurrent_large_downloads(server: Server) -> None:
    expected = served(server.root / "large.bin")
    socks = [connect(server) for _ in range(4)]
    try:
        clients = [H11Client(sock) for sock in socks]
        for client in clients:
            client.send_raw(head_bytes("GET", "/large.bin"))
        for client in reversed(clients):  # the last asked is read first
            assert client.read_response().body == expected
    finally:
        for sock in socks:
            sock.close()


# -- what must never be served ----------------------------------------------------------
@pytest.mark.parametrize(
    "target",
    [
        "/.secret",
        "/%2esecret",
        "/.git/config",
        "/.git/",
        "/.git",
        "/sub/../.secret",
        "/.well-known/../.secret",
        "/link-out/secret.txt",
        "/link-out/",
        "/link-file-out.txt",
        "/..%5c..%5cetc/passwd",
        "/..\\..\\etc/passwd",
        "/%2e%2e%2fetc%2fpasswd",
        "/sub%2f..%2f..%2fetc%2fpasswd",
    ],
)
def test_hidden_and_outside_files_are_not_served(server: Server, target: str) -> None:
    response = request(server, "GET", target)
    assert response.status in (400, 404), (target, response.status)
    assert_error_page(response, response.status)
    assert b"outside" not in response.body
    assert b"[core]" not in response.body
    assert b"hidden" not in response.body


def test_well_known_is_served(server: Server) -> None:
    response = request(server, "GET", "/.well-known/security.txt")
    assert response.status == 200
    assert response.body == b"Contact: x\n"


def test_symlink_inside_the_root_is_served(server: Server) -> None:
    response = request(server, "GET", "/link-in.txt")
    assert response.status == 200
    assert response.body == SMALL


def test_fifo_is_404_without_hanging(server: Server) -> None:
    started = time.monotonic()
    with connect(server) as sock:
        client = H11Client(sock)
        assert_error_page(client.request("GET", "/fifo"), 404)
        assert client.request("HEAD", "/fifo").status == 404
        assert client.request("GET", "/small.txt").body == SMALL
    assert time.monotonic() - started < TIMEOUT


# -- the file system changes under a running server -------------------------------------
@pytest.fixture
def temp_file(server: Server) -> Iterator[Path]:
    """A uniquely named file path under the root, removed after the test."""
    path = server.root / unique_name()
    yield path
    path.unlink(missing_ok=True)


def test_new_file_is_served_and_deleted_file_is_404(server: Server, temp_file: Path) -> None:
    target = "/" + temp_file.name
    assert_error_page(request(server, "GET", target), 404)
    temp_file.write_bytes(b"fresh\n")
    response = request(server, "GET", target)
    assert response.status == 200
    assert response.body == b"fresh\n"
    temp_file.unlink()
    assert_error_page(request(server, "GET", target), 404)


def test_rewritten_file_is_served_with_new_content_and_etag(
    server: Server, temp_file: Path
) -> None:
    target = "/" + temp_file.name
    temp_file.write_bytes(b"version one\n")
    with connect(server) as sock:
        client = H11Client(sock)
        first = client.request("GET", target)
        assert first.body == b"version one\n"
        temp_file.write_bytes(b"version two, longer\n")
        second = client.request("GET", target)
        assert second.body == b"version two, longer\n"
        assert second.header("etag") != first.header("etag")
        # The old validator no longer matches: a cache must refetch, not get a 304.
        third = client.request("GET", target, {"If-None-Match": first.header("etag") or ""})
        assert third.status == 200
        assert third.body == b"version two, longer\n"


def test_atomically_replaced_file_gets_a_new_etag(server: Server, temp_file: Path) -> None:
    """An editor's save (write a temp file, rename over): same size, new ETag."""
    target = "/" + temp_file.name
    temp_file.write_bytes(b"AAAA\n")
    first = request(server, "GET", target)
    replacement = server.root / unique_name(".part")
    try:
        replacement.write_bytes(b"BBBB\n")
        os.utime(replacement, ns=(temp_file.stat().st_atime_ns, temp_file.stat().st_mtime_ns))
        replacement.replace(temp_file)
    finally:
        replacement.unlink(missing_ok=True)
    second = request(server, "GET", target)
    assert second.body == b"BBBB\n"
    assert second.header("etag") != first.header("etag")


def test_new_directory_index_is_served(server: Server) -> None:
    directory = server.root / unique_name("")
    try:
        directory.mkdir()
        listed = request(server, "GET", f"/{directory.name}/")
        assert listed.status == 200
        assert b"index.html" not in listed.body  # an empty listing
        (directory / "index.html").write_text("<p>new</p>\n")
        assert request(server, "GET", f"/{directory.name}/").body == as_served(b"<p>new</p>\n")
        redirect = request(server, "GET", f"/{directory.name}")
        assert redirect.header("location") == f"/{directory.name}/"
    finally:
        (directory / "index.html").unlink(missing_ok=True)
        directory.rmdir()
