"""Site.decide in-process: the routing edge cases as a table, no socket, no server.

Each case is (options, request head, expected plan) on one small site. The plans are
compared as short tuples, so a case reads like the behaviour it pins down. What needs
a real socket (framing, keep-alive, the writer, every worker model) stays in the
end-to-end suites; this is where the decisions are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sitepeek import entities, livereload
from sitepeek.config import Config
from sitepeek.hotcache import Candidate
from sitepeek.http11 import Request, RequestParser
from sitepeek.plan import Error, Forward, Page, Plan, Redirect, SendEntity, SendFile, Upgrade
from sitepeek.site import MISDIRECTED, Site, may_be_html
from sitepeek.workers.threads import ThreadIo

FILES = {
    "index.html": "<!doctype html><title>home</title>",
    "about.html": "<!doctype html><title>about</title>",
    "404.html": "<!doctype html><title>missing</title>",
    "app.html": "<!doctype html><title>app</title>",
    "style.css": "body{}",
    "docs/index.html": "<!doctype html><title>docs</title>",
    "files/a.txt": "a",
    "old.html": "<!doctype html><title>old</title>",
    "forced.html": "<!doctype html><title>forced</title>",
    "_redirects": (
        "/old /about 301\n/gone /about 301\n/forced /about 301!\n"
        "/legacy/* /docs/:splat 302\n/shop/* /app.html 200\n"
    ),
    "_headers": "/style.css\n  X-Kind: style\n",
    ".secret": "s",
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def parse(head: str) -> Request:
    parser = RequestParser()
    parser.feed(head.replace("\n", "\r\n").encode() + b"\r\n\r\n")
    request = parser.next_request()
    assert request is not None
    return request


def describe(plan: Plan, root: Path) -> tuple[Any, ...]:
    """A plan as a short tuple: ("file", "about.html", 200), ("error", 404), ..."""
    if isinstance(plan, SendFile):
        return ("file", str(Path(plan.file.fs_path).relative_to(root.resolve())), plan.status)
    if isinstance(plan, Error):
        return ("error", plan.status)
    if isinstance(plan, Redirect):
        return ("redirect", plan.status, plan.location)
    if isinstance(plan, Page):
        return ("page", plan.status)
    if isinstance(plan, Forward):
        return ("forward", plan.route.prefix)
    if isinstance(plan, Upgrade):
        return ("upgrade",)
    if isinstance(plan, SendEntity):
        return ("entity",)
    raise AssertionError(plan)


HOST = "Host: 127.0.0.1:8000"
WS = f"{HOST}\nUpgrade: websocket\nConnection: Upgrade"
PROXY = {"proxy": ("/api=http://127.0.0.1:9",)}
BASE = {"base": "/repo/"}
SPA = {"spa": "app.html"}

SIMPLE_CASES: list[tuple[dict[str, Any], str, tuple[Any, ...]]] = [
    ({}, f"GET / HTTP/1.1\n{HOST}", ("file", "index.html", 200)),
    ({}, f"HEAD /about HTTP/1.1\n{HOST}", ("file", "about.html", 200)),
    ({}, f"GET /about.html HTTP/1.1\n{HOST}", ("file", "about.html", 200)),
    ({}, f"GET /docs HTTP/1.1\n{HOST}", ("redirect", 301, "/docs/")),
    ({}, f"GET /files/ HTTP/1.1\n{HOST}", ("page", 200)),
    ({"listing": False}, f"GET /files/ HTTP/1.1\n{HOST}", ("file", "404.html", 404)),
    ({}, f"GET /nothing HTTP/1.1\n{HOST}", ("file", "404.html", 404)),
    ({}, f"GET /.secret HTTP/1.1\n{HOST}", ("file", "404.html", 404)),
    ({}, f"GET /%2e%2e/etc/passwd HTTP/1.1\n{HOST}", ("error", 400)),
    # Host check (DNS rebinding): 421 and close, before anything else.
    ({}, "GET / HTTP/1.1\nHost: evil.example", ("error", 421)),
    ({}, "GET / HTTP/1.0", ("file", "index.html", 200)),
    (
        {"allowed_host": ("dev.test",)},
        "GET / HTTP/1.1\nHost: dev.test",
        ("file", "index.html", 200),
    ),
    # Methods.
    ({}, f"OPTIONS / HTTP/1.1\n{HOST}", ("page", 204)),
    ({}, f"DELETE / HTTP/1.1\n{HOST}", ("error", 405)),
    ({}, f"BREW / HTTP/1.1\n{HOST}", ("error", 501)),
    # The rules files: never served; their redirects, rewrites and splats.
    ({}, f"GET /_redirects HTTP/1.1\n{HOST}", ("error", 404)),
    ({"rules": False}, f"GET /_redirects HTTP/1.1\n{HOST}", ("file", "_redirects", 200)),
    ({}, f"GET /gone HTTP/1.1\n{HOST}", ("redirect", 301, "/about")),
    ({}, f"GET /old HTTP/1.1\n{HOST}", ("file", "old.html", 200)),  # a file shadows a rule
    ({}, f"GET /forced HTTP/1.1\n{HOST}", ("redirect", 301, "/about")),  # ... unless forced
    ({}, f"GET /legacy/x HTTP/1.1\n{HOST}", ("redirect", 302, "/docs/x")),
    ({}, f"GET /shop/cart HTTP/1.1\n{HOST}", ("file", "app.html", 200)),
    # The base path.
    (BASE, f"GET / HTTP/1.1\n{HOST}", ("redirect", 302, "/repo/")),
    (BASE, f"GET /repo HTTP/1.1\n{HOST}", ("redirect", 302, "/repo/")),
    (BASE, f"GET /repo?x=1 HTTP/1.1\n{HOST}", ("redirect", 302, "/repo/?x=1")),
    (BASE, f"GET /other HTTP/1.1\n{HOST}", ("error", 404)),
    (BASE, f"GET /repo/ HTTP/1.1\n{HOST}", ("file", "index.html", 200)),
    (BASE, f"GET /repo/docs HTTP/1.1\n{HOST}", ("redirect", 301, "/repo/docs/")),
    (BASE, f"GET /repo/gone HTTP/1.1\n{HOST}", ("redirect", 301, "/repo/about")),
    # The SPA fallback: pages only, never assets or other methods.
    (SPA, f"GET /app/route HTTP/1.1\n{HOST}\nAccept: text/html", ("file", "app.html", 200)),
    (SPA, f"GET /app/x.js HTTP/1.1\n{HOST}\nAccept: */*", ("file", "404.html", 404)),
    (SPA, f"GET /about HTTP/1.1\n{HOST}\nAccept: text/html", ("file", "about.html", 200)),
    # Proxy routes, segment-wise, before the files and the base path.
    (PROXY, f"GET /api/x HTTP/1.1\n{HOST}", ("forward", "/api")),
    (PROXY, f"POST /api HTTP/1.1\n{HOST}\nContent-Length: 0", ("forward", "/api")),
    (PROXY, f"GET /apiary HTTP/1.1\n{HOST}", ("file", "404.html", 404)),
    (PROXY, "GET /api/x HTTP/1.1\nHost: evil.example", ("error", 421)),
    ({**PROXY, **BASE}, f"GET /api/x HTTP/1.1\n{HOST}", ("forward", "/api")),
    # sitepeek's own URLs, with and without live reload.
    ({"reload": True}, f"GET /__sitepeek__/reload.js HTTP/1.1\n{HOST}", ("entity",)),
    ({"reload": True}, f"GET /__sitepeek__/ws HTTP/1.1\n{WS}", ("upgrade",)),
    ({"reload": True}, "GET /__sitepeek__/ws HTTP/1.1\nHost: evil.example", ("error", 421)),
    ({"reload": True}, f"GET /__sitepeek__/ws HTTP/1.1\n{HOST}", ("error", 426)),
    ({"reload": True}, f"POST /__sitepeek__/ws HTTP/1.1\n{HOST}", ("error", 405)),
    ({"reload": True}, f"GET /__sitepeek__/other HTTP/1.1\n{HOST}", ("error", 404)),
    ({}, f"GET /__sitepeek__/reload.js HTTP/1.1\n{HOST}", ("error", 404)),
    ({}, f"GET /__sitepeek__/ws HTTP/1.1\n{WS}", ("error", 404)),
]


def make_site(root: Path, **options: Any) -> Site:
    reload = options.pop("reload", False)
    config = Config(root=root, reload=False, **options)
    if not reload:
        return Site(config)
    script = livereload.client_script()
    return Site(
        config,
        broadcaster=livereload.Broadcaster(ThreadIo()),
        client=entities.from_bytes(livereload.CLIENT_PATH, script, True, immutable=True),
        snippet=livereload.client_tag(script),
    )


@pytest.mark.parametrize(("options", "head", "expected"), SIMPLE_CASES)
def test_decide(root: Path, options: dict[str, Any], head: str, expected: tuple[Any, ...]) -> None:
    site = make_site(root, **dict(options))
    assert describe(site.decide(parse(head))[0], root) == expected


def test_misdirected_request_closes_and_says_how_to_allow_the_name(root: Path) -> None:
    plan = make_site(root).decide(parse("GET / HTTP/1.1\nHost: evil.example"))[0]
    assert plan == Error(421, MISDIRECTED, close=True)
    assert "--allowed-host" in MISDIRECTED


def test_headers_rules_come_with_the_decision(root: Path) -> None:
    site = make_site(root)
    assert site.decide(parse(f"GET /style.css HTTP/1.1\n{HOST}"))[1] == (("X-Kind", "style"),)
    # ... on an error page of that path too, and on no other path.
    assert site.decide(parse(f"DELETE /style.css HTTP/1.1\n{HOST}"))[1] == (("X-Kind", "style"),)
    assert site.decide(parse(f"GET / HTTP/1.1\n{HOST}"))[1] == ()
    assert make_site(root, rules=False).decide(parse(f"GET /style.css HTTP/1.1\n{HOST}"))[1] == ()


def test_options_preflight_with_cors(root: Path) -> None:
    head = f"OPTIONS / HTTP/1.1\n{HOST}\nAccess-Control-Request-Method: GET\n"
    head += "Access-Control-Request-Headers: x-a"
    plan = make_site(root, cors=True).decide(parse(head))[0]
    assert isinstance(plan, Page) and plan.body == b""
    assert dict(plan.headers) == {
        "Allow": "GET, HEAD, OPTIONS",
        "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
        "Access-Control-Allow-Headers": "x-a",
        "Access-Control-Max-Age": "600",
    }


def test_a_file_answer_is_a_hot_cache_candidate_only_with_a_key(root: Path) -> None:
    site = make_site(root)
    request = parse(f"GET /docs/ HTTP/1.1\n{HOST}")
    plan = site.decide(request, b"key")[0]
    assert isinstance(plan, SendFile) and isinstance(plan.candidate, Candidate)
    assert (plan.candidate.key, plan.candidate.url_dir, plan.candidate.html) == (
        b"key",
        "/docs",
        True,
    )
    plain = site.decide(request)[0]
    assert isinstance(plain, SendFile) and plain.candidate is None
    # A 404 page is the body of another status: never a candidate.
    missing = site.decide(parse(f"GET /nothing HTTP/1.1\n{HOST}"), b"key")[0]
    assert isinstance(missing, SendFile) and missing.candidate is None


def test_listing_negotiates_json(root: Path) -> None:
    head = f"GET /files/ HTTP/1.1\n{HOST}\nAccept: application/json"
    plan = make_site(root).decide(parse(head))[0]
    assert isinstance(plan, Page) and dict(plan.headers)["Content-Type"] == "application/json"
    assert b'"a.txt"' in plan.body


@pytest.mark.parametrize(
    ("path", "html"),
    [("/", True), ("/a", True), ("/a.html", True), ("/A.HTM", True), ("/a.css", False)],
)
def test_may_be_html(path: str, html: bool) -> None:
    assert may_be_html(path) is html
