"""End-to-end tests of the production-preview features (issue 6) over real sockets.

Every test runs once per worker model against a real ``sitepeek serve`` subprocess
started with the options under test. Servers are module-scoped per (worker model,
option set): pytest groups the tests by the module-scoped ``model`` parameter, so only
one model's servers run at a time. Responses are framed by h11 (``H11Client`` /
``request``); raw sockets are used where the wire itself is the subject (streaming,
WebSocket frames, connection close).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path

import h11
import pytest

from conftest import (
    WORKER_MODELS,
    H11Client,
    Response,
    Server,
    recv_until_closed,
    request,
    served,
    start_server,
)
from sitepeek.log import human_size
from sites import (
    XSS_NAME,
    build_general,
    build_rules,
    build_spa,
    page,
    write,
)
from test_rules import (
    EXAMPLE_REDIRECTS,
    EXAMPLE_WARNINGS,
)

HTML = {"Accept": "text/html"}
BROWSER_ACCEPT = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
}
JSON_ONLY = {"Accept": "application/json"}
XSS_HREF = "%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example
WS_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
EXTRA_HEADERS = (
    ("X-Test", "1"),
    ("X-Other", "two"),
    ("Cache-Control", "max-age=5"),  # replaces sitepeek's own
    ("Link", "</style.css>; rel=preload"),
    ("Link", "</app.js>; rel=preload"),
)
# As they go out: one line per name (RFC 9110 §5.3), replacing sitepeek's fields.
EXTRA_SENT = (
    ("X-Test", "1"),
    ("X-Other", "two"),
    ("Cache-Control", "max-age=5"),
    ("Link", "</style.css>; rel=preload, </app.js>; rel=preload"),
)


@pytest.fixture(scope="module")
def general_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_general(tmp_path_factory.mktemp("general") / "root")


@pytest.fixture(scope="module")
def spa_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_spa(tmp_path_factory.mktemp("spa") / "root")


@pytest.fixture(scope="module")
def rules_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_rules(tmp_path_factory.mktemp("rules") / "root")


@pytest.fixture(scope="module")
def live_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("live") / "root"
    write(root / "index.html", page("Live"))
    write(root / "first.html", page("First"))
    return root


# -- the proxy's backend ---------------------------------------------------------------
class Backend:
    """A tiny threaded HTTP server on 127.0.0.1:0, parsing requests with h11.

    ``/api/echo``: a JSON description of the request, with hop-by-hop fields in the
    response; ``/api/stream``: a chunked response whose second half waits for the
    test's ``release``; ``/api/ws``: a WebSocket echo of one frame.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.hits: list[str] = []
        self.release = threading.Event()
        self.released: list[bool] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(10)
                self._exchange(conn)
        except Exception as exc:
            self.errors.append(exc)

    def _exchange(self, conn: socket.socket) -> None:
        parser = h11.Connection(h11.SERVER)
        req: h11.Request | None = None
        body = bytearray()
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                parser.receive_data(conn.recv(65536))
            elif isinstance(event, h11.Request):
                req = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                break
            elif isinstance(event, h11.ConnectionClosed):
                return
        assert req is not None
        target = req.target.decode()
        self.hits.append(target)
        headers = [(k.decode(), v.decode("latin-1")) for k, v in req.headers]
        if target.startswith("/api/ws"):
            self._websocket(conn, dict(headers), parser.trailing_data[0])
        elif target.startswith("/api/stream"):
            self._stream(conn)
        else:
            self._echo(conn, req.method.decode(), target, headers, bytes(body))

    @staticmethod
    def _echo(
        conn: socket.socket, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        document = {
            "method": method,
            "target": target,
            "headers": headers,
            "body_length": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        data = json.dumps(document).encode()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close, X-Backend-Hop\r\n"
            b"X-Backend-Hop: secret\r\n"
            b"Keep-Alive: timeout=1\r\n"
            b"X-Kept: yes\r\n\r\n" % len(data) + data
        )

    def _stream(self, conn: socket.socket) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n6\r\nfirst\n\r\n"
        )
        self.released.append(self.release.wait(5))
        conn.sendall(b"7\r\nsecond\n\r\n0\r\n\r\n")

    @staticmethod
    def _websocket(conn: socket.socket, headers: dict[str, str], early: bytes) -> None:
        from sitepeek.websocket import accept_key

        key = headers["sec-websocket-key"]
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept_key(key).encode()
        )
        data = early
        while len(data) < 2:
            data += conn.recv(4096)
        length = data[1] & 0x7F
        assert data[1] & 0x80 and length < 126  # masked, short
        while len(data) < 6 + length:
            data += conn.recv(4096)
        mask, payload = data[2:6], data[6 : 6 + length]
        text = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        conn.sendall(bytes([0x81, len(text)]) + text)
        with contextlib.suppress(OSError):
            while conn.recv(4096):
                pass


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    server = Backend()
    yield server
    server.close()
    assert not server.errors, server.errors


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- servers ---------------------------------------------------------------------------
@pytest.fixture(scope="module", params=WORKER_MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _serve(root: Path, model: str, *args: str) -> Iterator[Server]:
    srv = start_server(root, model, *args)
    try:
        yield srv
    finally:
        code = srv.stop()
    assert code == 0, srv.stderr_text()
    assert "Traceback" not in srv.stderr_text()
    assert "internal error" not in srv.stderr_text()


@pytest.fixture(scope="module")
def default_server(general_site: Path, model: str) -> Iterator[Server]:
    yield from _serve(general_site, model)


@pytest.fixture(scope="module")
def spa_app_server(spa_site: Path, model: str) -> Iterator[Server]:
    yield from _serve(spa_site, model, "--spa", "app.html")


@pytest.fixture(scope="module")
def base_server(general_site: Path, model: str) -> Iterator[Server]:
    yield from _serve(general_site, model, "--base", "/repo/")


@pytest.fixture(scope="module")
def cors_server(general_site: Path, model: str) -> Iterator[Server]:
    headers = [arg for name, value in EXTRA_HEADERS for arg in ("--header", f"{name}: {value}")]
    yield from _serve(general_site, model, "--cors", *headers, "--allowed-host", "dev.test")


@pytest.fixture(scope="module")
def proxy_server(general_site: Path, model: str, backend: Backend) -> Iterator[Server]:
    yield from _serve(
        general_site,
        model,
        "--proxy",
        f"/api=http://127.0.0.1:{backend.port}",
        "--proxy",
        f"/down=http://127.0.0.1:{dead_port()}",
        "--header",
        "X-Test: 1",
    )


@pytest.fixture(scope="module")
def quiet_proxy_server(general_site: Path, model: str) -> Iterator[Server]:
    yield from _serve(general_site, model, "-q", "--proxy", f"/down=http://127.0.0.1:{dead_port()}")


@pytest.fixture(scope="module")
def rules_server(rules_site: Path, model: str) -> Iterator[Server]:
    yield from _serve(rules_site, model)


@pytest.fixture(scope="module")
def norules_server(rules_site: Path, model: str) -> Iterator[Server]:
    yield from _serve(rules_site, model, "--no-rules")


@pytest.fixture(scope="module")
def live_server(live_site: Path, model: str) -> Iterator[Server]:
    yield from _serve(live_site, model)


# -- helpers ---------------------------------------------------------------------------
def follow(
    server: Server, target: str, headers: dict[str, str] | None = None, limit: int = 6
) -> tuple[list[tuple[int, str]], Response]:
    """GET ``target`` and every local redirect after it; fails on a loop."""
    hops: list[tuple[int, str]] = []
    seen = {target}
    response = request(server, "GET", target, headers)
    while response.status in (301, 302, 303, 307, 308):
        location = response.header("location")
        assert location is not None and location.startswith("/"), location
        hops.append((response.status, location))
        assert location not in seen, f"redirect loop: {target} -> {hops}"
        assert len(hops) < limit, f"too many redirects: {hops}"
        seen.add(location)
        response = request(server, "GET", location, headers)
    return hops, response


def names(response: Response) -> list[str]:
    return [name.lower() for name, _ in response.raw_headers]


def values(response: Response, name: str) -> list[str]:
    return [value for key, value in response.raw_headers if key.lower() == name.lower()]


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "a":
            self.hrefs.extend(value or "" for name, value in attrs if name == "href")


def parse_html(body: bytes) -> _Tags:
    parser = _Tags()
    parser.feed(body.decode("utf-8"))
    parser.close()
    return parser


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def recv_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before the head ended: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


# == SPA fallback =======================================================================
# Which URL gets the fallback (--spa alone too) is decided in test_site.py
# (PRODUCTION_CASES); here, a fallback served and its HEAD, in every worker model.
def test_spa_custom_file(spa_app_server: Server, spa_site: Path) -> None:
    response = request(spa_app_server, "GET", "/dashboard/x", HTML)
    assert response.status == 200
    assert response.body == served(spa_site / "app.html")
    # The root still serves its own index.
    assert request(spa_app_server, "GET", "/", HTML).body == served(spa_site / "index.html")
    head = request(spa_app_server, "HEAD", "/dashboard", HTML)
    assert (head.status, head.body) == (200, b"")
    assert head.header("content-length") == str(len(served(spa_site / "app.html")))


# == Clean URLs =========================================================================
# Every clean-URL state and redirect, and --no-clean-urls: test_site.py
# (test_clean_url_matrix_never_loops, PRODUCTION_CASES).
def test_clean_url_serves_page(default_server: Server, general_site: Path) -> None:
    about = served(general_site / "about.html")
    response = request(default_server, "GET", "/about")
    assert (response.status, response.body) == (200, about)
    response = request(default_server, "GET", "/about.html")
    assert (response.status, response.body) == (200, about)


# == Custom 404 =========================================================================
# Which misses get the 404 page: test_site.py; here what the writer does with it.
def test_custom_404_head(default_server: Server, general_site: Path) -> None:
    response = request(default_server, "HEAD", "/missing")
    assert (response.status, response.body) == (404, b"")
    assert response.header("content-length") == str(len(served(general_site / "404.html")))


def test_custom_404_ignores_conditionals(default_server: Server) -> None:
    response = request(default_server, "GET", "/missing", {"If-None-Match": "*"})
    assert response.status == 404


# == _redirects =========================================================================
# Every EXAMPLE_CASES outcome: test_site.py (test_example_redirects, Site.decide).
def test_example_redirects_head(rules_server: Server) -> None:
    response = request(rules_server, "HEAD", "/temporary")
    assert (response.status, response.header("location"), response.body) == (
        302,
        "/elsewhere",
        b"",
    )


def test_example_warnings_reported_once(rules_server: Server) -> None:
    for _ in range(24):  # fresh connections: every worker of the processes model
        request(rules_server, "GET", "/home")
    expected = [f"sitepeek: {warning}\n" for warning in EXAMPLE_WARNINGS]
    assert wait_for(lambda: all(line in rules_server.stderr_lines for line in expected)), (
        rules_server.stderr_text()
    )
    for _ in range(6):
        request(rules_server, "GET", "/temporary")
    time.sleep(0.3)
    for line in expected:
        assert rules_server.stderr_lines.count(line) == 1, rules_server.stderr_text()


def test_no_rules_ignores_both_files(norules_server: Server, rules_site: Path) -> None:
    assert request(norules_server, "GET", "/home").status == 404
    forced = request(norules_server, "GET", "/forced.html")
    assert (forced.status, forced.body) == (200, served(rules_site / "forced.html"))
    legacy = request(norules_server, "GET", "/legacy.html")
    assert (legacy.status, legacy.body) == (200, served(rules_site / "legacy.html"))
    assert "x-frame-options" not in names(request(norules_server, "GET", "/"))
    # Without rules they are ordinary files of the site.
    response = request(norules_server, "GET", "/_redirects")
    assert (response.status, response.body) == (200, EXAMPLE_REDIRECTS.encode())
    time.sleep(0.1)
    assert "_redirects:" not in norules_server.stderr_text()


def test_redirects_edit_takes_effect_without_restart(live_server: Server, live_site: Path) -> None:
    rules = live_site / "_redirects"
    try:
        assert request(live_server, "GET", "/go").status == 404
        write(rules, "/go /first 302\n")
        response = request(live_server, "GET", "/go")
        assert (response.status, response.header("location")) == (302, "/first")
        write(rules, "/go /second-target 301\n")
        response = request(live_server, "GET", "/go")
        assert (response.status, response.header("location")) == (301, "/second-target")
        write(rules, "/go /first.html 200\n# and a comment to change the size\n")
        response = request(live_server, "GET", "/go")
        assert (response.status, response.body) == (200, served(live_site / "first.html"))
    finally:
        rules.unlink(missing_ok=True)
    assert request(live_server, "GET", "/go").status == 404


def test_headers_edit_takes_effect_without_restart(live_server: Server, live_site: Path) -> None:
    rules = live_site / "_headers"
    try:
        assert "x-live" not in names(request(live_server, "GET", "/"))
        write(rules, "/*\n  X-Live: one\n")
        assert request(live_server, "GET", "/").header("x-live") == "one"
        write(rules, "/*\n  X-Live: second\n")
        assert request(live_server, "GET", "/").header("x-live") == "second"
    finally:
        rules.unlink(missing_ok=True)
    assert "x-live" not in names(request(live_server, "GET", "/"))


def test_new_malformed_line_reported_once(live_server: Server, live_site: Path) -> None:
    rules = live_site / "_redirects"
    line = "sitepeek: _redirects:2: unknown status 299; line skipped\n"
    try:
        write(rules, "/ok /first.html 302\n/bad /x 299\n")
        for _ in range(24):  # fresh connections: every worker of the processes model
            assert request(live_server, "GET", "/ok").status == 302
        assert wait_for(lambda: line in live_server.stderr_lines), live_server.stderr_text()
        time.sleep(0.3)
        assert live_server.stderr_lines.count(line) == 1, live_server.stderr_text()
    finally:
        rules.unlink(missing_ok=True)


# == _headers ===========================================================================
RULE_HEADER_CASES = [
    ("/", 200, {"x-frame-options": "DENY", "x-robots-tag": "noindex"}),
    ("/static/app.js", 200, {"x-frame-options": "DENY", "x-robots-tag": "noindex, nosnippet"}),
    ("/static/img/logo.png", 200, {"x-kind": "image", "x-robots-tag": "noindex, nosnippet"}),
    ("/users/42/profile", 200, {"x-profile": "yes", "x-frame-options": "DENY"}),
    ("/about/", 200, {"x-about": "1"}),
    ("/about", 301, {"x-about": "1"}),  # the directory redirect
    ("/caf%C3%A9", 301, {"x-cafe": "1"}),  # a _redirects redirect
    ("/nope", 404, {"x-frame-options": "DENY"}),
    ("/users/4/2/profile", 404, {"x-frame-options": "DENY"}),
]


@pytest.mark.parametrize(("path", "status", "expected"), RULE_HEADER_CASES)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_headers_applied(
    rules_server: Server, method: str, path: str, status: int, expected: dict[str, str]
) -> None:
    response = request(rules_server, method, path)
    assert response.status == status
    for name, value in expected.items():
        assert values(response, name) == [value], (name, response.raw_headers)
    if path != "/users/42/profile":
        assert "x-profile" not in names(response)


def test_headers_detach_and_set_cookie(rules_server: Server) -> None:
    response = request(rules_server, "GET", "/private/secret")
    assert response.status == 200
    assert "x-frame-options" not in names(response)
    assert values(response, "set-cookie") == ["a=1", "b=2"]
    assert values(response, "x-robots-tag") == ["noindex, private"]


def test_headers_on_304(rules_server: Server) -> None:
    first = request(rules_server, "GET", "/static/app.js")
    etag = first.header("etag")
    assert etag
    response = request(rules_server, "GET", "/static/app.js", {"If-None-Match": etag})
    assert response.status == 304
    assert values(response, "x-robots-tag") == ["noindex, nosnippet"]
    assert values(response, "x-frame-options") == ["DENY"]


def test_headers_cache_control_replaces_the_default(rules_server: Server) -> None:
    """On Netlify and Cloudflare a _headers Cache-Control replaces the host's default.

    sitepeek appends the _headers line next to its own ``Cache-Control: no-cache``, so
    the response carries both and ``no-cache`` wins in the browser.
    """
    response = request(rules_server, "GET", "/static/app.js")
    assert values(response, "cache-control") == ["public, max-age=31536000, immutable"]


def test_headers_content_type_replaces_the_default(live_server: Server, live_site: Path) -> None:
    """A _headers Content-Type must replace the server's, not add a second field.

    RFC 9110 §8.3: Content-Type is a singleton field; two differing values make the
    response ambiguous (Netlify and Cloudflare send only the _headers value).
    """
    rules = live_site / "_headers"
    try:
        write(rules, "/first.html\n  Content-Type: text/plain; charset=utf-8\n")
        response = request(live_server, "GET", "/first.html")
        assert values(response, "content-type") == ["text/plain; charset=utf-8"]
    finally:
        rules.unlink(missing_ok=True)


def test_headers_of_one_request_never_reach_the_next_ones_error(
    live_server: Server, live_site: Path
) -> None:
    """The next request on a keep-alive connection starts clean, an error page too."""
    rules = live_site / "_headers"
    try:
        write(rules, "/first.html\n  Content-Type: application/json\n  X-Only: first\n")
        with live_server.connect() as sock:
            client = H11Client(sock)
            first = client.request("GET", "/first.html")
            assert first.header("x-only") == "first"
            client.send_raw(b"BROKEN REQUEST LINE\r\n\r\n")
            error = client.read_response()
            assert error.status == 400
            assert error.header("content-type") == "text/html; charset=utf-8"
            assert error.header("x-only") is None
    finally:
        rules.unlink(missing_ok=True)


# == Base path ==========================================================================
# Redirects into the base and 404s outside it: test_site.py (PRODUCTION_CASES).
def test_base_listing_links_resolve(base_server: Server, general_site: Path) -> None:
    response = request(base_server, "GET", "/repo/list/")
    assert response.status == 200
    assert b"Index of /repo/list/" in response.body
    hrefs = parse_html(response.body).hrefs
    assert "a.txt" in hrefs and "../" in hrefs
    for href in hrefs:
        linked = request(base_server, "GET", "/repo/list/" + href)
        assert linked.status == 200, href
    assert request(base_server, "GET", "/repo/list/a.txt").body == b"aaa\n"
    parent = request(base_server, "GET", "/repo/list/../")
    assert parent.body == served(general_site / "index.html")
    document = json.loads(request(base_server, "GET", "/repo/list/", JSON_ONLY).body)
    assert document["path"] == "/repo/list/"


def test_base_internal_urls_stay_at_the_root(base_server: Server) -> None:
    response = request(base_server, "GET", "/__sitepeek__/reload.js")
    assert response.status == 200
    assert "javascript" in (response.header("content-type") or "")
    page_body = request(base_server, "GET", "/repo/").body
    assert b'src="/__sitepeek__/reload.js?v=' in page_body


# == Directory listing ==================================================================
LISTING_ORDER = [
    "../",
    "Adir/",
    "zdir/",
    XSS_HREF,
    "a.txt",
    "b.txt",
    "file2.txt",
    "File10.txt",
]


def test_listing_html(default_server: Server) -> None:
    response = request(default_server, "GET", "/list/")
    assert response.status == 200
    assert response.header("content-type") == "text/html; charset=utf-8"
    assert response.header("vary") == "Accept"
    parsed = parse_html(response.body)
    assert parsed.hrefs == LISTING_ORDER
    # The hostile name is text, never a tag.
    assert "img" not in parsed.tags
    assert XSS_NAME.encode() not in response.body
    assert b"&lt;img src=x onerror=alert(1)&gt;" in response.body
    assert b".dotfile" not in response.body and b".dotdir" not in response.body
    assert b"1.5 KiB" in response.body
    assert re.search(rb"\d{4}-\d\d-\d\d \d\d:\d\d", response.body)
    assert b'src="/__sitepeek__/reload.js?v=' in response.body


def test_listing_links_work(default_server: Server) -> None:
    response = request(default_server, "GET", "/list/" + XSS_HREF)
    assert (response.status, response.body) == (200, b"xss\n")
    assert request(default_server, "GET", "/list/Adir/").status == 200
    assert request(default_server, "GET", "/list/.dotfile").status == 404
    redirect = request(default_server, "GET", "/list")
    assert (redirect.status, redirect.header("location")) == (301, "/list/")


def test_listing_json(default_server: Server) -> None:
    response = request(default_server, "GET", "/list/", JSON_ONLY)
    assert response.status == 200
    assert response.header("content-type") == "application/json"
    assert response.header("vary") == "Accept"
    document = json.loads(response.body)
    assert document["path"] == "/list/"
    entries = document["entries"]
    assert [e["name"] for e in entries] == [
        "Adir",
        "zdir",
        XSS_NAME,
        "a.txt",
        "b.txt",
        "file2.txt",
        "File10.txt",
    ]
    assert [e["type"] for e in entries[:3]] == ["dir", "dir", "file"]
    assert entries[-1]["size"] == 1500
    assert entries[0]["size"] is None


def test_listing_head(default_server: Server) -> None:
    response = request(default_server, "HEAD", "/list/")
    assert (response.status, response.body) == (200, b"")
    assert int(response.header("content-length") or 0) > 0


# == CORS ===============================================================================
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/style.css", 200),
        ("HEAD", "/style.css", 200),
        ("GET", "/missing", 404),
        ("HEAD", "/missing", 404),
        ("GET", "/sub", 301),
        ("GET", "/list/", 200),
    ],
)
def test_cors_allow_origin(cors_server: Server, method: str, path: str, status: int) -> None:
    response = request(cors_server, method, path, {"Origin": "http://example.com"})
    assert response.status == status
    assert values(response, "access-control-allow-origin") == ["*"]
    assert "access-control-allow-credentials" not in names(response)


def test_cors_preflight(cors_server: Server) -> None:
    response = request(
        cors_server,
        "OPTIONS",
        "/data.json",
        {
            "Origin": "http://example.com",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "X-Custom, Content-Type",
        },
    )
    assert response.status == 204
    assert response.body == b""
    methods = {
        m.strip() for m in (response.header("access-control-allow-methods") or "").split(",")
    }
    assert {"GET", "HEAD"} <= methods
    assert response.header("access-control-allow-headers") == "X-Custom, Content-Type"
    assert response.header("access-control-allow-origin") == "*"
    assert "access-control-allow-credentials" not in names(response)


def test_no_cors_headers_without_the_option(default_server: Server) -> None:
    preflight = {
        "Origin": "http://example.com",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "X-Custom",
    }
    for method, path in [("GET", "/style.css"), ("GET", "/missing"), ("OPTIONS", "/style.css")]:
        response = request(default_server, method, path, preflight)
        assert not [n for n in names(response) if n.startswith("access-control-")], (method, path)


# == --header ===========================================================================
def _check_extra(response: Response) -> None:
    for name, value in EXTRA_SENT:
        assert values(response, name) == [value], response.raw_headers


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/style.css", 200),
        ("HEAD", "/index.html", 200),
        ("GET", "/missing", 404),
        ("GET", "/sub", 301),
        ("GET", "/about/", 308),
        ("GET", "/list/", 200),
        ("OPTIONS", "/", 204),
        ("DELETE", "/", 405),
        ("GET", "/__sitepeek__/reload.js", 200),
    ],
)
def test_extra_headers_everywhere(cors_server: Server, method: str, path: str, status: int) -> None:
    response = request(cors_server, method, path)
    assert response.status == status
    _check_extra(response)


def test_extra_headers_on_304(cors_server: Server) -> None:
    etag = request(cors_server, "GET", "/style.css").header("etag")
    assert etag
    response = request(cors_server, "GET", "/style.css", {"If-None-Match": etag})
    assert response.status == 304
    _check_extra(response)


def test_extra_headers_on_421(cors_server: Server) -> None:
    response = request(cors_server, "GET", "/", {"Host": "evil.example"})
    assert response.status == 421
    _check_extra(response)


# == --proxy ============================================================================
def proxied_json(response: Response) -> dict[str, object]:
    assert response.status == 200, response.body[:300]
    return dict(json.loads(response.body))


def backend_headers(document: dict[str, object]) -> dict[str, str]:
    pairs = document["headers"]
    assert isinstance(pairs, list)
    return {str(k).lower(): str(v) for k, v in pairs}


def test_proxy_get_with_query_and_forwarded_headers(proxy_server: Server) -> None:
    host = f"127.0.0.1:{proxy_server.port}"
    response = request(proxy_server, "GET", "/api/echo?x=1&y=%20z", {"Host": host})
    document = proxied_json(response)
    assert document["method"] == "GET"
    assert document["target"] == "/api/echo?x=1&y=%20z"
    seen = backend_headers(document)
    assert seen["host"] == host
    assert seen["x-forwarded-host"] == host
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"


def test_proxy_hop_by_hop_fields_removed(proxy_server: Server) -> None:
    with proxy_server.connect() as sock:
        client = H11Client(sock)
        response = client.request(
            "GET",
            "/api/echo",
            {
                "Connection": "keep-alive, X-Drop-Me",
                "X-Drop-Me": "1",
                "Keep-Alive": "timeout=300",
                "TE": "trailers",
                "Proxy-Connection": "keep-alive",
                "X-Keep-Me": "1",
            },
        )
        seen = backend_headers(proxied_json(response))
        assert seen.get("x-keep-me") == "1"
        for name in ("x-drop-me", "keep-alive", "te", "proxy-connection"):
            assert name not in seen, name
        assert seen["connection"] == "close"  # the backend hop is framed anew
        # ... and the backend's hop-by-hop fields do not reach the client.
        assert response.header("x-kept") == "yes"
        for name in ("x-backend-hop", "keep-alive"):
            assert name not in names(response), name
        assert "close" not in (response.header("connection") or "")
        # The client connection stays alive for the next request.
        again = client.request("GET", "/api/echo?second")
        assert proxied_json(again)["target"] == "/api/echo?second"


def test_proxy_post_content_length(proxy_server: Server) -> None:
    body = os.urandom(300_000)
    with proxy_server.connect() as sock:
        client = H11Client(sock)
        client.send_raw(
            b"POST /api/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream"
            b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        document = proxied_json(client.read_response("POST"))
    assert document["method"] == "POST"
    assert document["body_length"] == len(body)
    assert document["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert backend_headers(document)["content-length"] == str(len(body))


def test_proxy_post_chunked(proxy_server: Server) -> None:
    pieces = [b"hello ", os.urandom(70_000), b"world"]
    chunked = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    with proxy_server.connect() as sock:
        client = H11Client(sock)
        client.send_raw(
            b"POST /api/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunked
        )
        document = proxied_json(client.read_response("POST"))
    body = b"".join(pieces)
    assert document["body_length"] == len(body)
    assert document["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert backend_headers(document)["transfer-encoding"] == "chunked"


def test_proxy_response_streams(proxy_server: Server, backend: Backend) -> None:
    backend.release = threading.Event()
    released_before = len(backend.released)
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/api/stream", headers=[("Host", "127.0.0.1")]))
    conn.send(h11.EndOfMessage())
    body = b""
    head: h11.Response | None = None
    with proxy_server.connect(timeout=10) as sock:
        sock.sendall(b"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if b"first\n" in body:
                    backend.release.set()  # only now may the backend send the rest
            elif isinstance(event, h11.EndOfMessage):
                break
    assert head is not None and head.status_code == 200
    assert body == b"first\nsecond\n"
    assert backend.released[released_before:] == [True], "the first chunk was held back"


def test_proxy_websocket_echo(proxy_server: Server) -> None:
    with proxy_server.connect(timeout=10) as sock:
        sock.sendall(
            (
                "GET /api/ws HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{proxy_server.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head, rest = recv_head(sock)
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 101")
        fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        assert fields["sec-websocket-accept"] == WS_ACCEPT
        assert fields["upgrade"].lower() == "websocket"
        payload = b"hello through the proxy"
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
        data = rest
        while len(data) < 2 + len(payload):
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        assert data == bytes([0x81, len(payload)]) + payload


def test_proxy_backend_down_is_a_quick_502(proxy_server: Server) -> None:
    started = time.monotonic()
    response = request(proxy_server, "GET", "/down/anything")
    assert time.monotonic() - started < 3
    assert response.status == 502
    assert b"http://127.0.0.1:" in response.body
    assert b"/down" in response.body


def test_proxy_leaves_other_paths_to_the_files(
    proxy_server: Server, general_site: Path, backend: Backend
) -> None:
    hits = len(backend.hits)
    for path, file in [("/", "index.html"), ("/style.css", "style.css"), ("/about", "about.html")]:
        response = request(proxy_server, "GET", path)
        assert (response.status, response.body) == (200, served(general_site / file)), path
    response = request(proxy_server, "GET", "/apiary")  # not under the /api segment
    assert (response.status, response.body) == (404, served(general_site / "404.html"))
    assert len(backend.hits) == hits


def test_extra_headers_on_proxy_502(proxy_server: Server) -> None:
    """--header is "added to every response": sitepeek's own 502 page included."""
    response = request(proxy_server, "GET", "/down/x")
    assert response.status == 502
    assert values(response, "x-test") == ["1"], response.raw_headers


def test_extra_headers_on_proxied_responses(proxy_server: Server) -> None:
    """--header is "added to every response", as Vite's server.headers are."""
    response = request(proxy_server, "GET", "/api/echo")
    assert response.status == 200
    assert values(response, "x-test") == ["1"], response.raw_headers


def logged(server: Server, fragment: str, timeout: float = 10.0) -> list[str]:
    """The request log lines (stdout) that contain ``fragment``, once there is one."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in list(server.stdout_lines) if fragment in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)  # (another process writes the log: nothing to await)


CLOSING = "Host: 127.0.0.1\r\nConnection: close\r\n\r\n"


def test_proxied_request_is_logged_with_its_status_and_bytes(proxy_server: Server) -> None:
    target = f"/api/echo?logged={os.urandom(4).hex()}"
    with proxy_server.connect() as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\n{CLOSING}".encode())
        received = recv_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 200 ")
    (line,) = logged(proxy_server, f" GET {target} ")
    assert f" GET {target} 200 {human_size(len(received))} " in line, line


def test_proxy_failure_is_logged_with_its_status(proxy_server: Server) -> None:
    target = f"/down/{os.urandom(4).hex()}"
    with proxy_server.connect() as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\n{CLOSING}".encode())
        received = recv_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 502 ")
    (line,) = logged(proxy_server, f" GET {target} ")
    assert f" GET {target} 502 {human_size(len(received))} " in line, line


def test_proxy_502_is_logged_under_quiet(quiet_proxy_server: Server) -> None:
    """--help: "-q: log only errors (5xx)": a backend that is down is one."""
    assert request(quiet_proxy_server, "GET", "/").status == 200
    target = f"/down/{os.urandom(4).hex()}"
    assert request(quiet_proxy_server, "GET", target).status == 502
    (line,) = logged(quiet_proxy_server, f" GET {target} ")
    assert f" GET {target} 502 " in line, line
    assert not [line for line in quiet_proxy_server.stdout_lines if " GET / " in line]


# == Host check (DNS rebinding) =========================================================
# Which names are served: test_site.py (PRODUCTION_CASES); here, the close after a 421.
@pytest.mark.parametrize(
    "host",
    [
        "evil.example:{port}",
        "evil.example",
        "dev.test",
        "localhost.evil.example:{port}",
        "127.0.0.1.nip.io:{port}",
    ],
)
def test_foreign_host_is_421_and_closes(default_server: Server, host: str) -> None:
    with default_server.connect() as sock:
        client = H11Client(sock)
        response = client.request("GET", "/", {"Host": host.format(port=default_server.port)})
        assert response.status == 421
        assert response.header("connection") == "close"
        assert b"--allowed-host" in response.body
        assert sock.recv(65536) == b""  # the server closed the connection


def test_allowed_host_option(cors_server: Server) -> None:
    """--allowed-host reaches the server (every spelling: test_site.py's table)."""
    response = request(cors_server, "GET", "/style.css", {"Host": f"dev.test:{cors_server.port}"})
    assert response.status == 200
    assert request(cors_server, "GET", "/", {"Host": "other.test"}).status == 421
