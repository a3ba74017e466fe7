"""Live reload in a real browser: headless Chromium (Debian's) driven by Playwright.

One browser for the module, a fresh context per test, and for every test a site and a
server of its own (tests edit files), for every worker model. Every wait is on a
condition in the page; navigations of the main frame are counted in the test, so "no
reload" and "exactly one reload" are facts, not timing guesses.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    WebSocketRoute,
    sync_playwright,
)

from conftest import WORKER_MODELS, Server, start_server, stop_cleanly

WAIT_MS = 15_000  # upper bound for any single awaited condition (a loaded CI machine)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CONNECTED = "window.__sitepeek__ && window.__sitepeek__.connected === true"
# Connected, and the server acknowledged every URL the tab reported it loaded: from here
# a build is decided from what the tab shows, not as for a tab that has not said yet.
REPORTED = (
    f"{CONNECTED} && window.__sitepeek__.reported > 0"
    " && window.__sitepeek__.noted === window.__sitepeek__.reported"
)


# -- the site -------------------------------------------------------------------------
def png(width: int, height: int, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A valid truecolour PNG of the given size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data))
        )

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack("!IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def page_html(title: str) -> str:
    # A tall page, so there is a scroll position to keep. The browser restores scroll on
    # reload by itself; "manual" turns that off, so the test sees sitepeek's own.
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>t</title>"
        "<script>history.scrollRestoration = 'manual';</script>"
        '<link rel="stylesheet" href="style.css"></head><body>'
        f'<h1>{title}</h1><h2>imported</h2><img id="pic" src="pic.png" alt="">'
        '<div style="height: 5000px"></div>'
        "</body></html>\n"
    )


def build_site(root: Path) -> Path:
    (root / "index.html").write_text(page_html("Home"))
    (root / "style.css").write_text('@import url("imported.css");\nh1 { color: rgb(255, 0, 0) }\n')
    (root / "imported.css").write_text("h2 { color: rgb(0, 128, 0) }\n")
    (root / "pic.png").write_bytes(png(10, 10))
    (root / "gen").mkdir()
    return root


# -- fixtures -------------------------------------------------------------------------
@pytest.fixture(scope="module", params=WORKER_MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    executable = shutil.which("chromium")
    assert executable, "Chromium is missing: ./run-tests installs Debian's chromium package"
    browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    yield context
    context.close()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    return build_site(root)


@pytest.fixture
def server(site: Path, model: str) -> Iterator[Server]:
    # A longer quiet period than the 30 ms default: on a loaded CI machine the test's
    # own writer can stall for tens of milliseconds inside a "burst" and rightly
    # split it in two. Coalescing itself is what these tests check.
    server = start_server(site, model, "--reload-delay", "150")
    yield server
    stop_cleanly(server)


class Tab:
    """A page that counts its main-frame navigations after it first loaded.

    Each document it opens or reloads to is ready once the server has acknowledged what
    it loaded (``reports=False``: once connected, for a tab whose reports are dropped).
    """

    def __init__(self, page: Page, *, reports: bool = True) -> None:
        self.page = page
        self.navigations = 0
        self.ready = REPORTED if reports else CONNECTED
        page.on("framenavigated", self._navigated)

    def _navigated(self, frame: object) -> None:
        if frame is self.page.main_frame:
            self.navigations += 1

    def open(self, url: str) -> Tab:
        response = self.page.goto(url)
        assert response is not None and response.status == 200
        self.wait_ready()
        # Marks this document: a reload replaces it with one that has no mark.
        self.page.evaluate("window.__original__ = true")
        self.navigations = 0
        return self

    def wait_ready(self) -> None:
        self.page.wait_for_function(self.ready)

    def wait_for(self, expression: str) -> None:
        self.page.wait_for_function(expression)

    def wait_reloaded(self, h1: str) -> None:
        """A new document with heading ``h1``, ready (see the class)."""
        self.wait_for(
            f"!window.__original__ && document.querySelector('h1')?.textContent === {h1!r}"
            f" && {self.ready}"
        )
        self.page.evaluate("window.__original__ = true")

    def state(self, name: str) -> int:
        value = self.page.evaluate(f"window.__sitepeek__.{name}")
        assert isinstance(value, int)
        return value

    def same_document(self) -> bool:
        return bool(self.page.evaluate("window.__original__ === true"))


@pytest.fixture
def tab(context: BrowserContext, server: Server) -> Tab:
    return Tab(context.new_page()).open(server.url + "/")


def reload_log(server: Server) -> str:
    """The server's reload lines, to explain an unexpected navigation."""
    return "".join(line for line in server.stdout_lines if line.startswith("reload"))


def computed(tab: Tab, selector: str, prop: str) -> str:
    value = tab.page.evaluate(
        "([s, p]) => getComputedStyle(document.querySelector(s))[p]", [selector, prop]
    )
    return str(value)


# -- tests ----------------------------------------------------------------------------
def test_editing_html_reloads_the_page(tab: Tab, server: Server) -> None:
    (server.root / "index.html").write_text(page_html("Edited"))
    tab.wait_reloaded("Edited")
    assert tab.navigations == 1


def test_the_client_script_body_is_sent_once(context: BrowserContext, server: Server) -> None:
    """What the README says of reload.js: its URL is versioned and it is cacheable for
    good, so its body crosses the wire once; Chromium revalidates it on later page loads
    (a reload included) and each of those gets a 304 without a body."""
    page = context.new_page()
    statuses: list[int] = []
    page.on(
        "response",
        lambda r: statuses.append(r.status) if "/__sitepeek__/reload.js" in r.url else None,
    )
    tab = Tab(page).open(server.url + "/")
    (server.root / "index.html").write_text(page_html("Edited"))
    tab.wait_reloaded("Edited")
    (server.root / "index.html").write_text(page_html("Edited again"))
    tab.wait_reloaded("Edited again")
    assert statuses[0] == 200
    assert all(status == 304 for status in statuses[1:]), statuses
    assert tab.navigations == 2


def test_editing_css_swaps_it_without_navigation(tab: Tab, server: Server) -> None:
    assert computed(tab, "h1", "color") == "rgb(255, 0, 0)"
    (server.root / "style.css").write_text(
        '@import url("imported.css");\nh1 { color: rgb(0, 0, 255) }\n'
    )
    tab.wait_for("getComputedStyle(document.querySelector('h1')).color === 'rgb(0, 0, 255)'")
    assert tab.state("cssSwaps") == 1
    assert tab.same_document()
    assert tab.navigations == 0


def test_editing_an_imported_stylesheet_swaps_it_without_navigation(
    tab: Tab, server: Server
) -> None:
    assert computed(tab, "h2", "color") == "rgb(0, 128, 0)"
    (server.root / "imported.css").write_text("h2 { color: rgb(0, 0, 255) }\n")
    tab.wait_for("window.__sitepeek__.cssSwaps === 1")
    tab.wait_for("getComputedStyle(document.querySelector('h2')).color === 'rgb(0, 0, 255)'")
    assert computed(tab, "h1", "color") == "rgb(255, 0, 0)"  # the rest still applies
    assert tab.same_document()
    assert tab.navigations == 0


def test_changing_an_image_refreshes_it_without_navigation(tab: Tab, server: Server) -> None:
    tab.wait_for("document.getElementById('pic').complete")
    assert tab.page.evaluate("document.getElementById('pic').naturalWidth") == 10
    (server.root / "pic.png").write_bytes(png(24, 12, (30, 30, 200)))
    tab.wait_for("document.getElementById('pic').naturalWidth === 24")
    assert tab.state("imageRefreshes") == 1
    assert tab.same_document()
    assert tab.navigations == 0


# The tab below never says what it loaded, as a tab opened a moment before a build has
# not yet: its "loaded" messages are dropped before they leave the page.
SILENT_TAB = """
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  if (typeof data === "string" && data.includes('"type":"loaded"')) return;
  return send.call(this, data);
};
"""


def test_a_tab_that_has_not_reported_swaps_what_it_shows_and_reloads_for_the_rest(
    context: BrowserContext, server: Server
) -> None:
    page = context.new_page()
    page.add_init_script(SILENT_TAB)
    tab = Tab(page, reports=False).open(server.url + "/")
    assert tab.state("noted") == 0  # the server knows nothing of what it loaded
    (server.root / "style.css").write_text("h1 { color: rgb(0, 0, 255) }\n")
    tab.wait_for("getComputedStyle(document.querySelector('h1')).color === 'rgb(0, 0, 255)'")
    assert tab.state("cssSwaps") == 1
    (server.root / "pic.png").write_bytes(png(24, 12, (30, 30, 200)))
    tab.wait_for("document.getElementById('pic').naturalWidth === 24")
    assert tab.state("imageRefreshes") == 1
    assert tab.same_document() and tab.navigations == 0, reload_log(server)
    # A stylesheet this page does not link: the client cannot swap it, so it reloads.
    (server.root / "other.css").write_text("p { margin: 0 }\n")
    tab.wait_reloaded("Home")
    assert tab.navigations == 1


def test_a_page_whose_socket_reaches_a_worker_behind_it_is_not_reloaded_again(
    context: BrowserContext, server: Server
) -> None:
    """With --workers processes the supervisor tells its workers of a build one after
    another: the page a tab reloaded to may connect to a worker that has not handled
    that build yet. Its hello says an older site version with a build in flight, and
    the build's message comes later; the page shows that build already, so it stays.
    (The worker's lag is played here by rewriting the real server's hello.)"""
    page = context.new_page()
    tab = Tab(page).open(server.url + "/")
    lagging: list[dict[str, object]] = []

    def route(ws: WebSocketRoute) -> None:
        upstream = ws.connect_to_server()

        def down(message: str | bytes) -> None:
            hello = json.loads(message)
            if hello["type"] != "hello" or lagging:
                ws.send(message)
                return
            site = hello["site"]
            lagging.append({**hello, "site": site - 1, "building": True})
            ws.send(json.dumps(lagging[0]))
            build = {"type": "reload", "site": site, "ended": hello["ended"]}
            ws.send(json.dumps({**build, "paths": ["index.html"], "action": "reload", "files": []}))

        upstream.on_message(down)

    page.route_web_socket("**/__sitepeek__/ws", route)
    (server.root / "index.html").write_text(page_html("Edited"))
    tab.wait_reloaded("Edited")
    assert lagging, "the new page's socket did not go through the lagging worker"
    (server.root / "index.html").write_text(page_html("Edited again"))
    tab.wait_reloaded("Edited again")
    assert tab.navigations == 2, reload_log(server)


def test_atomic_save_reloads(tab: Tab, server: Server) -> None:
    temp = server.root / ".index.html.sitepeek-save.tmp"
    temp.write_text(page_html("Saved atomically"))
    os.replace(temp, server.root / "index.html")
    tab.wait_reloaded("Saved atomically")
    assert tab.navigations == 1


def test_a_burst_of_300_files_is_one_reload(tab: Tab, server: Server) -> None:
    root = server.root
    for i in range(299):
        (root / "gen" / f"page{i:03}.html").write_text(f"<p>{i}</p>\n")
    (root / "index.html").write_text(page_html("Built"))
    tab.wait_reloaded("Built")
    # Had the burst been split, its second reload would come before this edit's.
    (root / "index.html").write_text(page_html("Sentinel"))
    tab.wait_reloaded("Sentinel")
    assert tab.navigations == 2, reload_log(server)


def test_scroll_position_survives_a_reload(tab: Tab, server: Server) -> None:
    tab.page.evaluate("window.scrollTo(0, 1500)")
    tab.wait_for("window.scrollY === 1500")
    (server.root / "index.html").write_text(page_html("Scrolled"))
    tab.wait_reloaded("Scrolled")
    tab.wait_for("window.scrollY === 1500")
    assert tab.navigations == 1


def test_ten_tabs_reload_and_an_eleventh_still_loads(
    context: BrowserContext, server: Server
) -> None:
    tabs = [Tab(context.new_page()).open(server.url + "/") for _ in range(10)]
    # Ten reload sockets are open; a page load must not queue behind them (as it would
    # behind ten SSE streams: the browser allows six HTTP/1.1 connections per host).
    eleventh = Tab(context.new_page()).open(server.url + "/")
    tabs.append(eleventh)
    (server.root / "index.html").write_text(page_html("Everyone"))
    for each in tabs:
        each.wait_reloaded("Everyone")
    assert [each.navigations for each in tabs] == [1] * 11


def test_tab_reconnects_to_a_restarted_server_and_reloads_once(
    context: BrowserContext, site: Path, model: str
) -> None:
    first = start_server(site, model)
    tab = Tab(context.new_page()).open(first.url + "/")
    port = first.port
    stop_cleanly(first)
    tab.wait_for("window.__sitepeek__.connected === false")
    second = start_server(site, model, "--port", str(port), "--strict-port")
    try:
        assert second.port == port
        tab.wait_reloaded("Home")
        # Once: the next navigation is this edit's.
        (site / "index.html").write_text(page_html("After restart"))
        tab.wait_reloaded("After restart")
        assert tab.navigations == 2
    finally:
        stop_cleanly(second)
