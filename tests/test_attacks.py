"""Attack regression suite: every shape that has hit a peer, over real sockets.

Each test names the CVE or advisory its shape comes from. Where no identifier exists
(or we are not sure of one) the project and the advisory's title are named instead.
Every test runs once per worker model: the session ``server`` (the conftest site) where
that site suffices, else ``hostile``, a server over a site of hostile names and
symlinks with 1-second header and keep-alive timeouts.

Every response is framed by h11 (:func:`frame_all`), so a wrong Content-Length, a
second response after ``Connection: close`` or an injected header line fails the test
as surely as a wrong status. After each test the servers it used must not have printed
a traceback or an "internal error".
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

import h11
import pytest

from conftest import (
    H11Client,
    Response,
    Server,
    build_site,
    recv_until_closed,
    start_server,
)

TIMEOUT = 5.0
HEADER_TIMEOUT = 1.0  # the hostile server's --header-timeout and --keepalive-timeout
SMALL = b"0123456789" * 100
WS_PATH = "/__sitepeek__/ws"
# RFC 3986 pchar characters a server may leave unencoded in a path segment.
PCHAR = "!$&'()*+,;=:@-._~"
# Bytes that only files the attacks must never reach contain.
SECRETS = (b"outside\n", b"[core]", b"hidden\n", b"root:x:0:0")


# -- servers -----------------------------------------------------------------------------
def build_hostile_site(root: Path) -> Path:
    """The conftest site plus hostile names and symlinks that leave the root."""
    build_site(root)
    outside = root.parent / (root.name + "-outside")
    # Directories whose names carry what a Location header must never carry raw.
    for name in ("cr\r\nSet-Cookie: injected=1", "ff\x0cdir", "tab\tdir", "del\x7fdir"):
        (root / name).mkdir()
    # "/\t/evil.com" and "/\n/evil.com": browsers drop tabs and newlines from URLs
    # (WHATWG URL), so a raw one in a Location would turn it into "//evil.com".
    for name in ("\t", "\n", "\x0c"):
        (root / name / "evil.com").mkdir(parents=True)
    # Names that are markup: listed, and redirected to.
    (root / '"><svg onload=alert(1)>').mkdir()
    xss = root / "xss"
    xss.mkdir()
    for name in XSS_NAMES:
        (xss / name).write_text("x\n")
    # Symlinks leaving the root, in a directory without an index (so it is listed).
    links = root / "links"
    links.mkdir()
    (links / "esc_out").symlink_to(outside)
    (links / "esc_up").symlink_to("../..")  # relative: links/../.. is the root's parent
    (links / "esc_etc").symlink_to("/etc")
    (links / "esc_slash").symlink_to("/")
    (links / "esc_file").symlink_to(outside / "secret.txt")
    (links / "esc_loop").symlink_to("esc_loop")
    (links / "esc_dangling").symlink_to(root / "does-not-exist")
    (links / "ok_in").symlink_to("../sub")
    (links / "ok_file.txt").symlink_to("../small.txt")
    nested = root / "deep" / "er"
    nested.mkdir(parents=True)
    (nested / "esc_up").symlink_to("../../..")
    return root


XSS_NAMES = (
    "<img src=x onerror=alert(1)>",
    '"><script>alert(1)',
    "'><svg onload=alert(2)>",
    "javascript:alert(3)",
    "&lt;pre-escaped&gt;",
)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, worker_model: str) -> Iterator[Server]:
    root = tmp_path_factory.mktemp(f"hostile-{worker_model}") / "root"
    root.mkdir()
    build_hostile_site(root)
    timeout = str(HEADER_TIMEOUT)
    srv = start_server(
        root, worker_model, "--header-timeout", timeout, "--keepalive-timeout", timeout
    )
    yield srv
    code = srv.stop()
    assert code == 0, srv.stderr_text()
    assert_quiet(srv)


def assert_quiet(srv: Server) -> None:
    text = srv.stderr_text()
    assert "Traceback" not in text, text
    assert "internal error" not in text, text


@pytest.fixture(autouse=True)
def _no_tracebacks(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, the servers it used have logged no bug."""
    yield
    for name in ("server", "hostile"):
        if name in request.fixturenames:
            # (A line still in the pipe is caught by the fixture's own teardown.)
            assert_quiet(request.getfixturevalue(name))


# -- wire helpers ------------------------------------------------------------------------
def head(
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    *,
    host: str | None = "127.0.0.1",
    close: bool = True,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def frame_all(data: bytes, methods: Sequence[str] = ("GET",)) -> list[Response]:
    """Frame every response in ``data`` (a whole connection's bytes) with h11.

    The i-th response answers a request with ``methods[i]`` (the last one repeats).
    Nothing may follow a response that closes the connection, and the bytes must end
    on a response boundary.
    """
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    conn.receive_data(b"")
    responses: list[Response] = []
    while True:
        pending, _ = conn.trailing_data
        if not pending and conn.their_state in (h11.IDLE, h11.MUST_CLOSE, h11.CLOSED):
            break
        assert conn.their_state is h11.IDLE, (
            f"bytes after a response that closed the connection: {pending[:200]!r}"
        )
        method = methods[min(len(responses), len(methods) - 1)]
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        head_event: h11.Response | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                head_event = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"incomplete response: {event!r}, {bytes(body[:200])!r}")
        assert head_event is not None
        raw = [(k.decode(), v.decode("latin-1")) for k, v in head_event.headers]
        headers: dict[str, str] = {}
        for k, v in raw:
            key = k.lower()
            headers[key] = v if key not in headers else f"{headers[key]}, {v}"
        responses.append(Response(head_event.status_code, headers, bytes(body), raw))
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
    return responses


def exchange(
    srv: Server, data: bytes, methods: Sequence[str] = ("GET",), timeout: float = TIMEOUT
) -> list[Response]:
    """Send ``data``, read until the server closes, frame it all."""
    with srv.connect(timeout) as sock:
        sock.sendall(data)
        raw = recv_until_closed(sock)
    return frame_all(raw, methods)


def one(srv: Server, data: bytes, method: str = "GET") -> Response:
    """The single response to ``data``; the server must close after it."""
    responses = exchange(srv, data, (method,))
    assert len(responses) == 1, [r.status for r in responses]
    return responses[0]


def get(srv: Server, target: str, headers: dict[str, str] | None = None) -> Response:
    return one(srv, head("GET", target, headers))


def assert_closing(response: Response, *statuses: int) -> None:
    assert response.status in statuses, (response.status, response.body[:300])
    assert response.header("connection") == "close", response.raw_headers


def assert_nothing_leaked(response: Response) -> None:
    for secret in SECRETS:
        assert secret not in response.body, (response.status, response.body[:300])


def assert_safe_location(location: str) -> None:
    """A redirect target that stays on this server, with no control characters."""
    assert not re.search(r"[\x00-\x20\x7f]", location), repr(location)
    assert location.startswith("/"), location
    assert not location.startswith(("//", "/\\")), location
    # What a browser does first (WHATWG URL): drop tab/newline, "\" is "/" for http.
    browser = re.sub(r"[\t\n\r]", "", location).replace("\\", "/")
    assert urlsplit(urljoin("http://127.0.0.1:8000/a/b", browser)).netloc == "127.0.0.1:8000"
    # The path is percent-encoded: RFC 3986 characters only.
    path = location.split("?", 1)[0]
    assert re.fullmatch(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*", path), path


# -- open redirect -------------------------------------------------------------------------
# CVE-2021-28861 (CPython http.server, bpo-43223 / gh-87389): "//evil.com/%2f.." hit a
# directory redirect whose Location "//evil.com/%2f../" browsers read as another host.
# Same shape: CVE-2015-1164 (serve-static, "open redirect when mounted at root") and
# CVE-2018-14574 (Django CommonMiddleware APPEND_SLASH open redirect).
@pytest.mark.parametrize(
    "target",
    [
        "//evil.com",
        "//evil.com/",
        "///evil.com",
        "////evil.com",
        "//evil.com/..%2f",
        "//evil.com/%2f..",
        "//evil.com/%2f%2e%2e",
        "//evil.com/%2e%2e",
        "//evil.com/..",
        "//evil.com?next=1",
        "/%2fevil.com",
        "/%2f%2fevil.com",
        "/%5cevil.com",
        "/\\evil.com",
        "/\\/evil.com",
        "/.//evil.com",
        "/sub/..//evil.com",
        "//evil.com/%2e%2e%2f",
        "//evil.com%2f%2e%2e",
    ],
)
def test_double_slash_open_redirect(server: Server, target: str) -> None:
    response = get(server, target)
    location = response.header("location")
    if 300 <= response.status < 400:
        assert location is not None
        assert_safe_location(location)
    else:
        assert location is None
        assert response.status in (200, 400, 404), response.status


def test_double_slash_targets_do_reach_a_directory_redirect(server: Server) -> None:
    """The shapes above are exercised against a real redirect, not only 404s."""
    response = get(server, "//evil.com")
    assert response.status == 301
    assert response.header("location") == "/evil.com/"


# -- CRLF, form feed, tab in a redirect ---------------------------------------------------------
# CWE-113 HTTP response splitting: a "%0d%0a" decoded into a Location header adds header
# lines (e.g. Set-Cookie) or a second response. Form feed and other blanks: CVE-2023-24329
# (CPython urllib.parse, "urlsplit blocklist bypass via leading blank characters"); tab
# and newline are dropped from URLs by browsers (WHATWG URL), so "/\t/evil.com" becomes
# "//evil.com" (the CVE-2021-28861 redirect again).
@pytest.mark.parametrize(
    ("name", "rest"),
    [
        ("cr\r\nSet-Cookie: injected=1", ""),
        ("ff\x0cdir", ""),
        ("tab\tdir", ""),
        ("del\x7fdir", ""),
        ("\t", "/evil.com"),
        ("\n", "/evil.com"),
        ("\x0c", "/evil.com"),
    ],
    ids=["crlf", "form-feed", "tab", "del", "tab-slash", "lf-slash", "ff-slash"],
)
def test_control_characters_never_reach_a_location(hostile: Server, name: str, rest: str) -> None:
    target = "/" + quote(name, safe=PCHAR) + rest
    response = get(hostile, target)
    assert response.status == 301, (target, response.status)
    location = response.header("location")
    assert location is not None
    assert_safe_location(location)
    assert location == target + "/"  # percent-encoded, exactly as the directory's URL
    assert "set-cookie" not in response.headers
    assert b"<svg" not in response.body


@pytest.mark.parametrize(
    "query",
    ["%0d%0aSet-Cookie:%20injected=1", "%0aX-Injected:1", "%0c%0c", "a=%0d%0a%0d%0a<html>"],
)
def test_encoded_crlf_in_a_query_stays_encoded_in_the_location(server: Server, query: str) -> None:
    response = get(server, f"/sub?{query}")
    assert response.status == 301
    location = response.header("location")
    assert location == f"/sub/?{query}"
    assert_safe_location(location)
    assert "set-cookie" not in response.headers
    assert "x-injected" not in response.headers


@pytest.mark.parametrize(
    "target",
    [b"/sub\r\nSet-Cookie: injected=1", b"/sub\rX: 1", b"/sub\x0c", b"/sub\x0b", b"/s\tub"],
    ids=["crlf", "cr", "ff", "vt", "tab"],
)
def test_raw_control_characters_in_a_target_are_400(server: Server, target: bytes) -> None:
    data = b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    response = one(server, data)
    assert_closing(response, 400)
    assert "set-cookie" not in response.headers
    assert "location" not in response.headers


# -- "#" and NUL in the request target --------------------------------------------------------
# Vite CVE-2025-32395 ("server.fs.deny bypass with an invalid request-target"): a raw "#"
# made the router and the file check see different paths. NUL: the classic null-byte
# truncation (CWE-158); in Python an unchecked NUL reaches open() as a ValueError (a 500).
@pytest.mark.parametrize(
    "target",
    [
        b"/index.html#",
        b"/.git/config#/../../index.html",
        b"/.secret#.txt",
        b"/#/../.git/config",
        b"/small.txt\x00.html",
        b"/.secret\x00",
    ],
)
def test_raw_fragment_or_nul_in_the_target_is_400(server: Server, target: bytes) -> None:
    response = one(server, b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert_closing(response, 400)
    assert_nothing_leaked(response)
    assert SMALL not in response.body


@pytest.mark.parametrize(
    ("target", "statuses"),
    [
        ("/small.txt%00", (400,)),
        ("/small.txt%00.html", (400,)),
        ("/.secret%00", (400, 404)),
        ("/%00/../.git/config", (400, 404)),
        ("/.git%00/config", (400, 404)),
        ("/small.txt%23", (404,)),
        ("/.git/config%23", (404,)),
        ("/.secret%23/..", (200, 404)),  # "/.secret#/.." is "/" (index.html)
    ],
)
def test_encoded_fragment_or_nul_never_reaches_a_file(
    server: Server, target: str, statuses: tuple[int, ...]
) -> None:
    response = get(server, target)
    assert response.status in statuses, (target, response.status)
    assert_nothing_leaked(response)
    assert SMALL not in response.body


# -- traversal: double encoding, backslashes, overlong UTF-8 -----------------------------------
# CVE-2001-0333 (IIS "double decode": "..%255c.."), CVE-2000-0884 (IIS Unicode traversal
# with overlong UTF-8 "%c0%af"), the Windows backslash separator ("..%5c", raw "\\"),
# and Tomcat/Spring's "..;" path parameter (e.g. CVE-2020-1938 deployments' "..;/").
TRAVERSALS = [
    "/../{out}/secret.txt",
    "/%2e%2e/{out}/secret.txt",
    "/%2E%2E%2F{out}%2Fsecret.txt",
    "/.%2e/{out}/secret.txt",
    "/%2e./{out}/secret.txt",
    "/sub/../../{out}/secret.txt",
    "/sub/%2e%2e/%2e%2e/{out}/secret.txt",
    "/%252e%252e%252f{out}%252fsecret.txt",
    "/%252e%252e/{out}/secret.txt",
    "/sub/..%252f..%252f{out}%252fsecret.txt",
    "/..%5c{out}%5csecret.txt",
    "/..%255c{out}%255csecret.txt",
    "/sub/..%5c..%5c{out}%5csecret.txt",
    "/..\\{out}\\secret.txt",
    "/sub\\..\\..\\{out}\\secret.txt",
    "/%c0%ae%c0%ae/{out}/secret.txt",
    "/%c0%ae%c0%ae%c0%af{out}%c0%afsecret.txt",
    "/%c0%2e%c0%2e/{out}/secret.txt",
    "/%e0%80%ae%e0%80%ae/{out}/secret.txt",
    "/%f0%80%80%ae%f0%80%80%ae/{out}/secret.txt",
    "/%uff0e%uff0e/{out}/secret.txt",
    "/%ef%bc%8e%ef%bc%8e/{out}/secret.txt",
    "/..;/{out}/secret.txt",
    "/sub/..;/..;/{out}/secret.txt",
    "/link-out/secret.txt",
    "/link-out/../{out}/secret.txt",
    "/../../../../../../etc/passwd",
    "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/..%252f..%252f..%252f..%252f..%252fetc%252fpasswd",
    "/%c0%ae%c0%ae/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
    "/....//....//....//etc/passwd",
    "/.../.../.../etc/passwd",
]


@pytest.mark.parametrize("pattern", TRAVERSALS)
def test_traversal_never_leaves_the_root(server: Server, pattern: str) -> None:
    target = pattern.format(out=server.root.name + "-outside")
    response = one(
        server,
        b"GET " + target.encode() + b" HTTP/1.1\r\nHost: x.localhost\r\nConnection: close\r\n\r\n",
    )
    assert response.status in (400, 403, 404), (target, response.status)
    assert_nothing_leaked(response)


@pytest.mark.parametrize(
    "target", ["/%c0%ae%c0%ae/", "/%c0%ae/", "/sub/%c0%ae%c0%ae/index.html", "/%ed%a0%80"]
)
def test_overlong_and_surrogate_utf8_are_400(server: Server, target: str) -> None:
    # CVE-2000-0884: strict UTF-8 means "%c0%ae" is not "." but an error.
    response = get(server, target)
    assert response.status == 400, (target, response.status)


# -- trailing dots and spaces, dotfile look-alikes ----------------------------------------------
# Apache Tomcat CVE-2017-12615 (Windows: "x.jsp%20" and "x.jsp/" named another file) and
# the Windows trailing dot/space name normalisation in general; ".git./config" is the
# same trick against a dotfile rule (e.g. nginx "location ~ /\.git" bypasses).
@pytest.mark.parametrize(
    "target",
    [
        "/index.html.",
        "/index.html%20",
        "/index.html%2e",
        "/index.html%20%20",
        "/index.html.%20",
        "/index.html%09",
        "/index.html::$DATA",
        "/small.txt.",
        "/small.txt%20",
        "/small.txt/",
        "/small.txt/.",
        "/.git./config",
        "/.git%20/config",
        "/.git%2e/config",
        "/.git%2f/config",
        "/.git%5cconfig",
        "/.GIT/config",
        "/.git/config",
        "/.git/",
        "/.git",
        "/.secret",
        "/.secret.",
        "/.secret%20",
        "/%2esecret",
        "/%2Esecret",
        "/sub/../.secret",
        "/.well-known/../.secret",
        "/.well-known/%2e%2e/.git/config",
        "/.well-known./security.txt",
        "/.well-known%20/security.txt",
        "/sub/.%2e/.git/config",
    ],
)
def test_trailing_dot_and_space_names_reach_nothing(server: Server, target: str) -> None:
    response = get(server, target)
    assert response.status in (400, 404), (target, response.status, response.body[:200])
    assert_nothing_leaked(response)
    assert SMALL not in response.body
    assert b"<h1>Home</h1>" not in response.body


# -- symlinks leaving the root ------------------------------------------------------------------
# aiohttp CVE-2024-23334 ("static routes with follow_symlinks=True allow directory
# traversal"); the realpath containment check must hold for every link shape.
@pytest.mark.parametrize(
    "target",
    [
        "/links/esc_out/secret.txt",
        "/links/esc_out/",
        "/links/esc_out",
        "/links/esc_up/{out}/secret.txt",
        "/links/esc_up/",
        "/links/esc_etc/passwd",
        "/links/esc_etc/",
        "/links/esc_slash/etc/passwd",
        "/links/esc_slash/",
        "/links/esc_file",
        "/links/esc_loop",
        "/links/esc_loop/",
        "/links/esc_dangling",
        "/deep/er/esc_up/{out}/secret.txt",
        "/deep/er/esc_up/",
        "/link-out/",
        "/link-file-out.txt",
    ],
)
def test_symlinks_leaving_the_root_are_404(hostile: Server, target: str) -> None:
    target = target.format(out=hostile.root.name + "-outside")
    response = get(hostile, target)
    assert response.status == 404, (target, response.status, response.body[:200])
    assert "location" not in response.headers
    assert_nothing_leaked(response)


def test_listing_hides_symlinks_leaving_the_root(hostile: Server) -> None:
    for accept in ("text/html", "application/json"):
        response = get(hostile, "/links/", {"Accept": accept})
        assert response.status == 200
        assert b"esc_" not in response.body, response.body
        assert b"ok_in" in response.body
        assert b"ok_file.txt" in response.body
    inside = get(hostile, "/links/ok_file.txt")
    assert inside.status == 200
    assert inside.body == SMALL


# -- XSS through names ------------------------------------------------------------------------
# serve-index CVE-2015-8856 (XSS via file names in directory listings); the listing must
# escape the text and percent-encode every href.
class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.text: list[str] = []
        self.tags: list[str] = []
        self.handlers: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append(name)
            if tag == "a" and name == "href" and value is not None:
                self.hrefs.append(value)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_listing_escapes_markup_in_file_names(hostile: Server) -> None:
    response = get(hostile, "/xss/", {"Accept": "text/html"})
    assert response.status == 200
    assert response.header("content-type") == "text/html; charset=utf-8"
    page = response.body.decode()
    for name in XSS_NAMES:
        assert html.escape(name, quote=False) in page or html.escape(name) in page, name
    for raw in ("<img", "<svg", "<script>alert", "onerror=alert(1)>", "onload=alert(2)>"):
        assert raw not in page, raw
    parser = _Links()
    parser.feed(page)
    assert "img" not in parser.tags and "svg" not in parser.tags
    assert not parser.handlers, parser.handlers
    # The page's own script is the reload client; no name injected another one.
    assert parser.tags.count("script") <= 1
    text = "".join(parser.text)
    for name in XSS_NAMES:
        assert name in text, name  # shown as text, exactly
    targets = {h for h in parser.hrefs if h not in ("../", "/")}
    for href in targets:
        assert re.fullmatch(r"[A-Za-z0-9\-._~%/]+", href), href  # no scheme, no markup
        assert urlsplit(urljoin("http://127.0.0.1/xss/", href)).netloc == "127.0.0.1"
    for name in XSS_NAMES:
        assert quote(name, safe="") in targets or quote(name, safe="") + "/" in targets, name


def test_json_listing_carries_names_exactly(hostile: Server) -> None:
    response = get(hostile, "/xss/", {"Accept": "application/json"})
    assert response.status == 200
    assert (response.header("content-type") or "").startswith("application/json")
    names = json.dumps(json.loads(response.body))
    for name in XSS_NAMES:
        assert json.dumps(name) in names, name


# send CVE-2024-43799 / serve-static CVE-2024-43800 / express CVE-2024-43796: a
# redirect's HTML body echoed the path, so "<script>" in a URL ran in the page.
def test_redirect_body_escapes_a_markup_directory_name(hostile: Server) -> None:
    name = '"><svg onload=alert(1)>'
    target = "/" + quote(name, safe=PCHAR)
    response = get(hostile, target)
    assert response.status == 301
    location = response.header("location")
    assert location == target + "/"
    assert_safe_location(location)
    assert b"<svg" not in response.body
    assert b"&lt;svg" in response.body or b"%3Csvg" in response.body
    parser = _Links()
    parser.feed(response.body.decode())
    assert "svg" not in parser.tags and not parser.handlers
    assert parser.hrefs == [location]
    # The listing it redirects to names the directory in its title and heading.
    listing = get(hostile, location, {"Accept": "text/html"})
    assert listing.status == 200
    assert b"<svg" not in listing.body
    parser = _Links()
    parser.feed(listing.body.decode())
    assert "svg" not in parser.tags and not parser.handlers


@pytest.mark.parametrize(
    "query",
    ['"><script>alert(1)</script>', "'><svg/onload=alert(1)>", "<img/src/onerror=alert(1)>"],
)
def test_redirect_body_escapes_the_echoed_query(server: Server, query: str) -> None:
    # Same advisories: the query is carried into the Location and so into the body.
    data = f"GET /sub?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    response = one(server, data.encode())
    assert response.status in (301, 400)
    if response.status == 301:
        location = response.header("location") or ""
        assert not re.search(r"[\x00-\x20\x7f]", location)
        assert location.startswith("/sub/")
    parser = _Links()
    parser.feed(response.body.decode())
    assert "script" not in parser.tags
    assert "svg" not in parser.tags and "img" not in parser.tags
    assert not parser.handlers
    assert b"<script>alert" not in response.body


# -- Range amplification ------------------------------------------------------------------------
# CVE-2011-3192 (Apache "Apache Killer"): "Range: bytes=0-,5-0,5-1,..." made the server
# build a multipart body many times larger than the file.
def _check_range_response(response: Response, data: bytes) -> None:
    assert response.status in (200, 206), response.status
    assert len(response.body) <= len(data)
    assert "multipart" not in (response.header("content-type") or "")
    if response.status == 200:
        assert response.body == data
    else:
        match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", response.header("content-range") or "")
        assert match, response.header("content-range")
        start, end, size = map(int, match.groups())
        assert size == len(data)
        assert response.body == data[start : end + 1]


@pytest.mark.parametrize(
    "spec",
    [
        ",".join(["0-"] * 1000),
        "0-," + ",".join("5-" + str(i) for i in range(5, 1300)),
        ",".join(["-" + str(1 << 22)] * 1000),
        ",".join(f"{i}-{i}" for i in range(1000)),
        ",".join(f"{i * 2}-{i * 2}" for i in range(1000)),
    ],
    ids=["0-x1000", "apache-killer", "suffix-x1000", "adjacent-bytes-x1000", "gaps-x1000"],
)
@pytest.mark.parametrize("target", ["/large.bin", "/small.txt"])
def test_range_amplification(server: Server, target: str, spec: str) -> None:
    data = (server.root / target[1:]).read_bytes()
    response = one(server, head("GET", target, {"Range": f"bytes={spec}"}))
    _check_range_response(response, data)


@pytest.mark.parametrize(
    "spec",
    ["0-1000000,500000-1500000", "0-99,50-149,100-199", "0-,0-", "-1048576,0-1048575", "1-1,1-1"],
)
def test_overlapping_ranges(server: Server, spec: str) -> None:
    # CVE-2011-3192 again: overlapping ranges are the amplification's other half
    # (RFC 9110 §14.2 lets a server coalesce them or ignore the field).
    data = (server.root / "large.bin").read_bytes()
    response = one(server, head("GET", "/large.bin", {"Range": f"bytes={spec}"}))
    _check_range_response(response, data)


# -- request smuggling ----------------------------------------------------------------------
# CL+TE: RFC 9112 §6.3 item 3; PortSwigger's classic CL.TE/TE.CL shapes; Waitress
# CVE-2019-16786 (a Transfer-Encoding other than "chunked" fell back to Content-Length),
# gunicorn CVE-2024-1135 ("request smuggling via improper validation of
# Transfer-Encoding"), Netty CVE-2020-7238 (whitespace before Transfer-Encoding), Go
# CVE-2019-16276 (space before the colon), Node.js llhttp CVE-2022-32215 (multi-line
# Transfer-Encoding). The smuggled request must never be answered.
SMUGGLED = b"GET /small.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _smuggle(fields: str, body: bytes = b"0\r\n\r\n") -> bytes:
    return b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + fields.encode() + b"\r\n" + body + SMUGGLED


@pytest.mark.parametrize(
    "fields",
    [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Content-Length: 50\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 5\r\nTransfer-Encoding: xchunked\r\n",
        "Content-Length: 5\r\nTransfer-Encoding:  chunked\r\n",
        "Content-Length: 5\r\nTransfer-Encoding: chunked, identity\r\n",
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 5\r\nTransfer-Encoding: identity\r\n",
        "Content-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n",
        "Content-Length: 5\r\nTransfer-Encoding: CHUNKED\r\n",
    ],
    ids=[
        "cl-te",
        "te-cl",
        "cl-long-te",
        "cl0-te",
        "xchunked",
        "leading-space",
        "chunked-identity",
        "duplicate-te",
        "identity",
        "gzip-chunked",
        "uppercase",
    ],
)
def test_content_length_with_transfer_encoding_is_400_and_close(
    server: Server, fields: str
) -> None:
    response = one(server, _smuggle(fields), "POST")
    assert_closing(response, 400)
    assert SMALL not in response.body


@pytest.mark.parametrize(
    ("fields", "chunked_ok"),
    [
        ("Transfer-Encoding: xchunked\r\n", False),
        ("Transfer-Encoding: chunked, identity\r\n", False),
        ("Transfer-Encoding: identity\r\n", False),
        ("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", False),
        ("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", False),
        ("Transfer-Encoding: chunked;x=1\r\n", False),
        ("Transfer-Encoding: \x0bchunked\r\n", False),
        ("Transfer-Encoding : chunked\r\n", False),
        ("Transfer-Encoding\t: chunked\r\n", False),
        ("X: y\r\n Transfer-Encoding: chunked\r\n", False),
        ("X: y\r\n\tTransfer-Encoding: chunked\r\n", False),
        ("Transfer-Encoding:\r\n chunked\r\n", False),
        ("Transfer-Encoding:  chunked\r\n", True),
        ("Transfer-Encoding: chunked \r\n", True),
        ("Transfer-Encoding: CHUNKED\r\n", True),
    ],
    ids=[
        "xchunked",
        "chunked-identity",
        "identity",
        "duplicate",
        "chunked-then-identity",
        "parameter",
        "vertical-tab",
        "space-before-colon",
        "tab-before-colon",
        "obs-fold-name",
        "obs-fold-tab",
        "obs-fold-value",
        "leading-space",
        "trailing-space",
        "uppercase",
    ],
)
def test_obfuscated_transfer_encoding(server: Server, fields: str, chunked_ok: bool) -> None:
    """Either rejected (400/501 and close, one response) or read as chunked exactly.

    The body "5;HELLO" style chunk hides a request line: a server reading the framing
    any other way answers the smuggled GET.
    """
    body = b"5\r\nHELLO\r\n0\r\n\r\n"
    responses = exchange(
        server, _smuggle(fields, body) + head("GET", "/empty.txt"), ("POST", "GET")
    )
    if chunked_ok:
        assert [r.status for r in responses] == [405, 200, 200], [r.status for r in responses]
        assert responses[1].body == SMALL
        assert responses[2].body == b""
    else:
        assert len(responses) == 1, [r.status for r in responses]
        assert_closing(responses[0], 400, 501)
        assert SMALL not in responses[0].body


ACCEPT, REJECT, EITHER = "accept", "reject", "either"


@pytest.mark.parametrize(
    ("fields", "verdict"),
    [
        ("Content-Length: +5\r\n", REJECT),
        ("Content-Length: -5\r\n", REJECT),
        ("Content-Length: 0x5\r\n", REJECT),
        ("Content-Length: 5.0\r\n", REJECT),
        ("Content-Length: 5 5\r\n", REJECT),
        ("Content-Length: 5\r\nContent-Length: 6\r\n", REJECT),
        ("Content-Length: 5, 6\r\n", REJECT),
        ("Content-Length: 5,\r\n", REJECT),
        ("Content-Length: \r\n", REJECT),
        ("Content-Length: 1_0\r\n", REJECT),
        ("Content-Length: \xb2\r\n", REJECT),  # "²": str.isdigit() is True, int() fails
        ("Content-Length: 99999999999999999999999\r\n", REJECT),
        ("Content-Length: 005\r\n", ACCEPT),
        ("Content-Length: 5\r\nContent-Length: 5\r\n", ACCEPT),
        ("Content-Length: 5, 5\r\n", ACCEPT),
        # 1*DIGIT allows any number of leading zeros; a length cap may refuse it (safe).
        ("Content-Length: 0000000000000000000000005\r\n", EITHER),
    ],
    ids=[
        "plus",
        "minus",
        "hex",
        "decimal",
        "two-numbers",
        "two-fields",
        "list-differs",
        "trailing-comma",
        "empty",
        "underscore",
        "superscript-two",
        "huge",
        "leading-zeros",
        "same-twice",
        "list-same",
        "many-leading-zeros",
    ],
)
def test_content_length_variants(server: Server, fields: str, verdict: str) -> None:
    # Waitress CVE-2022-24761 (int()-style lengths such as "+10" accepted) and
    # CVE-2019-16792 (two Content-Length fields); aiohttp's pure-Python parser had the
    # same int() leniency (CVE-2023-47627, "the Python HTTP parser is vulnerable to
    # request smuggling"). Either the length is exactly 5 or the request is refused.
    data = _smuggle(fields, b"HELLO") + head("GET", "/empty.txt")
    responses = exchange(server, data, ("POST", "GET"))
    statuses = [r.status for r in responses]
    if statuses == [405, 200, 200]:
        assert verdict in (ACCEPT, EITHER), statuses
        assert responses[1].body == SMALL  # exactly 5 body bytes were skipped
    else:
        assert verdict in (REJECT, EITHER), statuses
        assert statuses in ([400], [413]), statuses
        assert_closing(responses[0], 400, 413)


# -- header floods -------------------------------------------------------------------------
# Node.js CVE-2018-12121 ("Denial of Service with large HTTP headers") and CPython
# bpo-16037 (http.client / http.server read an unlimited number of header lines).
def test_101_header_fields_are_431(server: Server) -> None:
    fields = {f"X-F{i}": "v" for i in range(100)}  # + Host = 101
    response = one(server, head("GET", "/small.txt", fields, close=False))
    assert_closing(response, 431)


def test_100_header_fields_are_served(server: Server) -> None:
    fields = {f"X-F{i}": "v" for i in range(98)}  # + Host + Connection = 100
    response = one(server, head("GET", "/small.txt", fields))
    assert response.status == 200
    assert response.body == SMALL


@pytest.mark.parametrize("shape", ["one-field", "many-fields", "repeated-name"])
def test_header_section_over_64k_is_431(server: Server, shape: str) -> None:
    if shape == "one-field":
        extra = b"X-Big: " + b"a" * (64 * 1024 + 1) + b"\r\n"
    elif shape == "many-fields":
        extra = b"".join(b"X-F%d: %s\r\n" % (i, b"b" * 900) for i in range(75))
    else:
        extra = b"Cookie: " + b"c" * 30000 + b"\r\n" + b"Cookie: " + b"d" * 40000 + b"\r\n"
    data = b"GET /small.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra + b"\r\n"
    with server.connect(TIMEOUT) as sock:
        sender = threading.Thread(target=_send_quietly, args=(sock, data), daemon=True)
        sender.start()
        raw = recv_until_closed(sock)
        sender.join(TIMEOUT)
    (response,) = frame_all(raw)
    assert_closing(response, 431)


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send what the server may stop reading (it answers early and closes)."""
    with contextlib.suppress(OSError):
        sock.sendall(data)


def test_thousand_pipelined_requests_in_one_write(server: Server) -> None:
    """1000 tiny requests in one write: 1000 responses, in order, nothing else."""
    files = [("/small.txt", 200, SMALL), ("/data.json", 200, b'{"a": 1}\n')]
    files += [("/empty.txt", 200, b""), ("/missing-{i}", 404, None)]
    count = 1000
    requests = []
    expected = []
    for i in range(count):
        target, status, body = files[i % len(files)]
        requests.append(head("GET", target.format(i=i), close=i == count - 1))
        expected.append((status, body))
    data = b"".join(requests)
    with server.connect(15) as sock:
        sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
        sender.start()
        raw = recv_until_closed(sock)
        sender.join(TIMEOUT)
    responses = frame_all(raw)
    assert len(responses) == count
    for i, (response, (status, body)) in enumerate(zip(responses, expected, strict=True)):
        assert response.status == status, i
        if body is not None:
            assert response.body == body, i


# -- slowloris -------------------------------------------------------------------------------
# CVE-2007-6750 (Apache, "Slowloris"): a head trickled a byte at a time held a worker
# forever. The head must complete within --header-timeout, however steady the trickle.
def test_slowloris_trickle_gets_408_within_the_header_timeout(hostile: Server) -> None:
    with hostile.connect(TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sock.settimeout(0.1)
        started = time.monotonic()
        received = b""
        trickle = b"X-Slow: " + b"a" * 200
        for byte in trickle:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            try:
                received = sock.recv(65536)
            except TimeoutError:
                continue
            break
        elapsed = time.monotonic() - started
        sock.settimeout(TIMEOUT)
        received += recv_until_closed(sock)
    (response,) = frame_all(received)
    assert_closing(response, 408)
    assert HEADER_TIMEOUT * 0.8 <= elapsed <= HEADER_TIMEOUT + 1.5, elapsed


def test_slowloris_many_connections_do_not_block_a_fresh_one(hostile: Server) -> None:
    # Same CVE: 50 stalled heads must not keep a well-formed request from an answer.
    stalled = [hostile.connect(TIMEOUT) for _ in range(50)]
    try:
        for sock in stalled:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
        started = time.monotonic()
        response = get(hostile, "/small.txt")
        assert response.status == 200
        assert time.monotonic() - started < HEADER_TIMEOUT
        for sock in stalled:
            (late,) = frame_all(recv_until_closed(sock))
            assert_closing(late, 408)
    finally:
        for sock in stalled:
            sock.close()


# -- DNS rebinding and cross-site WebSocket -----------------------------------------------------
# webpack-dev-server CVE-2018-14732 ("missing origin validation": any site could read
# the dev server through DNS rebinding and its WebSocket) and Vite CVE-2025-24010 ("any
# website can send requests to the development server and read the response").
@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8000",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "evil.example.",
        "0.0.0.0",
        "2130706433",
        "0x7f000001",
        "[::ffff:8.8.8.8]",
        "evil.example, localhost",
    ],
)
def test_foreign_host_is_421(server: Server, host: str) -> None:
    response = one(server, head("GET", "/small.txt", host=host))
    assert_closing(response, 400, 421)
    assert SMALL not in response.body


@pytest.fixture(scope="session")
def exposed(site: Path, worker_model: str) -> Iterator[Server]:
    """A server bound to every interface (``--host 0.0.0.0``): no Host allowlist."""
    srv = start_server(site, worker_model, "--host", "0.0.0.0")
    yield srv
    code = srv.stop()
    assert code == 0, srv.stderr_text()
    assert_quiet(srv)


# RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any
# HTTP/1.1 request message that lacks a Host header field and to any request message
# that contains more than one Host header field line or a Host header field with an
# invalid field value." Host = uri-host [":" port] (RFC 3986 §3.2.2).
INVALID_HOSTS = ["a b", "a\tb", "a@b", "x:y:z", "a/b", "[::1", "", "localhost:80@evil.example"]


@pytest.mark.parametrize("bind", ["loopback", "all interfaces"])
@pytest.mark.parametrize("host", INVALID_HOSTS)
def test_invalid_host_is_400_in_every_bind_mode(
    server: Server, exposed: Server, bind: str, host: str
) -> None:
    srv = server if bind == "loopback" else exposed
    response = one(srv, head("GET", "/small.txt", host=host))
    assert_closing(response, 400)
    assert SMALL not in response.body
    # The same name in valid syntax: 421 on loopback (not ours), 200 on every interface.
    response = one(srv, head("GET", "/small.txt", host="evil.example:8000"))
    assert response.status == (421 if bind == "loopback" else 200)


def test_foreign_host_is_421_exactly(server: Server) -> None:
    for host in ("evil.example", "localhost.evil.example"):
        response = one(server, head("GET", "/small.txt", host=host))
        assert_closing(response, 421)


@pytest.mark.parametrize(
    "target",
    ["http://evil.example/small.txt", "http://evil.example:80/", "HTTP://EVIL.EXAMPLE/small.txt"],
)
def test_absolute_form_for_a_foreign_host_is_421(server: Server, target: str) -> None:
    # RFC 9112 §3.2.2: the absolute-form's authority overrides Host, so it is checked.
    response = one(server, head("GET", target, host="127.0.0.1"))
    assert_closing(response, 421)
    assert SMALL not in response.body


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST", "localhost.", "app.localhost", "127.0.0.1", "[::1]"]
)
def test_loopback_names_are_served(server: Server, host: str) -> None:
    response = one(server, head("GET", "/small.txt", host=f"{host}:{server.port}"))
    assert response.status == 200
    assert response.body == SMALL


def _upgrade(host: str, origin: str | None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    fields = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": "13",
    }
    if origin is not None:
        fields["Origin"] = origin
    return head("GET", WS_PATH, fields, host=host, close=False)


def _first_response(srv: Server, data: bytes) -> tuple[int, bytes]:
    with srv.connect(TIMEOUT) as sock:
        sock.sendall(data)
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    status = int(raw[9:12]) if raw.startswith(b"HTTP/1.1 ") else 0
    return status, raw


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "https://evil.example",
        "null",
        None,
        "http://127.0.0.1.evil.example:{port}",
        "http://127.0.0.1:{port}.evil.example",
        "http://localhost:{port}@evil.example",
        "file://",
    ],
)
def test_websocket_from_a_foreign_origin_is_403(server: Server, origin: str | None) -> None:
    # Cross-site WebSocket hijacking: the two advisories above, for the reload socket.
    origin = origin.format(port=server.port) if origin is not None else None
    status, raw = _first_response(server, _upgrade(f"127.0.0.1:{server.port}", origin))
    assert status == 403, raw[:300]
    assert b"Sec-WebSocket-Accept" not in raw


def test_websocket_from_the_own_origin_is_accepted(server: Server) -> None:
    host = f"127.0.0.1:{server.port}"
    status, raw = _first_response(server, _upgrade(host, f"http://{host}"))
    assert status == 101, raw[:300]


def test_websocket_through_dns_rebinding_is_refused(server: Server) -> None:
    """A rebound page is same-origin with its own Host: the Host check must apply too.

    evil.example resolves to 127.0.0.1; its page opens ws://evil.example:PORT/..., so
    the browser sends a matching Host and Origin. Only the Host check can refuse it.
    """
    host = f"evil.example:{server.port}"
    status, raw = _first_response(server, _upgrade(host, f"http://{host}"))
    assert status in (403, 421), raw[:300]


# -- protocol confusion ----------------------------------------------------------------------
def test_tls_client_hello_on_the_plain_port_is_400_at_once(server: Server) -> None:
    # No advisory: a https:// URL typed against the plain port must not hold a
    # connection until the header timeout (issue 8, "every wait has a timeout").
    hello = bytes.fromhex(
        "16030100f4010000f00303"
        + "5a" * 32
        + "20"
        + "11" * 32
        + "0008130213031301c02f0100"
        + "009f0000000e000c0000096c6f63616c686f7374000b000403000102000a000c000a001d0017"
        + "001e00190018002300000016000000170000000d001e001c040305030603080708080809080a"
        + "080b080408050806040105010601002b0003020304002d00020101"
    )
    started = time.monotonic()
    response = one(server, hello)
    assert_closing(response, 400)
    assert time.monotonic() - started < 1.0


def test_http09_request_is_refused_and_closed(hostile: Server) -> None:
    # HTTP/0.9 has no status line or headers; answering it in kind enables
    # cross-protocol attacks (why browsers dropped 0.9 on non-default ports). The
    # request line is complete and has no version: it can be refused at once, without
    # waiting for a header section that never comes (so not a 408 at the timeout).
    started = time.monotonic()
    response = one(hostile, b"GET /\r\n")
    elapsed = time.monotonic() - started
    assert_closing(response, 400, 505)
    assert elapsed < HEADER_TIMEOUT * 0.8, elapsed


@pytest.mark.parametrize(
    "data",
    [b"GET /\r\n\r\n", b"GET / HTTP/0.9\r\n\r\n", b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n"],
)
def test_http09_and_malformed_request_lines_are_400_or_505(server: Server, data: bytes) -> None:
    response = one(server, data)
    assert_closing(response, 400, 505)


def test_lowercase_method_is_501(server: Server) -> None:
    # Methods are case-sensitive (RFC 9110 §9.1): "get" is an unknown method, answered
    # 501 (Not Implemented) on a connection that stays usable -- never served as GET.
    with server.connect(TIMEOUT) as sock:
        client = H11Client(sock)
        response = client.request("get", "/small.txt")
        assert response.status == 501
        assert SMALL not in response.body
        follow_up = client.request("GET", "/small.txt")
        assert follow_up.status == 200


def test_options_asterisk(server: Server) -> None:
    response = one(server, head("OPTIONS", "*"), "OPTIONS")
    assert response.status == 204
    assert response.header("allow") == "GET, HEAD, OPTIONS"
    assert response.body == b""


def test_asterisk_with_another_method_is_400(server: Server) -> None:
    response = one(server, head("GET", "*"))
    assert_closing(response, 400)


@pytest.mark.parametrize("authority", ["127.0.0.1:443", "localhost:22"])
def test_connect_is_405(server: Server, authority: str) -> None:
    # Open-proxy abuse (CONNECT tunnels through a server that is not a proxy).
    response = one(server, head("CONNECT", authority, host=authority), "CONNECT")
    assert response.status == 405
    assert "CONNECT" not in (response.header("allow") or "")


def test_connect_to_a_foreign_authority_is_refused(server: Server) -> None:
    # The authority-form names the target host (RFC 9112 §3.2.3), so the DNS rebinding
    # check answers first: 421 here, or 405 -- never a tunnel.
    response = one(server, head("CONNECT", "evil.example:443", host="evil.example:443"), "CONNECT")
    assert response.status in (405, 421)


def test_trace_is_405_and_echoes_nothing(server: Server) -> None:
    # CVE-2004-2320 (Cross-Site Tracing, XST): TRACE echoed cookies and auth headers.
    secret = "session=s3cr3t-cookie"
    response = one(server, head("TRACE", "/", {"Cookie": secret}), "TRACE")
    assert response.status == 405
    assert secret.encode() not in response.body
