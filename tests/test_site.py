"""Site.decide in-process: the routing edge cases as a table, no socket, no server.

Each case is (options, request head, expected plan) on one small site. The plans are
compared as short tuples, so a case reads like the behaviour it pins down. What needs
a real socket (framing, keep-alive, the writer, every worker model) stays in the
end-to-end suites; this is where the decisions are.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sitepeek import entities, livereload
from sitepeek.changes import BuildFinished, BuildStarted
from sitepeek.config import Config
from sitepeek.hotcache import Candidate
from sitepeek.http11 import Request, RequestParser
from sitepeek.plan import (
    Error,
    Fields,
    Forward,
    Page,
    Plan,
    Redirect,
    SendEntity,
    SendFile,
    Upgrade,
)
from sitepeek.site import MISDIRECTED, Site, may_be_html
from sitepeek.workers.threads import ThreadIo
from sites import CLEAN_OUTCOMES, CLEAN_STATES, LISTING, build_general, build_rules, build_spa
from test_rules import EXAMPLE_CASES

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


def make_site(
    root: Path, broadcaster: livereload.Broadcaster | None = None, **options: Any
) -> Site:
    """A Site as the server makes one; with ``reload=True`` (or a ``broadcaster``) live
    reload is on."""
    reload = options.pop("reload", False) or broadcaster is not None
    config = Config(root=root, reload=False, **options)
    if not reload:
        return Site(config)
    script = livereload.client_script()
    return Site(
        config,
        broadcaster=broadcaster or livereload.Broadcaster(ThreadIo()),
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


def test_a_page_held_for_a_build_is_answered_with_the_rules_the_build_wrote(
    tmp_path: Path,
) -> None:
    (tmp_path / "page.html").write_text("<p>page</p>")
    (tmp_path / "_headers").write_text("/page.html\n  X-Build: one\n")
    broadcaster = livereload.Broadcaster(ThreadIo())
    site = make_site(tmp_path, broadcaster)
    broadcaster.on_event(BuildStarted())
    held = threading.Event()
    wait = broadcaster.wait_until_settled

    def wait_and_say(path: str | None = None) -> None:
        held.set()
        wait(path)

    broadcaster.wait_until_settled = wait_and_say  # type: ignore[method-assign]
    answers: list[Fields] = []
    decide = threading.Thread(
        target=lambda: answers.append(site.decide(parse(f"GET /page.html HTTP/1.1\n{HOST}"))[1])
    )
    decide.start()
    assert held.wait(5)
    (tmp_path / "_headers").write_text("/page.html\n  X-Build: two\n")
    broadcaster.on_event(BuildFinished(True, "build ok 0.1 s", "", ("_headers",)))
    decide.join(5)
    assert answers == [(("X-Build", "two"),)]


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


# -- the production-preview sites ------------------------------------------------------
# The sites test_production.py serves in every worker model (tests/sites.py); their
# routing cases are decided here, and that suite keeps what needs a socket.
@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("production")
    return {
        "general": build_general(base / "general"),
        "spa": build_spa(base / "spa"),
        "rules": build_rules(base / "rules"),
    }


@pytest.fixture(scope="module")
def decide(sites: dict[str, Path]) -> Callable[..., tuple[Any, ...]]:
    """``decide(site, head, **options)``: the plan, described; one Site per options."""
    made: dict[tuple[str, tuple[tuple[str, Any], ...]], Site] = {}

    def plan(name: str, head: str, **options: Any) -> tuple[Any, ...]:
        key = (name, tuple(sorted(options.items())))
        if key not in made:
            made[key] = make_site(sites[name], **options)
        return describe(made[key].decide(parse(head))[0], sites[name])

    return plan


def get(target: str, *fields: str) -> str:
    return "\n".join([f"GET {target} HTTP/1.1", HOST, *fields])


ACCEPT_HTML = "Accept: text/html"
ACCEPT_BROWSER = "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
SPA_INDEX = {"spa": "index.html"}  # --spa
SPA_APP = {"spa": "app.html"}  # --spa app.html
GENERAL_BASE = {"base": "/repo/"}
PLAIN = {"clean_urls": False, "listing": False}
DEV_TEST = {"allowed_host": ("dev.test",)}
FOUR_OH_FOUR = ("file", "404.html", 404)

PRODUCTION_CASES: list[tuple[str, dict[str, Any], str, tuple[Any, ...]]] = [
    # SPA fallback: a page the app routes, whatever the Accept of a browser (or none).
    *[
        ("spa", SPA_INDEX, get(path, *accept), ("file", "index.html", 200))
        for path in (
            "/dashboard",
            "/dashboard/settings/42",
            "/users/",
            "/users/john.doe",  # a dot in the last segment is not an asset (issue 19)
            "/releases/v1.2",
            "/old-page.html",
            "/posts/hello.world/",
            "/route",
        )
        for accept in ((ACCEPT_HTML,), (ACCEPT_BROWSER,), ())
    ],
    ("spa", SPA_APP, get("/dashboard/x", ACCEPT_HTML), ("file", "app.html", 200)),
    ("spa", SPA_APP, get("/", ACCEPT_HTML), ("file", "index.html", 200)),
    # ... never for what does not accept HTML, an asset name, a dotfile, our own URLs.
    ("spa", SPA_INDEX, get("/dashboard", "Accept: application/json"), FOUR_OH_FOUR),
    ("spa", SPA_INDEX, get("/app.js", ACCEPT_HTML), FOUR_OH_FOUR),
    ("spa", SPA_INDEX, get("/img/logo.png", ACCEPT_BROWSER), FOUR_OH_FOUR),
    ("spa", SPA_INDEX, get("/users/john.css", ACCEPT_BROWSER), FOUR_OH_FOUR),
    ("spa", SPA_INDEX, get("/assets/index-4f2a.js.map", ACCEPT_HTML), FOUR_OH_FOUR),
    ("spa", SPA_INDEX, get("/data/USERS.JSON", ACCEPT_HTML), FOUR_OH_FOUR),
    ("spa", SPA_INDEX, get("/fonts/inter.woff2", ACCEPT_BROWSER), FOUR_OH_FOUR),
    ("spa", SPA_INDEX, get("/route.css", ACCEPT_HTML), FOUR_OH_FOUR),
    ("spa", SPA_INDEX, get("/.hidden", ACCEPT_HTML), FOUR_OH_FOUR),  # an existing dotfile
    ("spa", SPA_INDEX, get("/.well-known/x", ACCEPT_HTML), FOUR_OH_FOUR),
    ("spa", SPA_INDEX, get("/.secret/route", ACCEPT_HTML), FOUR_OH_FOUR),
    ("spa", SPA_INDEX, get("/__sitepeek__/route", ACCEPT_HTML), ("error", 404)),
    ("spa", SPA_INDEX, f"DELETE /dashboard HTTP/1.1\n{HOST}\n{ACCEPT_HTML}", ("error", 405)),
    ("spa", {}, get("/dashboard", ACCEPT_HTML), FOUR_OH_FOUR),  # not without --spa
    # ... and existing files, clean URLs included, come first.
    ("spa", SPA_INDEX, get("/", ACCEPT_HTML), ("file", "index.html", 200)),
    ("spa", SPA_INDEX, get("/style.css", ACCEPT_HTML), ("file", "style.css", 200)),
    ("spa", SPA_INDEX, get("/real.html", ACCEPT_HTML), ("file", "real.html", 200)),
    ("spa", SPA_INDEX, get("/real", ACCEPT_HTML), ("file", "real.html", 200)),
    ("spa", SPA_INDEX, get("/app.html", ACCEPT_HTML), ("file", "app.html", 200)),
    # Clean URLs.
    ("general", {}, get("/about"), ("file", "about.html", 200)),
    ("general", {}, get("/about.html"), ("file", "about.html", 200)),
    ("general", {}, get("/about/"), ("redirect", 308, "/about")),
    ("general", {}, get("/about/?q=1"), ("redirect", 308, "/about?q=1")),
    ("general", PLAIN, get("/about"), FOUR_OH_FOUR),
    ("general", PLAIN, get("/about.html"), ("file", "about.html", 200)),
    ("general", PLAIN, get("/about/"), FOUR_OH_FOUR),
    # The custom 404 page.
    ("general", {}, get("/missing"), FOUR_OH_FOUR),
    ("general", {}, get("/missing.js"), FOUR_OH_FOUR),
    ("general", {}, get("/deep/er/missing.html"), FOUR_OH_FOUR),
    # Listings, and --no-listing.
    ("general", {}, get("/list/"), ("page", 200)),
    ("general", PLAIN, get("/list/"), FOUR_OH_FOUR),
    ("general", PLAIN, get("/list/", "Accept: application/json"), FOUR_OH_FOUR),
    ("general", PLAIN, get("/list/a.txt"), ("file", "list/a.txt", 200)),
    # The base path: the site under it, redirects into it, nothing outside it.
    ("general", GENERAL_BASE, get("/repo/"), ("file", "index.html", 200)),
    ("general", GENERAL_BASE, get("/repo/sub/x.css"), ("file", "sub/x.css", 200)),
    ("general", GENERAL_BASE, get("/repo/about"), ("file", "about.html", 200)),
    ("general", GENERAL_BASE, get("/"), ("redirect", 302, "/repo/")),
    ("general", GENERAL_BASE, get("/?a=1&b=2"), ("redirect", 302, "/repo/?a=1&b=2")),
    ("general", GENERAL_BASE, get("/repo"), ("redirect", 302, "/repo/")),
    ("general", GENERAL_BASE, get("/repo?x=2"), ("redirect", 302, "/repo/?x=2")),
    *[
        ("general", GENERAL_BASE, get(target), ("error", 404))
        for target in ("/other", "/index.html", "/sub/x.css", "/repox/", "/rep")
    ],
    ("general", GENERAL_BASE, get("/repo/sub"), ("redirect", 301, "/repo/sub/")),
    ("general", GENERAL_BASE, get("/repo/sub/"), ("file", "sub/index.html", 200)),
    ("general", GENERAL_BASE, get("/repo/about/"), ("redirect", 308, "/repo/about")),
    ("general", GENERAL_BASE, get("/repo/list"), ("redirect", 301, "/repo/list/")),
    ("general", GENERAL_BASE, get("/repo/missing"), FOUR_OH_FOUR),
    # The rules files are never served.
    *[
        ("rules", {}, f"{method} {path} HTTP/1.1\n{HOST}", ("error", 404))
        for path in ("/_redirects", "/_headers")
        for method in ("GET", "HEAD")
    ],
    # Host check: loopback names are served; others only when allowed.
    *[
        ("general", {}, f"GET / HTTP/1.1\nHost: {host}", ("file", "index.html", 200))
        for host in (
            "localhost",
            "localhost:8000",
            "LocalHost:8000",
            "127.0.0.1:8000",
            "127.0.0.1",
            "app.localhost:8000",
            "[::1]:8000",
            "[::1]",
        )
    ],
    *[
        ("general", {}, f"GET / HTTP/1.1\nHost: {host}", ("error", 421))
        for host in (
            "evil.example:8000",
            "evil.example",
            "dev.test",
            "localhost.evil.example:8000",
            "127.0.0.1.nip.io:8000",
        )
    ],
    *[
        ("general", DEV_TEST, f"GET /style.css HTTP/1.1\nHost: {host}", ("file", "style.css", 200))
        for host in ("dev.test", "dev.test:8000", "DEV.TEST")
    ],
    ("general", DEV_TEST, "GET / HTTP/1.1\nHost: other.test", ("error", 421)),
]


@pytest.mark.parametrize(("site", "options", "head", "expected"), PRODUCTION_CASES)
def test_production_sites(
    decide: Callable[..., tuple[Any, ...]],
    site: str,
    options: dict[str, Any],
    head: str,
    expected: tuple[Any, ...],
) -> None:
    assert decide(site, head, **options) == expected


def _rules_expected(status: int, target: str) -> tuple[Any, ...]:
    """EXAMPLE_CASES' spelling of an outcome, as a described plan."""
    if 300 <= status < 400:
        return ("redirect", status, target)
    if target:
        return ("file", target.lstrip("/"), status)
    return ("error", status)


@pytest.mark.parametrize(("url", "status", "target"), EXAMPLE_CASES)
def test_example_redirects(
    decide: Callable[..., tuple[Any, ...]], url: str, status: int, target: str
) -> None:
    """test_rules.py's example _redirects, decided on its site by Site itself."""
    assert decide("rules", get(url)) == _rules_expected(status, target)


@pytest.mark.parametrize("state", list(CLEAN_STATES))
@pytest.mark.parametrize("suffix", ["/about", "/about/", "/about.html"])
def test_clean_url_matrix_never_loops(
    decide: Callable[..., tuple[Any, ...]], state: str, suffix: str
) -> None:
    """Every combination of about, about.html and about/ (resolver.py's table): at most
    one redirect, then the file, the listing or the 404 page."""
    first, final, file = CLEAN_OUTCOMES[state][suffix]
    target = f"/clean/{state}{suffix}"
    plan = decide("general", get(target))
    hops = []
    while plan[0] == "redirect":
        _, status, location = plan
        assert location.startswith("/") and location != target, (target, location)
        hops.append(status)
        assert len(hops) <= 1, f"more than one redirect from {target}"
        plan = decide("general", get(location))
    assert (hops[0] if hops else plan[-1]) == first
    if file == LISTING:
        assert (final, plan) == (200, ("page", 200))
    elif file is not None:
        assert plan == ("file", f"clean/{state}/{file}", final)
    else:
        assert plan == FOUR_OH_FOUR and final == 404
