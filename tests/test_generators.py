"""Live reload with real generators writing into the served directory: MkDocs (with the
mkdocs-material theme) and Sphinx, each run as its user runs it (``mkdocs build``,
``sphinx-build -b html``), five builds with three tabs open, in every worker model.

Each build edits one page's source (the last one edits all three) with a marker the
pages show; every document a tab loads is recorded with the marker it shows. The
assertions: each tab loaded exactly one document per build that changed its page (the
others left it alone), every document shows the build it was loaded for (never a 404,
a listing or an older build), and no tab is left behind. The final build changes every
page, so a second reload of an earlier build would have shown up before it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext

from conftest import WORKER_MODELS, Server, start_server, stop_cleanly
from test_browser import WAIT_MS, browser, playwright  # noqa: F401  # (fixtures)
from test_browser_builds import REPORTED, Seen, Tab, reload_log

BUILD_TIMEOUT = 120.0
# Every document a tab loads, with the build marker its text shows ("" for none).
RECORDER = """
if (window.top === window) {
  addEventListener("DOMContentLoaded", () => {
    const found = /marker(\\d+)x/.exec(document.body ? document.body.innerText : "");
    window.__seen__(location.pathname, found ? found[1] : "", document.title);
  });
}
"""
LONG_TEXT = "A long page, scrolled down while the site is rebuilt. " * 12
PAGES = ("index", "about", "long")
# Which pages each of the five builds edits: the last one edits all of them.
BUILDS = (("about",), ("index",), ("about",), ("long",), PAGES)


@dataclass(frozen=True)
class Generator:
    name: str
    write: Callable[[Path, str, int], None]  # (project, page, marker)
    setup: Callable[[Path], None]
    command: Callable[[Path], list[str]]
    output: str  # the served directory, in the project
    urls: dict[str, str]  # page -> the URL a tab opens
    # mkdocs-material's pages all fetch the search index, which every page edit changes:
    # every tab loaded a file the build changed, so every tab reloads (once).
    every_tab_reloads: bool = False
    loaded: str = "true"  # what the page has fetched once it is ready (a JS expression)


def markdown(project: Path, name: str, marker: int) -> None:
    title = name.capitalize()
    body = f"# {title}\n\n{title} page, marker{marker}x.\n"
    if name == "long":
        body += "".join(f"\n## Part {i}\n\n{LONG_TEXT}\n" for i in range(40))
    (project / "docs" / f"{name}.md").write_text(body)


def mkdocs_setup(project: Path) -> None:
    (project / "docs").mkdir()
    (project / "mkdocs.yml").write_text(
        "site_name: Reload test\ntheme:\n  name: material\nnav:\n"
        "  - index.md\n  - about.md\n  - long.md\n"
    )


def restructured(project: Path, name: str, marker: int) -> None:
    title = name.capitalize()
    body = f"{title}\n{'=' * len(title)}\n\n{title} page, marker{marker}x.\n"
    if name == "index":
        body += "\n.. toctree::\n\n   about\n   long\n"
    if name == "long":
        body += "".join(f"\nPart {i}\n{'-' * 20}\n\n{LONG_TEXT}\n" for i in range(40))
    (project / "src" / f"{name}.rst").write_text(body)


def sphinx_setup(project: Path) -> None:
    (project / "src").mkdir()
    (project / "src" / "conf.py").write_text("project = 'Reload test'\nhtml_theme = 'alabaster'\n")


GENERATORS = {
    "mkdocs-material": Generator(
        "mkdocs-material",
        markdown,
        mkdocs_setup,
        lambda project: [sys.executable, "-m", "mkdocs", "build", "-q", "-f", "mkdocs.yml"],
        "site",
        {"index": "/", "about": "/about/", "long": "/long/"},
        every_tab_reloads=True,
        loaded="performance.getEntriesByType('resource')"
        ".some((e) => e.name.endsWith('/search/search_index.json'))",
    ),
    "sphinx": Generator(
        "sphinx",
        restructured,
        sphinx_setup,
        lambda project: [sys.executable, "-m", "sphinx", "-q", "-b", "html", "src", "out"],
        "out",
        {"index": "/", "about": "/about", "long": "/long"},
    ),
}


# A reload line that did something to a tab ("tabs: 3 unaffected" did nothing).
TOUCHED = re.compile(r"tabs: .*\b(reloaded|swapped|refreshed)\b")


def run_build(generator: Generator, project: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        generator.command(project),
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module", params=WORKER_MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:  # noqa: F811
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    yield context
    context.close()


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_five_real_builds_with_three_tabs_open(
    name: str, model: str, tmp_path: Path, context: BrowserContext
) -> None:
    generator = GENERATORS[name]
    project = tmp_path / "project"
    project.mkdir()
    generator.setup(project)
    for page in PAGES:
        generator.write(project, page, 1)
    run_build(generator, project)
    server = start_server(project / generator.output, model)
    try:
        tabs = open_tabs(context, server, generator)
        shown = dict.fromkeys(PAGES, 1)
        expected: dict[str, list[str]] = {page: [] for page in PAGES}
        for build, edited in enumerate(BUILDS, start=2):
            for page in edited:
                generator.write(project, page, build)
                shown[page] = build
            reloaded = PAGES if generator.every_tab_reloads else edited
            for page in reloaded:
                tabs[page].page.evaluate("window.__original__ = true")
                expected[page].append(str(shown[page]))
            run_build(generator, project)
            for page in reloaded:
                tabs[page].wait(
                    f"!window.__original__ && /marker{shown[page]}x/"
                    f".test(document.body?.innerText ?? '') && {REPORTED}"
                )
        tabs["long"].wait("window.scrollY === 2000")  # kept across its reloads
        for page, tab in tabs.items():
            seen = [document.build for document in tab.documents]
            assert seen == expected[page], f"{page}: {tab.documents}\n{reload_log(server)}"
            assert tab.navigations == len(expected[page]), reload_log(server)

        # One reload per build for the tabs (the navigations above are the proof). A
        # real generator on a loaded machine may pause longer than any quiet period
        # between its pages and its search index (Sphinx under a load of 12 on 2 cores
        # took over 1.2 s): that tail then comes as a line of its own that touches no
        # tab. Every line that did something to a tab is one build's.
        def acted() -> list[str]:
            return [line for line in reload_log(server).splitlines() if TOUCHED.search(line)]

        deadline = time.monotonic() + WAIT_MS / 1000
        while len(acted()) < len(BUILDS):  # (the last may still be on its way)
            assert time.monotonic() < deadline, reload_log(server)
            time.sleep(0.01)  # polls the server's output, which has no event to await
        assert len(acted()) == len(BUILDS), reload_log(server)
    finally:
        stop_cleanly(server)


def open_tabs(context: BrowserContext, server: Server, generator: Generator) -> dict[str, Tab]:
    tabs: dict[Any, Tab] = {}

    def seen(source: dict[str, Any], path: str, build: str, title: str) -> None:
        tab = tabs.get(source["page"])
        if tab is not None:
            tab.documents.append(Seen(path, build, title))

    context.expose_binding("__seen__", seen)
    context.add_init_script(RECORDER)
    opened: dict[str, Tab] = {}
    for page, url in generator.urls.items():
        browser_page = context.new_page()
        tab = tabs[browser_page] = opened[page] = Tab(browser_page, url)
        browser_page.on("framenavigated", lambda frame, tab=tab: _navigated(tab, frame))
        response = browser_page.goto(server.url + url)
        assert response is not None and response.status == 200
        tab.wait(generator.loaded)
        tab.wait(REPORTED)
        if page == "long":
            browser_page.evaluate("window.scrollTo(0, 2000)")
            tab.wait("window.scrollY === 2000")
    for tab in opened.values():
        tab.navigations = 0
        tab.documents.clear()
    return opened


def _navigated(tab: Tab, frame: object) -> None:
    if frame is tab.page.main_frame:
        tab.navigations += 1
