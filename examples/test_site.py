"""End-to-end tests of examples/site in a real browser, against the server the host
will behave like: clean URLs, the site's own 404 page, live reload."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

import sitepeek

CONNECTED = "window.__sitepeek__ && window.__sitepeek__.connected === true"


def test_home_page(page: Page) -> None:
    page.goto("/")
    expect(page).to_have_title(re.compile("Tidewater"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Field notes that sync themselves.")


def test_clean_url(page: Page) -> None:
    page.goto("/")
    page.get_by_role("link", name="Privacy").click()
    expect(page).to_have_url(re.compile(r"/privacy$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Privacy")


def test_missing_page_gets_the_sites_404_page(page: Page) -> None:
    response = page.goto("/no/such/page")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", level=1)).to_have_text("Page not found")


@pytest.mark.sitepeek(spa="index.html")
def test_client_side_route_with_a_server_of_its_own(page: Page) -> None:
    # This test's server falls back to index.html, as a single-page app's host would;
    # base_url follows it.
    response = page.goto("/app/settings")
    assert response is not None and response.status == 200
    expect(page).to_have_title(re.compile("Tidewater"))


def test_live_reload(page: Page, sitepeek_server: sitepeek.Server) -> None:
    page.goto("/about/")
    page.wait_for_function(CONNECTED)
    # A change to a stylesheet is swapped in place: no navigation.
    sitepeek_server.reload("css/site.css")
    page.wait_for_function("window.__sitepeek__.cssSwaps === 1")
    # Any other change reloads the page.
    with page.expect_navigation():
        sitepeek_server.reload("about/index.html")
    expect(page.get_by_role("heading", level=1)).to_have_text("About Tidewater")
