"""The browser comes from pytest-playwright, the site from sitepeek's pytest plugin
(``sitepeek_root`` in pyproject.toml).

The two-line recipe that points pytest-playwright at the served site is ``base_url``:
every ``page.goto("/about/")`` then goes to sitepeek.
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest

import sitepeek


@pytest.fixture(scope="session")
def base_url(sitepeek_server: sitepeek.Server) -> str:
    return sitepeek_server.url


# Only needed where Playwright's own browser download is out of reach (offline, as
# where this example is tested): Debian's Chromium instead.
@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    chromium = shutil.which("chromium")
    if chromium is None:
        return browser_type_launch_args
    return {
        **browser_type_launch_args,
        "executable_path": chromium,
        "args": ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic"],
    }
