"""HTTPS in a real browser: headless Chromium trusts sitepeek's local CA the way a
user's does after `sitepeek https trust` (through the NSS database in $HOME/.pki/nssdb,
never by ignoring certificate errors), registers a service worker (secure contexts
only) and sees a CSS change swapped in over wss://, in every worker model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright

from conftest import WORKER_MODELS, Server, start_server, stop_cleanly
from test_browser import CHROMIUM_ARGS, CONNECTED, WAIT_MS

PAGE = (
    "<!doctype html><html><head><meta charset='utf-8'><title>t</title>"
    '<link rel="stylesheet" href="style.css"></head><body><h1>Secure</h1>'
    "<script>navigator.serviceWorker.register('/sw.js')"
    ".then(() => navigator.serviceWorker.ready)"
    ".then(() => { window.__swReady = true; })"
    ".catch((e) => { window.__swError = String(e); });</script>"
    "</body></html>\n"
)
# Passes every fetch through, so the swapped stylesheet is fetched by the worker too.
WORKER = (
    "self.addEventListener('install', () => self.skipWaiting());\n"
    "self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()));\n"
    "self.addEventListener('fetch', (e) => e.respondWith(fetch(e.request)));\n"
)


@pytest.fixture(scope="module", params=WORKER_MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HOME whose NSS database trusts sitepeek's CA (made by `sitepeek https trust`)."""
    if shutil.which("certutil") is None:
        pytest.fail("certutil is missing: install libnss3-tools")
    home = tmp_path_factory.mktemp("home")
    done = subprocess.run(
        [sys.executable, "-m", "sitepeek", "https", "trust", "--no-system"],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(home), "XDG_DATA_HOME": ""},
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (home / ".pki" / "nssdb" / "cert9.db").exists()
    return home


@pytest.fixture(scope="module")
def browser(home: Path) -> Iterator[Browser]:
    executable = shutil.which("chromium")
    assert executable, "Chromium is missing: ./run-tests installs Debian's chromium package"
    driver: Playwright
    with sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=executable,
            args=CHROMIUM_ARGS,
            env={**os.environ, "HOME": str(home)},
        )
        yield browser
        browser.close()


@pytest.fixture
def server(tmp_path: Path, model: str, home: Path) -> Iterator[Server]:
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text(PAGE)
    (root / "style.css").write_text("h1 { color: rgb(255, 0, 0) }\n")
    (root / "sw.js").write_text(WORKER)
    env = {"HOME": str(home), "XDG_DATA_HOME": ""}
    srv = start_server(root, model, "--https", "--reload-delay", "150", env=env)
    yield srv
    stop_cleanly(srv)


def test_service_worker_and_css_swap_over_wss(browser: Browser, server: Server) -> None:
    assert server.scheme == "https"
    context = browser.new_context()  # (ignore_https_errors stays False)
    context.set_default_timeout(WAIT_MS)
    try:
        page = context.new_page()
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        navigations: list[str] = []
        page.on("framenavigated", lambda frame: navigations.append(frame.url))
        # localhost: a name of the leaf; the page is a secure context only if trusted.
        url = f"https://localhost:{server.port}/"
        response = page.goto(url)
        assert response is not None and response.status == 200
        assert response.security_details() is not None
        assert page.evaluate("window.isSecureContext") is True
        page.wait_for_function("window.__swReady === true || window.__swError")
        assert page.evaluate("window.__swError || null") is None
        page.wait_for_function("navigator.serviceWorker.controller !== null")
        page.wait_for_function(CONNECTED)
        assert sockets and all(s.startswith("wss://localhost:") for s in sockets), sockets
        before = len(navigations)
        (server.root / "style.css").write_text("h1 { color: rgb(0, 0, 255) }\n")
        page.wait_for_function(
            "getComputedStyle(document.querySelector('h1')).color === 'rgb(0, 0, 255)'"
        )
        assert page.evaluate("window.__sitepeek__.cssSwaps") == 1
        assert len(navigations) == before  # swapped in place, not reloaded
    finally:
        context.close()
