"""Tests for the sans-I/O request parser and ``response_head`` (RFC 9112, RFC 9110).

Table-driven in the style of h11's tests: every case is run three ways, and the three
must agree:

* ``whole``: the input fed in one piece;
* ``bytewise``: fed one byte at a time, asking for requests after every byte, which
  catches limit checks and searches that depend on where the input happens to be cut;
* ``trailing``: fed whole followed by a second pipelined request, which must come out
  intact after a valid request (framing kept in step) and must not change an error.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sitepeek.http11 import (
    DEFAULT_LIMITS,
    END_OF_BODY,
    BadGateway,
    BodyData,
    EndOfBody,
    EndOfMessage,
    Framing,
    Limits,
    ProtocolError,
    Request,
    RequestParser,
    ResponseHead,
    ResponseParser,
    combine_fields,
    find_head_end,
    reason_phrase,
    response_head,
)

ERROR_STATUSES = frozenset({400, 413, 414, 431, 501, 505})
MAX_STEPS = 10_000  # next_request calls per feed before we call it an infinite loop
NEXT = b"GET /next HTTP/1.1\r\nHost: next.example\r\n\r\n"
KIB = 1024


# -- running the parser ----------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """Everything a connection would see: the requests, then maybe an error status."""

    requests: tuple[Request, ...]
    error: int | None


def drain(parser: RequestParser, into: list[Request]) -> None:
    for _ in range(MAX_STEPS):
        request = parser.next_request()
        if request is None:
            return
        into.append(request)
    raise AssertionError("next_request never answered None")


def run(pieces: Iterable[bytes], *, limits: Limits = DEFAULT_LIMITS, eof: bool = False) -> Outcome:
    """Feed ``pieces`` (then EOF if asked), draining requests after every piece."""
    parser = RequestParser(limits)
    requests: list[Request] = []
    try:
        for piece in pieces:
            assert piece, "an empty piece would mean EOF"
            parser.feed(piece)
            drain(parser, requests)
        if eof:
            parser.feed(b"")
            drain(parser, requests)
    except ProtocolError as exc:
        assert exc.status in ERROR_STATUSES, exc
        return Outcome(tuple(requests), exc.status)
    return Outcome(tuple(requests), None)


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in pairwise(bounds) if b > a]


def head(request_line: str, *fields: str) -> bytes:
    """A request head with CRLF line endings; str is encoded as latin-1."""
    return "".join(f"{line}\r\n" for line in (request_line, *fields)).encode("latin-1") + b"\r\n"


def get(target: str = "/", *fields: str, version: str = "1.1") -> bytes:
    return head(f"GET {target} HTTP/{version}", "Host: example.com", *fields)


def post(*fields: str, body: bytes = b"") -> bytes:
    return head("POST /upload HTTP/1.1", "Host: example.com", *fields) + body


# -- the table -------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    data: bytes
    # Expected requests, each as the subset of Request attributes worth checking.
    requests: tuple[dict[str, object], ...] = ()
    error: int | None = None
    limits: Limits = DEFAULT_LIMITS
    eof: bool = False  # the peer closes after ``data``
    complete: bool = True  # False: ``data`` stops inside a request (no trailing run)


def ok(
    id: str,
    data: bytes,
    *requests: dict[str, object],
    limits: Limits = DEFAULT_LIMITS,
    eof: bool = False,
    complete: bool = True,
) -> Case:
    return Case(id, data, requests, None, limits, eof, complete)


def err(
    id: str,
    data: bytes,
    status: int,
    *,
    limits: Limits = DEFAULT_LIMITS,
    eof: bool = False,
    complete: bool = True,
) -> Case:
    return Case(id, data, (), status, limits, eof, complete)


def body_err(
    id: str,
    data: bytes,
    status: int,
    *,
    limits: Limits = DEFAULT_LIMITS,
    eof: bool = False,
    complete: bool = True,
) -> Case:
    """An error inside a body: the request head itself was good and came out first."""
    return Case(id, data, ({"has_body": True},), status, limits, eof, complete)


H = {"host": "example.com"}
# Host field values that are not uri-host [":" port] (RFC 9112 §3.2, RFC 3986 §3.2.2).
INVALID_HOSTS = [
    b"a b", b"a\tb", b"a@b", b"x:y:z", b"a/b", b"[::1", b"", b"[::1]x", b"[::1]:x",
    b"a:b", b"a:80:80", b"a?b", b"a#b", b"a\\b", b"a%zz", b"caf\xc3\xa9", b"[1.2.3.4]",
    b"[fe80::1%eth0]", b"[]", b":80", b"a]", b"a[",
]  # fmt: skip
VALID_HOSTS = [
    b"example.com", b"example.com:8000", b"localhost:", b"127.0.0.1:80", b"[::1]",
    b"[::1]:8000", b"[v1.fe:x]", b"xn--caf-dma.example", b"a%20b", b"a_b~!$&'()*+,;=",
]  # fmt: skip
LONG = "a" * (9 * KIB)
# Request line of exactly max_request_line bytes: "GET " + target + " HTTP/1.1".
TARGET_AT_LIMIT = "/" + "a" * (8 * KIB - len("GET / HTTP/1.1"))
# Field lines totalling exactly max_header_bytes, CRLFs included (final blank excluded).
PAD_AT_LIMIT = "p" * (64 * KIB - len("Host: example.com\r\nX-Pad: \r\n"))
CHUNK_EXT_AT_LIMIT = "5;" + "e" * (KIB - 2)
CHUNKED = "Transfer-Encoding: chunked"
TLS_CLIENT_HELLO = bytes.fromhex("160301009e0100009a0303" + "ab" * 32 + "000004130113020100")
SMALL_BODY = Limits(max_body=10)

CASES: list[Case] = [
    # ---- valid request lines (RFC 9112 §3) ----
    ok(
        "origin-form-query",
        get("/a%20b/c.html?x=1&y=%2F"),
        {
            "method": "GET",
            "target": "/a%20b/c.html?x=1&y=%2F",
            "path": "/a%20b/c.html",
            "query": "x=1&y=%2F",
            "version": "1.1",
            "headers": H,
            "keep_alive": True,
            "has_body": False,
            "expects_continue": False,
        },
    ),
    ok("no-query-is-none", get("/"), {"path": "/", "query": None}),
    ok("empty-query", get("/?"), {"path": "/", "query": ""}),
    ok("query-keeps-second-question-mark", get("/p?a?b"), {"path": "/p", "query": "a?b"}),
    ok("head", head("HEAD /x HTTP/1.1", "Host: h"), {"method": "HEAD", "path": "/x"}),
    ok("extension-method", head("PROPFIND /d HTTP/1.1", "Host: h"), {"method": "PROPFIND"}),
    # RFC 9112 §3.2: Host is required in 1.1 only.
    ok(
        "http10-without-host",
        b"GET /old HTTP/1.0\r\n\r\n",
        {"version": "1.0", "path": "/old", "headers": {}},
    ),
    # RFC 9110 §2.5: a higher minor version is processed as the highest we implement.
    ok("http12-treated-as-11", head("GET / HTTP/1.2", "Host: h"), {"version": "1.1"}),
    # RFC 9112 §3.2.2: absolute-form; the authority replaces the Host field.
    ok(
        "absolute-form",
        get("http://example.org/a?b", version="1.1").replace(b"Host: example.com", b"Host: other"),
        {
            "target": "http://example.org/a?b",
            "path": "/a",
            "query": "b",
            "headers": {"host": "example.org"},
        },
    ),
    ok(
        "absolute-form-no-path",
        head("GET http://example.org HTTP/1.1", "Host: x"),
        {"path": "/", "query": None, "headers": {"host": "example.org"}},
    ),
    ok(
        "absolute-form-query-only",
        head("GET http://example.org?q HTTP/1.1", "Host: x"),
        {"path": "/", "query": "q"},
    ),
    ok(
        "absolute-form-https-any-case",
        head("GET HTTPS://Example.org:8443/x HTTP/1.1"),
        {"path": "/x", "headers": {"host": "Example.org:8443"}},
    ),
    # RFC 9112 §3.2.4: asterisk-form, OPTIONS only.
    ok(
        "options-asterisk",
        head("OPTIONS * HTTP/1.1", "Host: h"),
        {"method": "OPTIONS", "target": "*", "path": "*", "query": None},
    ),
    # RFC 9112 §3.2.3: authority-form, CONNECT only.
    ok(
        "connect-authority-form",
        head("CONNECT example.org:443 HTTP/1.1", "Host: example.org:443"),
        {
            "method": "CONNECT",
            "target": "example.org:443",
            "path": "",
            "headers": {"host": "example.org:443"},
        },
    ),
    # RFC 9112 §2.2: empty lines before the request-line are ignored.
    ok("leading-crlfs", b"\r\n\r\n" + get("/"), {"path": "/"}),
    ok("leading-bare-lfs", b"\n\n\r\n" + get("/"), {"path": "/"}),
    # RFC 9112 §2.2: a bare LF may be accepted as a line terminator.
    ok(
        "bare-lf",
        b"GET /lf HTTP/1.1\nHost: h\nAccept: */*\n\n",
        {"path": "/lf", "headers": {"host": "h", "accept": "*/*"}},
    ),
    ok(
        "lf-then-crlf-ending",
        b"GET /mixed HTTP/1.1\r\nHost: h\n\r\n",
        {"path": "/mixed", "headers": {"host": "h"}},
    ),
    ok(
        "crlf-then-lf-ending",
        b"GET /mixed HTTP/1.1\r\nHost: h\r\n\n",
        {"path": "/mixed", "headers": {"host": "h"}},
    ),
    # ---- header fields (RFC 9110 §5, RFC 9112 §5) ----
    ok(
        "names-lowercased",
        get("/", "Content-TYPE: text/plain", "X-FOO: 1"),
        {"headers": {**H, "content-type": "text/plain", "x-foo": "1"}},
    ),
    # RFC 9110 §5.3: repeated fields combine into a comma-separated list.
    ok(
        "repeated-combined",
        get("/", "Accept: a", "X-Other: o", "accept: b", "ACCEPT: c"),
        {"headers": {**H, "accept": "a, b, c", "x-other": "o"}},
    ),
    # RFC 9112 §5.1: OWS around the value is not part of it.
    ok(
        "ows-trimmed",
        get("/", "X-A: \t v w \t", "X-B:v", "X-Empty:  "),
        {"headers": {**H, "x-a": "v w", "x-b": "v", "x-empty": ""}},
    ),
    # RFC 9110 §5.5: obs-text is opaque; latin-1 keeps every byte.
    ok(
        "obs-text-latin1",
        get("/")[:-2] + b"X-Name: caf\xe9 \x80\xff\r\n\r\n",
        {"headers": {**H, "x-name": "caf\xe9 \x80\xff"}},
    ),
    ok("htab-inside-value", get("/", "X-T: a\tb"), {"headers": {**H, "x-t": "a\tb"}}),
    ok("value-with-colons", get("/", "X-Time: 12:30:00"), {"headers": {**H, "x-time": "12:30:00"}}),
    # ---- persistence (RFC 9112 §9.3) ----
    ok("keep-alive-11-default", get("/"), {"keep_alive": True}),
    ok("connection-close", get("/", "Connection: close"), {"keep_alive": False}),
    ok("connection-close-any-case", get("/", "Connection: CLOSE"), {"keep_alive": False}),
    ok(
        "connection-close-in-list", get("/", "Connection: keep-alive, Close"), {"keep_alive": False}
    ),
    ok(
        "connection-close-second-field",
        get("/", "Connection: upgrade", "Connection: close"),
        {"keep_alive": False},
    ),
    ok("connection-other-token-11", get("/", "Connection: upgrade"), {"keep_alive": True}),
    ok("keep-alive-10-default-off", b"GET / HTTP/1.0\r\n\r\n", {"keep_alive": False}),
    ok(
        "keep-alive-10-opt-in",
        b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
        {"keep_alive": True},
    ),
    ok(
        "keep-alive-10-opt-in-then-close",
        b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
        {"keep_alive": False},
    ),
    # ---- bodies are framed and discarded (RFC 9112 §6) ----
    ok(
        "content-length-body",
        post("Content-Length: 5", body=b"hello") + get("/2"),
        {"method": "POST", "has_body": True},
        {"path": "/2"},
    ),
    ok(
        "content-length-zero",
        post("Content-Length: 0") + get("/2"),
        {"has_body": False},
        {"path": "/2"},
    ),
    # RFC 9112 §6.3 item 5: identical repeated values may be taken as one.
    ok(
        "content-length-identical-list",
        post("Content-Length: 5, 5", body=b"hello") + get("/2"),
        {"has_body": True},
        {"path": "/2"},
    ),
    ok(
        "content-length-identical-fields",
        post("Content-Length: 3", "Content-Length: 3", body=b"abc") + get("/2"),
        {"has_body": True},
        {"path": "/2"},
    ),
    ok(
        "body-looking-like-a-request",
        post(f"Content-Length: {len(get('/smuggled'))}", body=get("/smuggled")) + get("/2"),
        {"has_body": True},
        {"path": "/2"},
    ),
    ok(
        "content-length-at-max-body",
        post("Content-Length: 10", body=b"0123456789"),
        {"has_body": True},
        limits=SMALL_BODY,
    ),
    ok(
        "content-length-waiting-for-body",
        post("Content-Length: 1048576", body=b"abc"),
        {"has_body": True},
        complete=False,
    ),
    # RFC 9112 §7.1: chunk extensions, hex of any case, trailer section.
    ok(
        "chunked-ext-hex-trailers",
        post(
            CHUNKED,
            body=b'A;name=value\r\n0123456789\r\n1f ; ext ; q="a"\r\n'
            + b"x" * 31
            + b"\r\n0\r\nTrailer-A: 1\r\nTrailer-B: 2\r\n\r\n",
        )
        + get("/2"),
        {"has_body": True, "headers": {**H, "transfer-encoding": "chunked"}},
        {"path": "/2"},
    ),
    ok(
        "chunked-uppercase-coding",
        post("Transfer-Encoding: Chunked", body=b"0\r\n\r\n") + get("/2"),
        {"has_body": True},
        {"path": "/2"},
    ),
    ok(
        "chunked-leading-zeros",
        post(CHUNKED, body=b"0005\r\nhello\r\n00\r\n\r\n") + get("/2"),
        {"has_body": True},
        {"path": "/2"},
    ),
    ok(
        "chunked-data-looking-like-framing",
        post(CHUNKED, body=b"7\r\n0\r\n\r\nGE\r\n0\r\n\r\n") + get("/2"),
        {},
        {"path": "/2"},
    ),
    ok(
        "chunked-at-max-body",
        post(CHUNKED, body=b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n"),
        {"has_body": True},
        limits=SMALL_BODY,
    ),
    ok(
        "chunked-waiting-for-data",
        post(CHUNKED, body=b"5\r\nhe"),
        {"has_body": True},
        complete=False,
    ),
    # RFC 9110 §10.1.1: Expect: 100-continue.
    ok(
        "expect-continue",
        post("Expect: 100-Continue", "Content-Length: 2", body=b"hi"),
        {"expects_continue": True, "has_body": True},
    ),
    ok(
        "expect-other",
        post("Expect: something", "Content-Length: 2", body=b"hi"),
        {"expects_continue": False},
    ),
    # RFC 9110 §10.1.1: a server MUST ignore 100-continue in an HTTP/1.0 request.
    ok(
        "expect-continue-http10",
        b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
        {"expects_continue": False, "has_body": True},
    ),
    # ---- limits, right at the edge (accepted) ----
    ok("request-line-at-limit", get(TARGET_AT_LIMIT), {"path": TARGET_AT_LIMIT}),
    ok("header-fields-at-limit", get("/", *(f"X-{i}: {i}" for i in range(99))), {"path": "/"}),
    ok("header-bytes-at-limit", get("/", f"X-Pad: {PAD_AT_LIMIT}"), {"path": "/"}),
    ok(
        "chunk-line-at-limit",
        post(CHUNKED, body=f"{CHUNK_EXT_AT_LIMIT}\r\nhello\r\n0\r\n\r\n".encode()) + get("/2"),
        {"has_body": True},
        {"path": "/2"},
    ),
    # ---- malformed request line (RFC 9112 §3): 400 ----
    err("double-space", b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    err("trailing-space", b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n", 400),
    err("leading-space", b" GET / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    err("missing-version", b"GET /\r\nHost: h\r\n\r\n", 400),
    err("http-09-style", b"GET /\r\n\r\n", 400),
    err("lowercase-version", b"GET / http/1.1\r\nHost: h\r\n\r\n", 400),
    err("version-no-dot", b"GET / HTTP/11\r\nHost: h\r\n\r\n", 400),
    err("version-two-digits", b"GET / HTTP/1.10\r\nHost: h\r\n\r\n", 400),
    err("tab-separators", b"GET\t/\tHTTP/1.1\r\nHost: h\r\n\r\n", 400),
    err("bare-cr-in-request-line", b"GET / HTTP/1.1\r\r\nHost: h\r\n\r\n", 400),
    err("cr-as-separator", b"GET\r/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    # RFC 9110 §9.1: method = token.
    err("method-not-token", b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    err("method-non-ascii", b"G\xc9T / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    err("method-empty", b" / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    # ... and a line that cannot start with a method token is refused before its end
    # arrives: a TLS ClientHello on the plain port holds no LF at all.
    err("tls-client-hello", TLS_CLIENT_HELLO, 400, complete=False),
    err("method-ctl-incomplete", b"GE\x00", 400, complete=False),
    err("method-cr-incomplete", b"GET\r", 400, complete=False),
    err("leading-space-incomplete", b" GET", 400, complete=False),
    err("method-bad-before-414", b"\x16" + LONG.encode(), 400, complete=False),
    # Past the line limit the 414 wins, however much of the line has arrived.
    err("method-bad-after-414", b"G" * (8 * KIB + 1) + b"\x00 / HTTP/1.1\r\n\r\n", 414),
    err(
        "method-bad-before-431",
        b"G@T / HTTP/1.1\r\nX-Pad: " + b"p" * (65 * KIB),
        400,
        complete=False,
    ),
    # RFC 9112 §3.2: request-target; no fragment, no CTLs, ASCII only.
    err("target-fragment", b"GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    err("target-ctl", b"GET /a\x01b HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    err("target-del", b"GET /a\x7fb HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    err("target-nul", b"GET /a\x00 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    err("target-non-ascii", b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    err("target-relative", b"GET foo HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    err("target-other-scheme", b"GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    err("target-empty-authority", b"GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    # RFC 9110 §4.2.4: userinfo is not allowed in an http(s) URI.
    err("target-userinfo", b"GET http://u@h/x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    # RFC 9112 §3.2.4: asterisk-form is only for OPTIONS.
    err("asterisk-with-get", b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    # ---- version (RFC 9110 §15.6.6): 505 ----
    err("http-2.0", b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    err("http-3.1", b"GET / HTTP/3.1\r\nHost: h\r\n\r\n", 505),
    err("http-0.9", b"GET / HTTP/0.9\r\nHost: h\r\n\r\n", 505),
    # ---- header fields: 400 ----
    # RFC 9112 §3.2: a 1.1 request without Host, or with more than one, is a 400.
    err("missing-host", b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
    err("two-host-fields", b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400),
    err("two-host-fields-http10", b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    # RFC 9112 §3.2: Host = uri-host [":" port]; anything else is a 400, in 1.0 too.
    *(
        err(f"invalid-host-{i}", b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n", 400)
        for i, value in enumerate(INVALID_HOSTS)
    ),
    *(
        err(f"invalid-host-http10-{i}", b"GET / HTTP/1.0\r\nHost: " + value + b"\r\n\r\n", 400)
        for i, value in enumerate(INVALID_HOSTS)
    ),
    *(
        ok(
            f"valid-host-{i}",
            b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n",
            {"headers": {"host": value.decode()}},
        )
        for i, value in enumerate(VALID_HOSTS)
    ),
    err("absolute-form-invalid-authority", head("GET http://x:y:z/ HTTP/1.1", "Host: h"), 400),
    err("absolute-form-with-invalid-host", head("GET http://h/ HTTP/1.1", "Host: a b"), 400),
    # RFC 9112 §5.1: no whitespace between field name and colon.
    err("space-before-colon", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    err("tab-before-colon", b"GET / HTTP/1.1\r\nHost\t: x\r\n\r\n", 400),
    err("no-colon", b"GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", 400),
    err("empty-name", b"GET / HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n", 400),
    err("name-not-token", b"GET / HTTP/1.1\r\nHost: x\r\nX(A): v\r\n\r\n", 400),
    err("name-non-ascii", b"GET / HTTP/1.1\r\nHost: x\r\nX\xe9: v\r\n\r\n", 400),
    # RFC 9112 §5.2: obs-fold is rejected by a server.
    err("obs-fold-space", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    err("obs-fold-tab", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n", 400),
    # RFC 9112 §2.2: whitespace before the first field line.
    err("space-before-first-field", b"GET / HTTP/1.1\r\n Host: x\r\n\r\n", 400),
    # RFC 9112 §2.2: a bare CR outside content is invalid.
    err("bare-cr-in-value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400),
    err("bare-cr-before-crlf", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\r\n\r\n", 400),
    err("bare-cr-in-name", b"GET / HTTP/1.1\r\nHost: x\r\nX\rA: a\r\n\r\n", 400),
    # RFC 9110 §5.5: field values exclude CTLs other than HTAB.
    err("nul-in-value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    err("ctl-in-value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x1bb\r\n\r\n", 400),
    err("del-in-value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x7f\r\n\r\n", 400),
    err("nul-in-host", b"GET / HTTP/1.1\r\nHost: x\x00y\r\n\r\n", 400),
    # ---- framing headers (RFC 9112 §6) ----
    # RFC 9112 §6.3 item 3: both framings at once is request smuggling: reject.
    err("cl-and-te", post("Content-Length: 5", CHUNKED, body=b"0\r\n\r\n"), 400),
    err("te-and-cl", post(CHUNKED, "Content-Length: 5", body=b"0\r\n\r\n"), 400),
    # RFC 9110 §8.6: Content-Length = 1*DIGIT; RFC 9112 §6.3 item 5: otherwise 400.
    err("content-length-negative", post("Content-Length: -1"), 400),
    err("content-length-decimal", post("Content-Length: 1.5"), 400),
    err("content-length-plus", post("Content-Length: +5"), 400),
    err("content-length-hex", post("Content-Length: 0x10"), 400),
    err("content-length-list-differs", post("Content-Length: 5, 6", body=b"hello!"), 400),
    err(
        "content-length-fields-differ",
        post("Content-Length: 5", "Content-Length: 6", body=b"hello!"),
        400,
    ),
    err("content-length-empty", post("Content-Length: "), 400),
    err("content-length-inner-space", post("Content-Length: 1 0"), 400),
    err("content-length-superscript", post()[:-2] + b"Content-Length: \xb2\r\n\r\n", 400),
    err("content-length-too-many-digits", post("Content-Length: " + "9" * 30), 400),
    # RFC 9112 §6.1: a 1.0 message with Transfer-Encoding has faulty framing.
    err("te-in-http10", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    # RFC 9112 §6.3 item 4: chunked must be the final coding of a request, else 400;
    # RFC 9112 §6.1: a coding we do not implement is a 501.
    err("te-gzip", post("Transfer-Encoding: gzip"), 400),
    err("te-chunked-then-gzip", post("Transfer-Encoding: chunked, gzip"), 400),
    err("te-empty", post("Transfer-Encoding: "), 400),
    err("te-gzip-chunked", post("Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), 501),
    err("te-gzip-chunked-fields", post("Transfer-Encoding: gzip", CHUNKED, body=b"0\r\n\r\n"), 501),
    # RFC 9112 §7: chunked must not be applied twice; we answer it as unsupported.
    err("te-chunked-twice", post("Transfer-Encoding: chunked, chunked", body=b"0\r\n\r\n"), 501),
    # ---- malformed chunked bodies (RFC 9112 §7.1): 400 ----
    body_err("chunk-size-not-hex", post(CHUNKED, body=b"zz\r\n"), 400),
    body_err("chunk-size-17-digits", post(CHUNKED, body=b"1" + b"0" * 16 + b"\r\n"), 400),
    body_err("chunk-size-empty", post(CHUNKED, body=b"\r\n"), 400),
    body_err("chunk-size-negative", post(CHUNKED, body=b"-1\r\n"), 400),
    body_err("chunk-size-0x", post(CHUNKED, body=b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
    body_err("chunk-size-leading-space", post(CHUNKED, body=b" 5\r\nhello\r\n0\r\n\r\n"), 400),
    body_err("chunk-data-no-crlf", post(CHUNKED, body=b"5\r\nhelloX\r\n0\r\n\r\n"), 400),
    body_err("chunk-data-bare-lf", post(CHUNKED, body=b"5\r\nhello\n0\r\n\r\n"), 400),
    body_err("chunk-data-too-long", post(CHUNKED, body=b"3\r\nhello\r\n0\r\n\r\n"), 400),
    body_err(
        "chunk-line-over-limit",
        post(CHUNKED, body=f"{CHUNK_EXT_AT_LIMIT}e\r\nhello\r\n0\r\n\r\n".encode()),
        400,
    ),
    # ---- limits ----
    # RFC 9112 §3: a request line over the limit is a 414, complete or still arriving.
    err("request-line-over-limit", get(TARGET_AT_LIMIT + "a"), 414),
    err("request-line-9000", get("/" + LONG), 414),
    err("request-line-incomplete", b"GET /" + LONG.encode(), 414, complete=False),
    err(
        "request-line-incomplete-cr",
        b"GET " + TARGET_AT_LIMIT.encode() + b"a HTTP/1.1\r",
        414,
        complete=False,
    ),
    # RFC 6585 §5: too many or too large header fields is a 431.
    err("header-fields-101", get("/", *(f"X-{i}: {i}" for i in range(100))), 431),
    err("header-bytes-over-limit", get("/", f"X-Pad: {PAD_AT_LIMIT}p"), 431),
    err("header-bytes-70k", get("/", f"X-Pad: {'p' * 70 * KIB}"), 431),
    err(
        "header-bytes-incomplete",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"p" * (65 * KIB),
        431,
        complete=False,
    ),
    err(
        "header-bytes-many-lines-incomplete",
        b"GET / HTTP/1.1\r\n" + b"X-Pad: 0123456789\r\n" * 3500,
        431,
        complete=False,
    ),
    # RFC 9110 §15.5.14: content larger than we accept is a 413.
    err("content-length-over-max-body", post("Content-Length: 1048577"), 413),
    err(
        "content-length-over-small-max",
        post("Content-Length: 11", body=b"x" * 11),
        413,
        limits=SMALL_BODY,
    ),
    body_err("chunk-size-over-max-body", post(CHUNKED, body=b"100001\r\n"), 413),
    body_err(
        "chunks-grow-over-max-body",
        post(CHUNKED, body=b"5\r\nhello\r\n5\r\nworld\r\n1\r\n!\r\n0\r\n\r\n"),
        413,
        limits=SMALL_BODY,
    ),
    body_err("chunk-size-16-digits-over-max", post(CHUNKED, body=b"f" * 16 + b"\r\n"), 413),
    # ---- the peer closes mid-request (RFC 9112 §8): 400 ----
    err("eof-mid-request-line", b"GET / HT", 400, eof=True, complete=False),
    err("eof-mid-head", b"GET / HTTP/1.1\r\nHost: h\r\n", 400, eof=True, complete=False),
    err("eof-lone-cr", b"\r", 400, eof=True, complete=False),
    err("eof-mid-head-cr", b"GET / HTTP/1.1\r\nHost: h\r\n\r", 400, eof=True, complete=False),
    body_err(
        "eof-mid-content-length",
        post("Content-Length: 10", body=b"hello"),
        400,
        eof=True,
        complete=False,
    ),
    body_err("eof-mid-chunk-size", post(CHUNKED, body=b"5"), 400, eof=True, complete=False),
    body_err("eof-mid-chunk", post(CHUNKED, body=b"5\r\nhel"), 400, eof=True, complete=False),
    body_err(
        "eof-after-chunk-data", post(CHUNKED, body=b"5\r\nhello"), 400, eof=True, complete=False
    ),
    body_err(
        "eof-before-last-chunk",
        post(CHUNKED, body=b"5\r\nhello\r\n"),
        400,
        eof=True,
        complete=False,
    ),
    body_err(
        "eof-in-trailers", post(CHUNKED, body=b"0\r\nX-T: 1\r\n"), 400, eof=True, complete=False
    ),
    # ... while a clean close between requests is no error at all.
    ok("eof-between-requests", get("/1") + get("/2"), {"path": "/1"}, {"path": "/2"}, eof=True),
    ok("eof-after-body", post("Content-Length: 2", body=b"hi"), {"has_body": True}, eof=True),
    ok(
        "eof-after-chunked-body",
        post(CHUNKED, body=b"2\r\nhi\r\n0\r\n\r\n"),
        {"has_body": True},
        eof=True,
    ),
    ok("eof-after-leading-crlf", get("/1") + b"\r\n", {"path": "/1"}, eof=True),
    # An error in a later pipelined request still yields the good ones before it.
    Case(
        "error-after-good-request",
        get("/1") + b"GET / HTTP/2.0\r\n\r\n",
        requests=({"path": "/1"},),
        error=505,
    ),
]


def _params() -> list[object]:
    params: list[object] = []
    for case in CASES:
        for mode in ("whole", "bytewise", "trailing"):
            if mode == "trailing" and (case.eof or not case.complete):
                continue  # trailing data after an incomplete request is part of it
            params.append(pytest.param(case, mode, id=f"{case.id}-{mode}"))
    return params


def _pieces(case: Case, mode: str) -> list[bytes]:
    if mode == "bytewise":
        return bytewise(case.data)
    if mode == "trailing":
        return [case.data + NEXT]
    return [case.data]


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(("case", "mode"), _params())
def test_table(case: Case, mode: str) -> None:
    outcome = run(_pieces(case, mode), limits=case.limits, eof=case.eof)
    expected = list(case.requests)
    if mode == "trailing" and case.error is None:
        expected.append({"path": "/next", "headers": {"host": "next.example"}})
    assert outcome.error == case.error
    assert len(outcome.requests) == len(expected)
    for request, fields in zip(outcome.requests, expected, strict=True):
        assert {name: getattr(request, name) for name in fields} == fields
    if mode != "whole":
        # Not just the checked fields: every attribute agrees with the whole run.
        whole = run([case.data], limits=case.limits, eof=case.eof)
        assert outcome.requests[: len(whole.requests)] == whole.requests


# -- parser state between and inside requests -----------------------------------------
def test_has_partial_request_through_a_pipeline() -> None:
    parser = RequestParser()
    assert not parser.has_partial_request
    parser.feed(b"\r\n")  # RFC 9112 §2.2: empty lines before a request do not count
    assert parser.next_request() is None
    assert not parser.has_partial_request
    for byte in bytewise(post("Content-Length: 3")[:-1]):
        parser.feed(byte)
        assert parser.next_request() is None
        assert parser.has_partial_request  # mid-head
    parser.feed(b"\n")
    request = parser.next_request()
    assert request is not None and request.has_body
    assert parser.has_partial_request  # the body has not arrived
    parser.feed(b"ab")
    assert parser.next_request() is None
    assert parser.has_partial_request  # mid-body
    parser.feed(b"c")
    assert parser.next_request() is None
    assert not parser.has_partial_request  # between requests
    parser.feed(get("/2"))
    assert parser.has_partial_request  # buffered, not parsed yet
    request = parser.next_request()
    assert request is not None and request.path == "/2"
    assert not parser.has_partial_request
    assert parser.next_request() is None


def test_has_partial_request_mid_chunked_body() -> None:
    parser = RequestParser()
    parser.feed(post(CHUNKED, body=b"5\r\nhello\r\n"))
    assert parser.next_request() is not None
    assert parser.next_request() is None
    assert parser.has_partial_request
    parser.feed(b"0\r\n\r\n")
    assert parser.next_request() is None
    assert not parser.has_partial_request


def test_take_buffered_returns_bytes_after_the_head() -> None:
    parser = RequestParser()
    parser.feed(get("/ws", "Upgrade: websocket", "Connection: Upgrade") + b"\x81\x05hello")
    request = parser.next_request()
    assert request is not None and request.path == "/ws"
    assert parser.take_buffered() == b"\x81\x05hello"
    # The connection now speaks another protocol: nothing more is parsed as HTTP.
    parser.feed(get("/after"))
    assert parser.next_request() is None
    assert parser.take_buffered() == get("/after")


def test_take_buffered_empty_when_nothing_follows() -> None:
    parser = RequestParser()
    parser.feed(get("/"))
    assert parser.next_request() is not None
    assert parser.take_buffered() == b""


def test_eof_flag_and_clean_close() -> None:
    parser = RequestParser()
    assert not parser.eof
    parser.feed(b"")
    assert parser.eof
    assert parser.next_request() is None  # closing an idle connection is not an error


def test_error_carries_status_and_reason() -> None:
    parser = RequestParser()
    parser.feed(b"GET / HTTP/2.0\r\n\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.next_request()
    assert info.value.status == 505
    assert info.value.reason
    assert str(info.value).startswith("505 ")


def test_header_lookup_helper() -> None:
    (request,) = run([get("/", "X-A: 1")]).requests
    assert request.header("x-a") == "1"
    assert request.header("x-missing") == ""
    assert request.header("x-missing", "dflt") == "dflt"


# -- response_head ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (
            200,
            [("Content-Length", "5"), ("Content-Type", "text/plain")],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n",
        ),
        (404, [], b"HTTP/1.1 404 Not Found\r\n\r\n"),
        (304, [("ETag", '"abc"')], b'HTTP/1.1 304 Not Modified\r\nETag: "abc"\r\n\r\n'),
        (
            413,
            [("Connection", "close")],
            b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\n\r\n",
        ),
        (505, [], b"HTTP/1.1 505 HTTP Version Not Supported\r\n\r\n"),
        (599, [("X-A", "1")], b"HTTP/1.1 599 Unknown\r\nX-A: 1\r\n\r\n"),
        (418, [], b"HTTP/1.1 418 Unknown\r\n\r\n"),
        # Repeated fields stay separate and in order; values are latin-1 on the wire.
        (
            200,
            [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X-Name", "caf\xe9")],
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Name: caf\xe9\r\n\r\n",
        ),
    ],
)
def test_response_head_bytes(status: int, headers: list[tuple[str, str]], expected: bytes) -> None:
    assert response_head(status, headers) == expected


def test_response_head_accepts_any_iterable() -> None:
    headers = iter([("Content-Length", "0")])
    assert response_head(204, headers) == b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("status", [200, 204, 206, 301, 304, 400, 404, 416, 431, 500, 503, 599])
def test_response_head_is_read_by_h11(status: int) -> None:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(response_head(status, [("Content-Length", "0"), ("X-A", "b")]))
    event = client.next_event()
    assert isinstance(event, h11.Response)
    assert event.status_code == status
    assert event.reason.decode() == reason_phrase(status)
    assert (b"x-a", b"b") in list(event.headers)


def test_reason_phrase() -> None:
    assert reason_phrase(200) == "OK"
    assert reason_phrase(431) == "Request Header Fields Too Large"
    assert reason_phrase(299) == "Unknown"


# -- properties ------------------------------------------------------------------------
TINY = Limits(
    max_request_line=40, max_header_bytes=60, max_header_fields=3, max_body=10, max_chunk_line=12
)
FRAGMENTS = st.sampled_from(
    [
        b"GET / HTTP/1.1\r\n",
        b"POST /p?q HTTP/1.0\r\n",
        b"OPTIONS * HTTP/1.1\r\n",
        b"GET http://h/x HTTP/1.1\r\n",
        b"Host: h\r\n",
        b"Content-Length: 3\r\n",
        b"Content-Length: 3, 3\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Connection: close\r\n",
        b"Expect: 100-continue\r\n",
        b"\r\n",
        b"\r\n\r\n",
        b"\n",
        b"\r",
        b" ",
        b"\t",
        b":",
        b"3\r\nabc\r\n",
        b"a;x=y\r\n",
        b"0\r\n\r\n",
        b"0\r\nT: 1\r\n\r\n",
        b"abc",
        b"\x00",
        b"\xff",
    ]
)
# Runs of filler around TINY's limits, so cuts land right at the 414/431/chunk-line edges.
FILLER = st.integers(8, 64).map(lambda n: b"a" * n)
STREAMS = st.lists(st.one_of(st.binary(max_size=24), FRAGMENTS, FILLER), max_size=24).map(b"".join)
PROPERTY_SETTINGS = settings(deadline=None, max_examples=200, database=None)


@PROPERTY_SETTINGS
@given(
    data=st.data(), raw=STREAMS, limits=st.sampled_from([DEFAULT_LIMITS, TINY]), eof=st.booleans()
)
def test_arbitrary_input_never_crashes_and_split_does_not_matter(
    data: st.DataObject, raw: bytes, limits: Limits, eof: bool
) -> None:
    # run() lets any exception but ProtocolError escape, checks its status is one we
    # can answer with, and fails if next_request keeps producing requests forever.
    whole = run([raw] if raw else [], limits=limits, eof=eof)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12), label="cuts")
    split = run(split_at(raw, cuts), limits=limits, eof=eof)
    assert split == whole


NAME_CHARS = string.ascii_letters + string.digits + "-_.!#$%&'*+^`|~"
VALUE_CHARS = string.ascii_letters + string.digits + string.punctuation + " \t\xe9\xff\x80"
PATH_CHARS = string.ascii_letters + string.digits + "-._~/%!$&'()*+,;=:@"


@dataclass(frozen=True)
class Generated:
    method: str
    target: str
    version: str
    fields: tuple[tuple[str, str], ...]
    body: bytes | None
    connection: str | None

    def encode(self) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/{self.version}", "Host: gen.example"]
        lines += [f"{name}: {value}" for name, value in self.fields]
        if self.connection is not None:
            lines.append(f"Connection: {self.connection}")
        if self.body is not None:
            lines.append(f"Content-Length: {len(self.body)}")
        return head(*lines) + (self.body or b"")

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def headers(self) -> dict[str, str]:
        expected = {"host": "gen.example"}
        for name, value in self.fields:
            key, text = name.lower(), value.strip(" \t")
            expected[key] = f"{expected[key]}, {text}" if key in expected else text
        if self.connection is not None:
            expected["connection"] = self.connection
        if self.body is not None:
            expected["content-length"] = str(len(self.body))
        return expected

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in (self.connection or "").split(",")}
        if "close" in tokens:
            return False
        return self.version == "1.1" or "keep-alive" in tokens


@st.composite
def generated_requests(draw: st.DrawFn) -> Generated:
    path = "/" + draw(st.text(PATH_CHARS, max_size=30))
    query = draw(st.none() | st.text(PATH_CHARS + "?", max_size=20))
    names = st.text(NAME_CHARS, min_size=1, max_size=12).map(lambda n: "X-" + n)
    values = st.text(VALUE_CHARS, max_size=30)
    return Generated(
        method=draw(st.sampled_from(["GET", "HEAD", "POST"])),
        target=path if query is None else f"{path}?{query}",
        version=draw(st.sampled_from(["1.1", "1.0"])),
        fields=tuple(draw(st.lists(st.tuples(names, values), max_size=6))),
        body=draw(st.none() | st.binary(max_size=40)),
        connection=draw(st.sampled_from([None, "close", "keep-alive", "Keep-Alive, Upgrade"])),
    )


def assert_matches(request: Request, generated: Generated) -> None:
    assert request.method == generated.method
    assert request.target == generated.target
    assert request.path == generated.path
    assert request.version == generated.version
    assert dict(request.headers) == generated.headers
    assert request.keep_alive == generated.keep_alive
    assert request.has_body == bool(generated.body)


def random_split(data: st.DataObject, raw: bytes) -> list[bytes]:
    return split_at(raw, data.draw(st.lists(st.integers(0, len(raw)), max_size=20), label="cuts"))


@PROPERTY_SETTINGS
@given(data=st.data(), generated=generated_requests())
def test_generated_request_round_trips(data: st.DataObject, generated: Generated) -> None:
    raw = generated.encode() + NEXT  # NEXT proves the body was consumed exactly
    for pieces in ([raw], random_split(data, raw)):
        outcome = run(pieces)
        assert outcome.error is None
        first, second = outcome.requests
        assert_matches(first, generated)
        assert second.path == "/next"


@PROPERTY_SETTINGS
@given(data=st.data(), pipeline=st.lists(generated_requests(), min_size=1, max_size=6))
def test_generated_pipeline_yields_every_request_in_order(
    data: st.DataObject, pipeline: Sequence[Generated]
) -> None:
    raw = b"".join(generated.encode() for generated in pipeline)
    outcome = run(random_split(data, raw), eof=data.draw(st.booleans(), label="eof"))
    assert outcome.error is None
    assert len(outcome.requests) == len(pipeline)
    for request, generated in zip(outcome.requests, pipeline, strict=True):
        assert_matches(request, generated)


# -- request bodies, read instead of discarded (the proxy's side) ---------------------
def read_bodies(
    pieces: Iterable[bytes], *, eof: bool = False, parser: RequestParser | None = None
) -> list[tuple[Request, bytes]]:
    """Feed ``pieces``; read every request's body with next_body_chunk."""
    parser = parser or RequestParser()
    out: list[tuple[Request, bytes]] = []
    current: tuple[Request, bytearray] | None = None
    queue = list(pieces) + ([b""] if eof else [])
    for _ in range(MAX_STEPS * 10):
        if current is None:
            request = parser.next_request()
            if request is not None:
                current = (request, bytearray())
                continue
        else:
            piece = parser.next_body_chunk()
            if isinstance(piece, EndOfBody):
                out.append((current[0], bytes(current[1])))
                current = None
                continue
            if piece is not None:
                assert piece, "a body chunk is never empty"
                current[1].extend(piece)
                continue
        if not queue:
            return out
        parser.feed(queue.pop(0))
    raise AssertionError("the parser never settled")


CHUNKED_BODY = (
    b"5;ext=1\r\nhello\r\n1\r\n \r\n05\r\nworld\r\n0\r\nX-Trailer: dropped\r\nX-Other: too\r\n\r\n"
)
BODY_CASES = [
    pytest.param(post("Content-Length: 11", body=b"hello world"), b"hello world", id="length"),
    pytest.param(post(CHUNKED, body=CHUNKED_BODY), b"hello world", id="chunked-trailers"),
    pytest.param(post(CHUNKED, body=b"0\r\n\r\n"), b"", id="chunked-empty"),
    pytest.param(post("Content-Length: 0"), b"", id="length-zero"),
    pytest.param(get("/"), b"", id="no-body"),
]


@pytest.mark.parametrize(("data", "body"), BODY_CASES)
@pytest.mark.parametrize("mode", ["whole", "bytewise", "trailing"])
def test_next_body_chunk_reads_the_body(data: bytes, body: bytes, mode: str) -> None:
    pieces = bytewise(data + NEXT) if mode == "bytewise" else [data + NEXT]
    if mode == "whole":
        pieces = [data]
    results = read_bodies(pieces)
    assert results[0][1] == body
    assert results[0][0].path == ("/upload" if data.startswith(b"POST") else "/")
    if mode != "whole":
        # The framing stayed in step: the pipelined request after the body is intact.
        assert len(results) == 2
        assert results[1][0].headers == {"host": "next.example"}
        assert results[1][1] == b""


def test_next_body_chunk_hands_over_what_each_feed_brought() -> None:
    parser = RequestParser()
    parser.feed(post("Content-Length: 10", body=b"abc"))
    request = parser.next_request()
    assert request is not None and request.has_body
    assert parser.next_body_chunk() == b"abc"
    assert parser.next_body_chunk() is None
    parser.feed(b"defghij" + NEXT)
    assert parser.next_body_chunk() == b"defghij"  # never past the body's end
    assert parser.next_body_chunk() is END_OF_BODY
    assert parser.next_body_chunk() is END_OF_BODY  # idempotent at the end
    following = parser.next_request()
    assert following is not None and following.path == "/next"


def test_a_partly_read_body_is_discarded_by_next_request() -> None:
    parser = RequestParser()
    parser.feed(post(CHUNKED, body=CHUNKED_BODY) + NEXT)
    assert parser.next_request() is not None
    assert parser.next_body_chunk() == b"hello"
    following = parser.next_request()
    assert following is not None and following.path == "/next"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        pytest.param(post("Content-Length: 10", body=b"abc"), 400, id="length-cut"),
        pytest.param(post(CHUNKED, body=b"5\r\nhel"), 400, id="chunk-cut"),
        pytest.param(post(CHUNKED, body=b"zz\r\n"), 400, id="bad-chunk-size"),
        pytest.param(post(CHUNKED, body=b"2\r\nhiX\r\n"), 400, id="no-crlf-after-chunk"),
    ],
)
def test_next_body_chunk_errors(data: bytes, status: int) -> None:
    for pieces in ([data], bytewise(data)):
        with pytest.raises(ProtocolError) as info:
            read_bodies(pieces, eof=True)
        assert info.value.status == status


def test_body_limit_is_chosen_per_path() -> None:
    big = 5 * 1024 * 1024

    def limit(path: str) -> int:
        return big if path.startswith("/api") else DEFAULT_LIMITS.max_body

    length = f"Content-Length: {2 * 1024 * 1024}"
    proxied = head("POST /api/upload HTTP/1.1", "Host: x", length)
    parser = RequestParser(body_limit=limit)
    parser.feed(proxied)
    request = parser.next_request()
    assert request is not None and request.has_body
    static = head("POST /upload HTTP/1.1", "Host: x", length)
    parser = RequestParser(body_limit=limit)
    parser.feed(static)
    with pytest.raises(ProtocolError) as info:
        parser.next_request()
    assert info.value.status == 413
    # Chunked: the per-request limit applies as the sizes arrive.
    parser = RequestParser(body_limit=lambda path: 10)
    parser.feed(head("POST /api HTTP/1.1", "Host: x", CHUNKED) + b"8\r\n12345678\r\n8\r\n")
    assert parser.next_request() is not None
    assert parser.next_body_chunk() == b"12345678"
    with pytest.raises(ProtocolError) as info:
        parser.next_body_chunk()
    assert info.value.status == 413


# -- ResponseParser --------------------------------------------------------------------
@dataclass(frozen=True)
class Parsed:
    heads: tuple[tuple[int, Framing], ...]
    body: bytes
    ended: bool
    error: str | None


def parse_response(
    pieces: Iterable[bytes],
    method: str = "GET",
    *,
    eof: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[Parsed, list[ResponseHead], ResponseParser]:
    parser = ResponseParser(method, limits)
    heads: list[ResponseHead] = []
    body = bytearray()
    ended = False
    try:
        for piece in [*pieces, *([b""] if eof else [])]:
            parser.feed(piece)
            for _ in range(MAX_STEPS):
                event = parser.next_event()
                if event is None:
                    break
                assert not ended, "nothing follows EndOfMessage"
                if isinstance(event, ResponseHead):
                    heads.append(event)
                elif isinstance(event, BodyData):
                    assert event.data
                    body += event.data
                else:
                    assert isinstance(event, EndOfMessage)
                    ended = True
    except BadGateway as exc:
        assert exc.status == 502
        error: str | None = exc.reason
    else:
        error = None
    summary = tuple((h.status, h.framing) for h in heads)
    return Parsed(summary, bytes(body), ended, error), heads, parser


OK_LINE = "HTTP/1.1 200 OK"


def rhead(status_line: str, *fields: str) -> bytes:
    return head(status_line, *fields)


L, C, N, X = Framing.LENGTH, Framing.CHUNKED, Framing.NONE, Framing.CLOSE
RESPONSE_CASES: list[tuple[str, str, bytes, bool, Parsed]] = [
    (
        "length",
        "GET",
        rhead(OK_LINE, "Content-Length: 5") + b"hello",
        False,
        Parsed(((200, L),), b"hello", True, None),
    ),
    (
        "length-zero",
        "GET",
        rhead(OK_LINE, "Content-Length: 0"),
        False,
        Parsed(((200, L),), b"", True, None),
    ),
    (
        "length-identical-list",
        "GET",
        rhead(OK_LINE, "Content-Length: 2, 2") + b"hi",
        False,
        Parsed(((200, L),), b"hi", True, None),
    ),
    (
        "chunked",
        "GET",
        rhead(OK_LINE, "Transfer-Encoding: chunked") + CHUNKED_BODY,
        False,
        Parsed(((200, C),), b"hello world", True, None),
    ),
    (
        "chunked-case",
        "GET",
        rhead(OK_LINE, "transfer-encoding: Chunked") + b"0\r\n\r\n",
        False,
        Parsed(((200, C),), b"", True, None),
    ),
    (
        "close-delimited",
        "GET",
        rhead(OK_LINE) + b"until the end",
        True,
        Parsed(((200, X),), b"until the end", True, None),
    ),
    (
        "close-delimited-open",
        "GET",
        rhead(OK_LINE) + b"so far",
        False,
        Parsed(((200, X),), b"so far", False, None),
    ),
    (
        "http10-close",
        "GET",
        rhead("HTTP/1.0 200 OK") + b"old",
        True,
        Parsed(((200, X),), b"old", True, None),
    ),
    (
        "head-has-no-body",
        "HEAD",
        rhead(OK_LINE, "Content-Length: 100"),
        False,
        Parsed(((200, N),), b"", True, None),
    ),
    (
        "head-chunked-no-body",
        "HEAD",
        rhead(OK_LINE, "Transfer-Encoding: chunked"),
        False,
        Parsed(((200, N),), b"", True, None),
    ),
    (
        "204",
        "GET",
        rhead("HTTP/1.1 204 No Content", "Content-Length: 7"),
        False,
        Parsed(((204, N),), b"", True, None),
    ),
    (
        "304",
        "GET",
        rhead("HTTP/1.1 304 Not Modified", "Content-Length: 42"),
        False,
        Parsed(((304, N),), b"", True, None),
    ),
    (
        "100-then-200",
        "POST",
        rhead("HTTP/1.1 100 Continue") + rhead(OK_LINE, "Content-Length: 2") + b"ok",
        False,
        Parsed(((100, N), (200, L)), b"ok", True, None),
    ),
    (
        "103-then-200",
        "GET",
        rhead("HTTP/1.1 103 Early Hints", "Link: </a.css>") + rhead(OK_LINE, "Content-Length: 0"),
        False,
        Parsed(((103, N), (200, L)), b"", True, None),
    ),
    (
        "no-reason",
        "GET",
        rhead("HTTP/1.1 200", "Content-Length: 1") + b"x",
        False,
        Parsed(((200, L),), b"x", True, None),
    ),
    (
        "empty-reason",
        "GET",
        rhead("HTTP/1.1 200 ", "Content-Length: 1") + b"x",
        False,
        Parsed(((200, L),), b"x", True, None),
    ),
    (
        "bare-lf",
        "GET",
        b"HTTP/1.1 200 OK\nContent-Length: 1\n\nx",
        False,
        Parsed(((200, L),), b"x", True, None),
    ),
    (
        "obs-fold-replaced",
        "GET",
        rhead(OK_LINE, "X-A: one", " two", "Content-Length: 0"),
        False,
        Parsed(((200, L),), b"", True, None),
    ),
    # Errors: every one is a 502.
    (
        "cl-and-te",
        "GET",
        rhead(OK_LINE, "Content-Length: 5", "Transfer-Encoding: chunked"),
        False,
        Parsed((), b"", False, "Both Transfer-Encoding and Content-Length in response"),
    ),
    (
        "cl-invalid",
        "GET",
        rhead(OK_LINE, "Content-Length: five"),
        False,
        Parsed((), b"", False, "Invalid Content-Length in response"),
    ),
    (
        "cl-negative",
        "GET",
        rhead(OK_LINE, "Content-Length: -1"),
        False,
        Parsed((), b"", False, "Invalid Content-Length in response"),
    ),
    (
        "cl-conflicting",
        "GET",
        rhead(OK_LINE, "Content-Length: 5", "Content-Length: 6"),
        False,
        Parsed((), b"", False, "Invalid Content-Length in response"),
    ),
    (
        "te-gzip",
        "GET",
        rhead(OK_LINE, "Transfer-Encoding: gzip, chunked"),
        False,
        Parsed((), b"", False, "Unsupported transfer coding in response"),
    ),
    (
        "te-in-http10",
        "GET",
        rhead("HTTP/1.0 200 OK", "Transfer-Encoding: chunked"),
        False,
        Parsed((), b"", False, "Transfer-Encoding in an HTTP/1.0 response"),
    ),
    (
        "garbage",
        "GET",
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        False,
        Parsed((), b"", False, "Malformed status line"),
    ),
    (
        "http2",
        "GET",
        rhead("HTTP/2.0 200 OK"),
        False,
        Parsed((), b"", False, "Unsupported HTTP version in response"),
    ),
    (
        "two-digit-status",
        "GET",
        rhead("HTTP/1.1 99 Odd"),
        False,
        Parsed((), b"", False, "Malformed status line"),
    ),
    (
        "status-below-100",
        "GET",
        rhead("HTTP/1.1 099 Odd"),
        False,
        Parsed((), b"", False, "Invalid status code"),
    ),
    (
        "no-colon",
        "GET",
        rhead(OK_LINE, "Content-Length 5"),
        False,
        Parsed((), b"", False, "Malformed response header field"),
    ),
    (
        "space-before-colon",
        "GET",
        rhead(OK_LINE, "Content-Length : 5"),
        False,
        Parsed((), b"", False, "Malformed response header field"),
    ),
    (
        "ctl-in-value",
        "GET",
        rhead(OK_LINE, "X-A: a\x01b"),
        False,
        Parsed((), b"", False, "Invalid character in response header value"),
    ),
    (
        "fold-first",
        "GET",
        rhead(OK_LINE, " folded"),
        False,
        Parsed((), b"", False, "Line folding before the first header field"),
    ),
    (
        "closed-before-anything",
        "GET",
        b"",
        True,
        Parsed((), b"", False, "The backend closed the connection without a response"),
    ),
    (
        "closed-in-head",
        "GET",
        b"HTTP/1.1 200 OK\r\nContent-",
        True,
        Parsed((), b"", False, "The backend closed the connection inside the response head"),
    ),
    (
        "closed-in-length-body",
        "GET",
        rhead(OK_LINE, "Content-Length: 9") + b"abc",
        True,
        Parsed(
            ((200, L),), b"abc", False, "The backend closed the connection inside the response body"
        ),
    ),
    (
        "closed-in-chunk",
        "GET",
        rhead(OK_LINE, "Transfer-Encoding: chunked") + b"5\r\nab",
        True,
        Parsed(
            ((200, C),), b"ab", False, "The backend closed the connection inside the response body"
        ),
    ),
    (
        "bad-chunk-size",
        "GET",
        rhead(OK_LINE, "Transfer-Encoding: chunked") + b"x\r\n",
        False,
        Parsed(((200, C),), b"", False, "Invalid chunk size in response"),
    ),
    (
        "no-crlf-after-chunk",
        "GET",
        rhead(OK_LINE, "Transfer-Encoding: chunked") + b"1\r\naXY",
        False,
        Parsed(((200, C),), b"a", False, "Missing CRLF after chunk data in response"),
    ),
]


@pytest.mark.parametrize(
    ("method", "data", "eof", "expected"),
    [pytest.param(m, d, e, x, id=i) for i, m, d, e, x in RESPONSE_CASES],
)
@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_response_parser_table(
    method: str, data: bytes, eof: bool, expected: Parsed, mode: str
) -> None:
    pieces = bytewise(data) if mode == "bytewise" else ([data] if data else [])
    parsed, _, _ = parse_response(pieces, method, eof=eof)
    assert parsed == expected


def test_response_head_keeps_case_order_and_repetition() -> None:
    data = rhead(
        OK_LINE,
        "Set-Cookie: a=1",
        "X-Custom: One",
        "set-cookie: b=2",
        "X-A: one",
        " two",
        "Content-Length: 0",
    )
    for pieces in ([data], bytewise(data)):
        _, heads, _ = parse_response(pieces)
        (response,) = heads
        assert response.headers == (
            ("Set-Cookie", "a=1"),
            ("X-Custom", "One"),
            ("set-cookie", "b=2"),
            ("X-A", "one two"),
            ("Content-Length", "0"),
        )
        assert response.header("SET-COOKIE") == "a=1, b=2"
        assert response.header("missing") is None
        assert (response.version, response.reason, response.content_length) == ("1.1", "OK", 0)


def test_response_parser_101_hands_over_the_rest() -> None:
    data = (
        rhead("HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade")
        + b"\x81\x02hi"
    )
    parser = ResponseParser("GET")
    parser.feed(data)
    event = parser.next_event()
    assert isinstance(event, ResponseHead) and event.status == 101 and event.informational
    assert parser.next_event() is None
    assert parser.take_buffered() == b"\x81\x02hi"


def test_response_parser_ignores_bytes_after_the_message() -> None:
    parser = ResponseParser("GET")
    parser.feed(rhead(OK_LINE, "Content-Length: 1") + b"xEXTRA")
    events = [parser.next_event() for _ in range(4)]
    assert events[1] == BodyData(b"x")
    assert events[2] == EndOfMessage()
    assert events[3] is None


def test_response_parser_limits() -> None:
    small = Limits(max_request_line=20, max_header_bytes=40, max_header_fields=2)
    cases = [
        (rhead("HTTP/1.1 200 " + "O" * 10), "Status line too long"),
        (rhead(OK_LINE, "X-A: " + "a" * 36), "Response header fields too large"),
        (rhead(OK_LINE, "A: 1", "B: 2", "C: 3"), "Too many response header fields"),
        (b"HTTP/1.1 200 OK\r\n" + b"X" * 200, "Response head too large"),
    ]
    for data, reason in cases:
        for pieces in ([data], bytewise(data)):
            # Where the input is cut never changes the answer.
            assert parse_response(pieces, limits=small)[0].error == reason


def test_response_head_validates_itself() -> None:
    with pytest.raises(ValueError, match="status"):
        ResponseHead(42, "", "1.1", (), Framing.NONE)
    with pytest.raises(ValueError, match="content_length"):
        ResponseHead(200, "", "1.1", (), Framing.LENGTH)


def test_gateway_statuses_have_reasons() -> None:
    assert reason_phrase(502) == "Bad Gateway"
    assert reason_phrase(504) == "Gateway Timeout"


def _head_end_by_scanning(buf: bytes, start: int) -> int:
    """RFC 9112 §2.2's head end, found one line feed at a time: the first LF followed
    by LF or CRLF (a bare LF may end a line)."""
    index = start
    while (index := buf.find(b"\n", index)) >= 0:
        index += 1
        if buf.startswith(b"\n", index):
            return index + 1
        if buf.startswith(b"\r\n", index):
            return index + 2
    return -1


@given(
    st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"\r\n\r\n", b": "]), max_size=20),
    st.integers(0, 40),
)
def test_the_head_end_fast_path_agrees_with_scanning_line_by_line(
    pieces: list[bytes], start: int
) -> None:
    buf = bytearray(b"".join(pieces))
    start = min(start, len(buf))
    assert find_head_end(buf, start) == _head_end_by_scanning(bytes(buf), start)


# -- combining field lines (RFC 9110 §5.3) ------------------------------------------
@pytest.mark.parametrize(
    ("fields", "combined"),
    [
        ([], []),
        ([("X-A", "1"), ("X-B", "2")], [("X-A", "1"), ("X-B", "2")]),
        ([("Link", "<a>"), ("X-B", "2"), ("link", "<b>")], [("Link", "<a>, <b>"), ("X-B", "2")]),
        ([("Vary", ""), ("Vary", "Origin")], [("Vary", ", Origin")]),
        (
            [("X-A", "1"), ("Set-Cookie", "a=1"), ("X-B", "2"), ("set-cookie", "b=2")],
            [("X-A", "1"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X-B", "2")],
        ),
    ],
)
def test_combine_fields(fields: list[tuple[str, str]], combined: list[tuple[str, str]]) -> None:
    assert combine_fields(fields) == combined


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["A", "a", "B", "Set-Cookie", "SET-COOKIE"]), st.text(max_size=4)
        ),
        max_size=10,
    )
)
def test_combine_fields_keeps_every_value_in_order(fields: list[tuple[str, str]]) -> None:
    combined = combine_fields(fields)
    names = [name.lower() for name, _ in combined if name.lower() != "set-cookie"]
    assert len(names) == len(set(names))  # one line per name, Set-Cookie excepted
    for key in {name.lower() for name, _ in fields}:
        values = [value for name, value in fields if name.lower() == key]
        got = [value for name, value in combined if name.lower() == key]
        assert got == (values if key == "set-cookie" else [", ".join(values)])
