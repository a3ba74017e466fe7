"""examples/: the Playwright example runs as its users would run it (``cd examples &&
pytest``), in every worker model (``SITEPEEK_WORKERS``, which the plugin reads as the
command line does), against Debian's Chromium."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_pytest_plugin import PLUGIN, entry_point_registered

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.timeout(300)  # a pytest session with a browser and two servers
def test_playwright_example_passes(worker_model: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SITEPEEK_WORKERS": worker_model,
        "PYTHONDONTWRITEBYTECODE": "1",  # nothing written into examples/
    }
    if worker_model == "processes":
        env["SITEPEEK_PROCESSES"] = "2"
    plugin = [] if entry_point_registered() else ["-p", PLUGIN]
    artifacts = ["--output", str(tmp_path / "artifacts")]  # pytest-playwright's
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *plugin, "-p", "no:cacheprovider", "-v", *artifacts],
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The marked test's id joins "chromium" and "sitepeek" in the order the plugins were
    # registered (an entry point, or -p on a checkout): either order is the same test.
    passed = {line.split(" PASSED")[0] for line in result.stdout.splitlines() if " PASSED" in line}
    assert passed >= {
        "test_site.py::test_home_page[chromium]",
        "test_site.py::test_clean_url[chromium]",
        "test_site.py::test_missing_page_gets_the_sites_404_page[chromium]",
        "test_site.py::test_live_reload[chromium]",
    }, result.stdout
    assert passed & {
        "test_site.py::test_client_side_route_with_a_server_of_its_own[chromium-sitepeek]",
        "test_site.py::test_client_side_route_with_a_server_of_its_own[sitepeek-chromium]",
    }, result.stdout
