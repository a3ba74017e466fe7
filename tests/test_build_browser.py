"""--build in a real browser (headless Chromium): the failure overlay, its removal by the
next good build, and CSS-only output swapped in place, in every worker model.

Browser, pages and waits as in test_browser.py; the generator is tests/sitegen.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext

from conftest import WORKER_MODELS, Server, stop_cleanly
from test_browser import Tab, browser, playwright  # noqa: F401  # fixtures
from test_build import edit, go_file, make_project, start_building, wait_for, wait_for_log

WAIT_MS = 20_000  # a build runs between the edit and what the page shows
OVERLAY = "document.getElementById('__sitepeek_overlay__')"
SHADOW = f"{OVERLAY}?.shadowRoot"


@pytest.fixture(scope="module", params=WORKER_MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:  # noqa: F811
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    yield context
    context.close()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path, "h1 { color: rgb(255, 0, 0) }\n")


@pytest.fixture
def server(project: Path, model: str) -> Iterator[Server]:
    server = start_building(project, model)
    go_file(project).touch()
    wait_for_log(project, "end 1")
    wait_for(lambda: any(ln.startswith("reload · ") for ln in server.stdout_lines), "reload")
    yield server
    stop_cleanly(server)


def overlay_text(tab: Tab) -> str:
    return str(tab.page.evaluate(f"{SHADOW}?.textContent ?? ''"))


def test_failed_build_overlay_then_gone_after_the_fix(
    context: BrowserContext, server: Server, project: Path
) -> None:
    tab = Tab(context.new_page()).open(server.url + "/a.html")
    edit(project, "a", "FAIL now")
    tab.wait_for(f"({SHADOW}?.textContent ?? '').includes('says FAIL')")
    assert tab.same_document() and tab.navigations == 0  # the last good page stays
    text = overlay_text(tab)
    assert "build failed (exit 2)" in text
    # The output is text, escaped: "<a>" is shown, not made an element; ANSI red is red.
    assert "error: page <a> says FAIL" in text
    assert "\x1b" not in text
    assert tab.page.evaluate(f"{SHADOW}.querySelector('pre a')") is None
    red = tab.page.evaluate(
        f"[...{SHADOW}.querySelectorAll('pre span')].find(s => s.textContent === 'error:')"
        ".style.color"
    )
    assert red == "rgb(229, 72, 77)"
    assert tab.page.evaluate(f"getComputedStyle({SHADOW}.querySelector('.panel')).overflowY")
    assert tab.page.evaluate("window.__sitepeek__.overlays") == ["build"]

    # A tab opened now shows it too, and dismissing it there leaves the first alone.
    other = Tab(context.new_page()).open(server.url + "/b.html")
    other.wait_for(f"({SHADOW}?.textContent ?? '').includes('says FAIL')")
    other.page.keyboard.press("Escape")
    other.wait_for(f"{OVERLAY} === null")
    assert "says FAIL" in overlay_text(tab)

    edit(project, "a", "alpha fixed")
    tab.wait_reloaded("alpha fixed")
    assert tab.navigations == 1
    assert tab.page.evaluate(f"{OVERLAY}") is None


def test_css_only_build_output_is_swapped_in_place(
    context: BrowserContext, server: Server, project: Path
) -> None:
    tab = Tab(context.new_page()).open(server.url + "/a.html")
    (project / "style.txt").write_text("h1 { color: rgb(0, 0, 255) }\n")
    tab.wait_for("getComputedStyle(document.querySelector('h1')).color === 'rgb(0, 0, 255)'")
    assert tab.state("cssSwaps") == 1
    assert tab.same_document() and tab.navigations == 0


def test_the_overlay_button_dismisses_it(
    context: BrowserContext, server: Server, project: Path
) -> None:
    tab = Tab(context.new_page()).open(server.url + "/a.html")
    edit(project, "c", "FAIL too")
    tab.wait_for(f"({SHADOW}?.textContent ?? '').includes('says FAIL')")
    tab.page.locator("#__sitepeek_overlay__ button").click()
    tab.wait_for(f"{OVERLAY} === null")
    assert tab.same_document()
