"""Real build patterns replayed against tabs in headless Chromium, for every worker model.

Generators do not write in one burst: MkDocs cleans the site and pauses before writing
it again, mkdocs-material pauses 100-250 ms between phases, Sphinx and MkDocs rewrite
files with identical bytes, Vite deletes the old hashed bundle, Sphinx writes dotfiles
on every build. Each test replays one pattern (the pauses slept here are the pattern
itself) with three tabs open (``/``, ``/about/`` and a long page scrolled down) and
asserts, from every document each tab loaded: exactly one reload for each tab the build
affects, none for the others, no wrong page ever shown (a 404, a listing, an older build
after the build), and no tab left on old content.

One browser for the module; a server and a site of their own for each test, with the
default reload settings.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from conftest import WORKER_MODELS, Server, start_server, stop_cleanly
from test_browser import CONNECTED, WAIT_MS, browser, playwright, png  # noqa: F401  # (fixtures)

PAGES = {"": "Home", "about/": "About", "long/": "Long"}
FILLER = 120  # generated pages besides the three the tabs show

# Records every document a tab loads, before the page's own scripts run.
RECORDER = """
if (window.top === window) {
  addEventListener("DOMContentLoaded", () => {
    const meta = document.querySelector('meta[name="build"]');
    window.__seen__(location.pathname, meta ? meta.content : "", document.title);
  });
}
"""
# The server acknowledged every URL this tab loaded: a build now finds it affected or not.
REPORTED = f"""{CONNECTED} && document.readyState === "complete" && (() => {{
  const own = new Set(performance.getEntriesByType("resource").map((e) => new URL(e.name))
    .filter((u) => u.origin === location.origin && !u.pathname.startsWith("/__sitepeek__/"))
    .map((u) => u.pathname));
  return window.__sitepeek__.noted === own.size + 1;
}})()"""


# -- the generated site -----------------------------------------------------------------
def page(title: str, build: int, *, css: str = "/assets/site.css", script: str = "") -> str:
    tall = '<div style="height: 6000px"></div>' if title == "Long" else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f'<meta name="build" content="{build}"><title>{title} {build}</title>'
        "<script>history.scrollRestoration = 'manual';</script>"
        f'<link rel="stylesheet" href="{css}">{script}</head><body>'
        f'<h1>{title} {build}</h1><img src="/img/logo.png" alt="">{tall}'
        "</body></html>\n"
    )


def write_pages(root: Path, build: int, css_for_long: str = "/assets/long.css") -> None:
    """The three pages, in one burst even if this thread stalls between them on a busy
    machine (three files are a hand edit, ended by a 30 ms quiet period): the first
    stays open for writing until the others are written, as a generator's would."""
    held, *rest = PAGES.items()
    with (root / held[0] / "index.html").open("w") as first:
        first.write(page(held[1], build))
        first.flush()
        for path, title in rest:
            (root / path).mkdir(parents=True, exist_ok=True)
            css = css_for_long if title == "Long" else "/assets/site.css"
            (root / path / "index.html").write_text(page(title, build, css=css))


def write_assets(root: Path) -> None:
    (root / "assets").mkdir(exist_ok=True)
    (root / "assets" / "site.css").write_text("h1 { color: rgb(200, 0, 0) }\n")
    (root / "assets" / "long.css").write_text("h1 { color: rgb(0, 0, 200) }\n")
    (root / "img").mkdir(exist_ok=True)
    (root / "img" / "logo.png").write_bytes(png(8, 8))


def write_extras(root: Path, build: int) -> None:
    (root / "404.html").write_text("<!doctype html><title>Not found</title><h1>404</h1>\n")
    (root / "sitemap.xml").write_text("<urlset></urlset>\n")
    (root / "search").mkdir(exist_ok=True)
    (root / "search" / "index.json").write_text(f'{{"build": {build}}}\n')
    (root / "gen").mkdir(exist_ok=True)
    for i in range(FILLER):
        (root / "gen" / f"p{i:03}.html").write_text(f"<p>filler {i}</p>\n")


def build_site(root: Path, build: int = 1) -> None:
    write_assets(root)
    write_extras(root, build)
    write_pages(root, build)


def clean(root: Path) -> None:
    """As MkDocs does before a build: everything in the site directory goes."""
    for entry in root.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module", params=WORKER_MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass
class Seen:
    """One document a tab loaded."""

    path: str
    build: str  # "" for a page without the marker: a 404 page or a listing
    title: str


@dataclass
class Tab:
    page: Page
    path: str
    documents: list[Seen] = field(default_factory=list)
    navigations: int = 0

    def wait(self, expression: str) -> None:
        self.page.wait_for_function(expression)

    def title(self) -> str:
        return str(self.page.evaluate("document.title"))


class Browsing:
    """Tabs of one context, each recording the documents it loads."""

    def __init__(self, context: BrowserContext, server: Server) -> None:
        self.context = context
        self.server = server
        self.tabs: dict[Page, Tab] = {}
        context.expose_binding("__seen__", self._seen)
        context.add_init_script(RECORDER)

    def _seen(self, source: dict[str, Any], path: str, build: str, title: str) -> None:
        tab = self.tabs.get(source["page"])
        if tab is not None:
            tab.documents.append(Seen(path, build, title))

    def open(self, path: str) -> Tab:
        new = self.context.new_page()
        tab = self.tabs[new] = Tab(new, path)
        new.on("framenavigated", lambda frame: self._navigated(tab, frame))
        response = new.goto(self.server.url + "/" + path)
        assert response is not None and response.status == 200
        tab.wait(REPORTED)
        if path == "long/":
            new.evaluate("window.scrollTo(0, 3000)")
            tab.wait("window.scrollY === 3000")
        return tab

    @staticmethod
    def _navigated(tab: Tab, frame: object) -> None:
        if frame is tab.page.main_frame:
            tab.navigations += 1

    def start(self) -> None:
        """From here on, count navigations and documents."""
        for tab in self.tabs.values():
            tab.navigations = 0
            tab.documents.clear()
            tab.page.evaluate("window.__original__ = true")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    build_site(root)
    return root


@pytest.fixture
def server(site: Path, model: str) -> Iterator[Server]:
    server = start_server(site, model)
    yield server
    stop_cleanly(server)


@pytest.fixture
def browsing(browser: Browser, server: Server) -> Iterator[Browsing]:  # noqa: F811
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    yield Browsing(context, server)
    context.close()


@pytest.fixture
def tabs(browsing: Browsing) -> dict[str, Tab]:
    opened = {path: browsing.open(path) for path in PAGES}
    browsing.start()
    return opened


def reload_log(server: Server) -> str:
    return "".join(line for line in server.stdout_lines if line.startswith("reload"))


def wait_for_build(tab: Tab, build: int) -> None:
    """The tab shows ``build`` in a new document whose client is connected and has had
    what it loaded acknowledged (the next build is decided from it)."""
    tab.wait(
        f"!window.__original__ && document.querySelector('meta[name=build]')?.content"
        f" === '{build}' && {REPORTED}"
    )


def assert_documents(tab: Tab, builds: list[int], server: Server) -> None:
    """The tab loaded exactly one document per build in ``builds``, each of that build
    (none wrong: no 404 page, no listing, no older build), and navigated once for each."""
    seen = [document.build for document in tab.documents]
    explain = f"{tab.path!r} loaded {tab.documents}\n{reload_log(server)}"
    assert seen == [str(build) for build in builds], explain
    assert tab.navigations == len(builds), explain


def sentinel(server: Server, tabs: dict[str, Tab], build: int) -> None:
    """One more build that reloads every tab; had the build under test reloaded a tab
    twice, that second reload would come first and be counted."""
    for tab in tabs.values():
        tab.page.evaluate("window.__original__ = true")
    write_pages(server.root, build)
    for tab in tabs.values():
        wait_for_build(tab, build)


# -- the patterns -----------------------------------------------------------------------
@pytest.mark.parametrize("pause_ms", [50, 150, 300])
def test_clean_and_rewrite_with_pauses_is_one_reload(
    tabs: dict[str, Tab], server: Server, pause_ms: int
) -> None:
    root, pause = server.root, pause_ms / 1000
    clean(root)
    time.sleep(pause)  # the generator's pauses between its phases: the pattern
    write_assets(root)  # identical bytes
    time.sleep(pause)
    write_extras(root, 2)
    time.sleep(pause)
    write_pages(root, 2)
    for tab in tabs.values():
        wait_for_build(tab, 2)
    tabs["long/"].wait("window.scrollY === 3000")  # the scroll position is kept
    sentinel(server, tabs, 3)
    for tab in tabs.values():
        assert_documents(tab, [2, 3], server)
    # One line per build, not per phase (the sentinel's may still be on its way to us).
    wait_for_reload_lines(server, 2)
    assert reload_log(server).count("\n") == 2


def test_500_identical_rewrites_and_one_css_change_swap_only_that_css(
    tabs: dict[str, Tab], server: Server
) -> None:
    root = server.root
    for i in range(500):
        target = root / "gen" / f"p{i:03}.html"
        target.write_text(f"<p>filler {i}</p>\n" if i < FILLER else f"<p>new {i}</p>\n")
        if i == 250:
            (root / "assets" / "site.css").write_text("h1 { color: rgb(0, 150, 0) }\n")
    for path in ("", "about/"):
        tabs[path].wait(
            "getComputedStyle(document.querySelector('h1')).color === 'rgb(0, 150, 0)'"
            " && window.__sitepeek__.cssSwaps === 1"
        )
    sentinel(server, tabs, 2)
    for tab in tabs.values():
        assert_documents(tab, [2], server)  # the sentinel's reload only
    # The long page loads another stylesheet: it was left alone.
    assert "rgb(0, 0, 200)" in str(
        tabs["long/"].page.evaluate("getComputedStyle(document.querySelector('h1')).color")
    )


def test_deleting_and_recreating_index_html_60ms_apart(
    tabs: dict[str, Tab], browsing: Browsing, server: Server
) -> None:
    index = server.root / "index.html"
    newcomer = browsing.context.new_page()

    def rewrite() -> None:
        index.unlink()
        deleted.set()
        time.sleep(0.06)  # the pattern: the page is missing for 60 ms
        index.write_text(page("Home", 2))

    deleted = threading.Event()
    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        assert deleted.wait(5)
        # A tab that asks for the page while it is missing gets the new one, not a
        # listing of the directory.
        response = newcomer.goto(server.url + "/")
        assert response is not None and response.status == 200
        assert newcomer.title() == "Home 2"
    finally:
        writer.join()
    home = tabs[""]
    wait_for_build(home, 2)
    sentinel(server, tabs, 3)
    assert_documents(home, [2, 3], server)
    for path in ("about/", "long/"):  # unaffected: only the sentinel reloaded them
        assert_documents(tabs[path], [3], server)


def test_vite_style_hashed_bundle_swap(browsing: Browsing, server: Server) -> None:
    root = server.root

    def app(build: int, digest: str) -> None:
        (root / "assets" / f"index-{digest}.js").write_text(
            f"document.querySelector('h1').dataset.app = '{digest}';\n"
        )
        script = f'<script type="module" src="/assets/index-{digest}.js"></script>'
        (root / "index.html").write_text(page("Home", build, script=script))

    app(1, "aaaa1111")
    tabs = {path: browsing.open(path) for path in PAGES}
    tabs[""].wait("document.querySelector('h1').dataset.app === 'aaaa1111'")
    browsing.start()
    # vite build --watch: empty the output directory, write the new bundle, then the page.
    (root / "assets" / "index-aaaa1111.js").unlink()
    (root / "index.html").unlink()
    time.sleep(0.03)
    app(2, "bbbb2222")
    home = tabs[""]
    wait_for_build(home, 2)
    home.wait("document.querySelector('h1').dataset.app === 'bbbb2222'")  # never blank
    sentinel(server, tabs, 3)
    assert_documents(home, [2, 3], server)
    for path in ("about/", "long/"):
        assert_documents(tabs[path], [3], server)


def test_dotfile_churn_reloads_nothing(tabs: dict[str, Tab], server: Server) -> None:
    root = server.root
    (root / ".doctrees").mkdir()
    for i in range(30):
        (root / ".buildinfo").write_text(f"config: {i}\n")
        (root / ".doctrees" / "environment.pickle").write_bytes(bytes([i]) * 1000)
        (root / ".doctrees" / f"page{i}.doctree").write_bytes(b"x")
    (root / "about" / "index.html").write_text(page("About", 2))
    about = tabs["about/"]
    wait_for_build(about, 2)
    sentinel(server, tabs, 3)
    assert_documents(about, [2, 3], server)
    for path in ("", "long/"):
        assert_documents(tabs[path], [3], server)
    wait_for_reload_lines(server, 2)  # (the sentinel's may still be on its way to us)
    assert ".buildinfo" not in reload_log(server) and ".doctrees" not in reload_log(server)
    assert reload_log(server).count("\n") == 2


# -- no lost reloads ---------------------------------------------------------------------
class HeldSocket:
    """Holds a tab's next reload socket back from the server until released, as a slow
    page load or a navigation between pages does; later sockets go straight through."""

    def __init__(self, tab: Page) -> None:
        self.held: list[Any] = []
        self.holding = True
        tab.route_web_socket("**/__sitepeek__/ws", self._route)

    def _route(self, ws: Any) -> None:
        if self.holding:
            self.holding = False
            self.held.append(ws)
        else:
            ws.connect_to_server()

    def release(self) -> None:
        assert self.held, "the tab opened no reload socket"
        self.held.pop().connect_to_server()


def wait_for_reload_lines(server: Server, count: int) -> None:
    """The server printed ``count`` reload lines: the build is over and announced."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while reload_log(server).count("\n") < count:
        assert time.monotonic() < deadline, reload_log(server)
        time.sleep(0.01)  # polls the server's output, which has no event to await


def test_a_new_tab_whose_page_is_older_than_the_build_reloads_once(
    browsing: Browsing, server: Server
) -> None:
    tab = Tab(browsing.context.new_page(), "")
    browsing.tabs[tab.page] = tab
    tab.page.on("framenavigated", lambda frame: Browsing._navigated(tab, frame))
    socket = HeldSocket(tab.page)
    tab.page.goto(server.url + "/")
    tab.page.wait_for_function("document.readyState === 'complete'")
    assert socket.held
    write_pages(server.root, 2)
    wait_for_reload_lines(server, 1)  # the reload message went out: this tab missed it
    tab.page.evaluate("window.__original__ = true")
    tab.navigations, tab.documents[:] = 0, []
    socket.release()
    wait_for_build(tab, 2)
    sentinel(server, {"": tab}, 3)
    assert_documents(tab, [2, 3], server)


def test_a_tab_between_pages_during_a_build_reloads_once(
    tabs: dict[str, Tab], browsing: Browsing, server: Server
) -> None:
    about = tabs["about/"]
    socket = HeldSocket(about.page)
    about.page.goto(server.url + "/")  # the tab moves on; its new page is build 1
    about.page.wait_for_function("document.readyState === 'complete'")
    write_pages(server.root, 2)
    wait_for_reload_lines(server, 1)
    about.page.evaluate("window.__original__ = true")
    socket.release()
    wait_for_build(about, 2)
    sentinel(server, tabs, 3)
    # The navigation to "/" (build 1, current when served), then its one reload.
    assert [seen.build for seen in about.documents] == ["1", "2", "3"], reload_log(server)
    assert about.navigations == 3
    for path in ("", "long/"):
        assert_documents(tabs[path], [2, 3], server)
