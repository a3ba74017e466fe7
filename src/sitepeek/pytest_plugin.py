"""pytest plugin: the built site served by sitepeek, for end-to-end tests.

Registered through the ``pytest11`` entry point, so installing sitepeek makes it
available; it costs nothing until a test asks for the ``sitepeek_server`` fixture
(this module imports pytest only, :mod:`sitepeek.api` on first use).

- ``sitepeek_server`` (session scope): a :class:`sitepeek.Server` for the directory
  named by ``--sitepeek-root DIR`` (relative to the current directory) or the
  ``sitepeek_root`` ini value (relative to the ini file). Options come from
  ``[tool.sitepeek]`` in pyproject.toml or sitepeek.toml in the rootdir, as the command
  line reads them there, from ``SITEPEEK_*`` environment variables (as on the command
  line, they win over the file), and from the ``sitepeek_options`` fixture (override
  it; it wins over both).
- ``@pytest.mark.sitepeek(root=None, **options)``: the test gets a server of its own,
  started for it and stopped after it, with these options on top of the session's
  (``root`` relative to the rootdir). A marker on a class or module applies to each of
  its tests; the closest marker wins for an option given twice.
- With pytest-xdist each worker process starts its own server, on a free port.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sitepeek.api import Server

ROOT_INI = "sitepeek_root"
ROOT_OPTION = "--sitepeek-root"
MARKER = "sitepeek"
FIXTURE = "sitepeek_server"
REPORT_LINES = 40


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sitepeek", "sitepeek: serve the built site to the tests")
    group.addoption(
        ROOT_OPTION,
        metavar="DIR",
        default=None,
        help=f"directory the {FIXTURE} fixture serves (over the {ROOT_INI} ini value)",
    )
    parser.addini(ROOT_INI, f"directory the {FIXTURE} fixture serves, relative to the ini file")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(root=None, **options): give the test a sitepeek server of its own "
        f"({FIXTURE}), serving root (relative to the rootdir) with these options "
        "(the keyword arguments of sitepeek.Server) on top of the session's.",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A marked test gets its own server: ``sitepeek_server`` turns function-scoped."""
    if FIXTURE not in metafunc.fixturenames:
        return
    markers = list(metafunc.definition.iter_markers(MARKER))
    if not markers:
        return
    options: dict[str, Any] = {}
    for marker in reversed(markers):  # from the module's down to the test's own
        if marker.args:
            raise pytest.UsageError(
                f"{metafunc.definition.nodeid}: @pytest.mark.{MARKER} takes keyword "
                "arguments only (root=..., spa=..., ...)"
            )
        options.update(marker.kwargs)
    metafunc.parametrize(FIXTURE, [options], indirect=True, scope="function", ids=[MARKER])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that used a server shows the server's latest log lines."""
    report = yield
    server = getattr(item, "funcargs", {}).get(FIXTURE)
    if report.failed and server is not None:
        lines = server.log.splitlines()[-REPORT_LINES:]
        report.sections.append((f"sitepeek log (last {REPORT_LINES} lines)", "\n".join(lines)))
    return report


@pytest.fixture(scope="session")
def sitepeek_options() -> dict[str, Any]:
    """Options of the session's server, as keyword arguments of :class:`sitepeek.Server`.

    Override it in a conftest.py to set them for the tests (they win over the config
    file).
    """
    return {}


@pytest.fixture(scope="session")
def sitepeek_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """The site served by sitepeek: ``.url``, ``.port``, ``.reload()``, ... (see
    :class:`sitepeek.Server`). One for the session, or one per test with
    ``@pytest.mark.sitepeek(...)``."""
    marked: dict[str, Any] | None = getattr(request, "param", None)
    if marked is None:
        yield request.getfixturevalue("_sitepeek_session_server")
        return
    options = {**request.getfixturevalue("sitepeek_options"), **marked}
    given_root = options.pop("root", None)
    config = request.config
    root = _session_root(config) if given_root is None else config.rootpath / given_root
    with _start(config, root, options) as server:
        yield server


@pytest.fixture(scope="session")
def _sitepeek_session_server(
    pytestconfig: pytest.Config, sitepeek_options: dict[str, Any]
) -> Iterator[Server]:
    with _start(pytestconfig, _session_root(pytestconfig), sitepeek_options) as server:
        yield server


def _session_root(config: pytest.Config) -> Path:
    given: str | None = config.getoption(ROOT_OPTION)
    if given:
        return config.invocation_params.dir / given
    value: str = config.getini(ROOT_INI)
    if value:
        base = config.inipath.parent if config.inipath else config.rootpath
        return base / value
    pytest.fail(
        f"{FIXTURE}: which site? Set {ROOT_INI} in the pytest configuration "
        f"or pass {ROOT_OPTION} DIR",
        pytrace=False,
    )


def _start(config: pytest.Config, root: Path, options: dict[str, Any]) -> Server:
    from sitepeek.api import Server

    return Server(root, config_dir=config.rootpath, environ=os.environ, **options)
