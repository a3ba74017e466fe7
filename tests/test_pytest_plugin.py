"""The pytest plugin, through pytester: each case runs a real pytest session in a
subprocess, whose tests talk to the servers the plugin started and write down what
they saw; after the session, every server's process group must be gone, and at the
session's end no thread of ours was left in it.

Where sitepeek is installed (``pip install -e .``), the plugin comes from its ``pytest11``
entry point, as for users; in a checkout on PYTHONPATH it is loaded with ``-p``.
"""

from __future__ import annotations

import importlib.metadata
import json
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from test_api import live_group

pytest_plugins = ("pytester",)
# Each case is a whole pytest session (and a server or two) in a subprocess.
pytestmark = pytest.mark.timeout(180)

PLUGIN = "sitepeek.pytest_plugin"
ROOT = Path(__file__).resolve().parent.parent

CONFTEST = """
import json, sys, threading
from pathlib import Path
import pytest

RECORD = Path(__file__).parent / "record.jsonl"

def write(**data):
    with RECORD.open("a") as f:
        f.write(json.dumps(data) + "\\n")

@pytest.fixture
def record():
    return write

def pytest_sessionfinish(session):
    threads = [t.name for t in threading.enumerate() if t.name.startswith("sitepeek")]
    write(finish=True, threads=threads, api="sitepeek.api" in sys.modules)
"""

FETCH = """
import os, urllib.error, urllib.request

def fetch(url, accept="text/html"):
    request = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()

def seen(server, **extra):
    return dict(pid=server.pid, port=server.port, url=server.url, **extra)
"""


def entry_point_registered() -> bool:
    return any(
        ep.name == "sitepeek" and ep.value == PLUGIN
        for ep in importlib.metadata.entry_points(group="pytest11")
    )


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    plugin = [] if entry_point_registered() else ["-p", PLUGIN]
    return pytester.runpytest_subprocess(*plugin, "-p", "no:cacheprovider", *args, timeout=120)


def project(pytester: pytest.Pytester, pyproject: str, **tests: str) -> None:
    for name, title in (("site", "Home"), ("other", "Other")):
        (pytester.path / name).mkdir()
        (pytester.path / name / "index.html").write_text(f"<h1>{title}</h1>\n")
    pytester.makepyprojecttoml(pyproject)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(fetch=FETCH, **tests)


def records(pytester: pytest.Pytester) -> list[dict[str, Any]]:
    path = pytester.path / "record.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_nothing_left(seen: list[dict[str, Any]]) -> None:
    for record in seen:
        if record.get("finish"):
            assert record["threads"] == [], record
        elif "pid" in record:
            assert live_group(record["pid"]) == [], record


def test_plugin_is_declared_as_a_pytest11_entry_point() -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        declared = tomllib.load(f)["project"]["entry-points"]["pytest11"]
    assert declared == {"sitepeek": PLUGIN}


def test_session_server_serves_the_configured_site(
    pytester: pytest.Pytester, worker_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker model from the environment, as the command line reads it.
    monkeypatch.setenv("SITEPEEK_WORKERS", worker_model)
    monkeypatch.setenv("SITEPEEK_PROCESSES", "2")
    project(
        pytester,
        '[tool.pytest.ini_options]\nsitepeek_root = "site"\n[tool.sitepeek]\nspa = "index.html"\n',
        test_site=f"""
            import pytest
            from fetch import fetch, seen

            @pytest.fixture(scope="session")
            def sitepeek_options():
                return {{"header": ["X-From-Fixture: 1"]}}

            def test_home(sitepeek_server, record):
                record(**seen(sitepeek_server, home=fetch(sitepeek_server.url)))

            def test_spa_from_the_config_file(sitepeek_server, record):
                status, body = fetch(sitepeek_server.url + "deep/link")
                record(**seen(sitepeek_server, spa=[status, body]))
                assert sitepeek_server.config.workers == {worker_model!r}
                assert sitepeek_server.config.header == (("X-From-Fixture", "1"),)
        """,
    )
    result = run(pytester)
    result.assert_outcomes(passed=2)
    home, spa, finish = records(pytester)
    assert home["pid"] == spa["pid"]  # one server for the session
    assert home["home"][0] == 200 and "<h1>Home</h1>" in home["home"][1]
    assert spa["spa"][0] == 200 and "<h1>Home</h1>" in spa["spa"][1]
    assert finish["api"] is True
    assert_nothing_left([home, spa, finish])


def test_marker_gives_a_test_its_own_server(pytester: pytest.Pytester) -> None:
    project(
        pytester,
        '[tool.pytest.ini_options]\nsitepeek_root = "site"\n',
        test_marked="""
            from pathlib import Path
            import pytest
            from fetch import fetch, seen

            def test_a(sitepeek_server, record):
                record(**seen(sitepeek_server, name="a", body=fetch(sitepeek_server.url)[1]))

            @pytest.mark.sitepeek(root="other", spa="index.html")
            def test_b(sitepeek_server, record):
                status, body = fetch(sitepeek_server.url + "deep/link")
                record(**seen(sitepeek_server, name="b", body=body, status=status))

            def test_c(sitepeek_server, record):
                record(**seen(sitepeek_server, name="c", body=fetch(sitepeek_server.url)[1]))

            @pytest.mark.sitepeek(root="other")
            class TestMarkedClass:
                @pytest.mark.sitepeek(header=["X-Own: 1"])
                def test_d(self, sitepeek_server, record):
                    status, body = fetch(sitepeek_server.url + "deep/link")
                    record(**seen(sitepeek_server, name="d", body=body, status=status))
        """,
    )
    result = run(pytester, "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*test_b?sitepeek? PASSED*"])
    a, b, c, d, finish = records(pytester)
    assert a["pid"] == c["pid"]  # the session's server was kept
    assert len({a["pid"], b["pid"], d["pid"]}) == 3
    assert a["body"].startswith("<h1>Home</h1>") and c["body"].startswith("<h1>Home</h1>")
    assert b["status"] == 200 and b["body"].startswith("<h1>Other</h1>")
    assert d["status"] == 404  # the class's root; spa was only test_b's
    assert_nothing_left([a, b, c, d, finish])


def test_command_line_root_wins_over_the_ini_value(pytester: pytest.Pytester) -> None:
    project(
        pytester,
        '[tool.pytest.ini_options]\nsitepeek_root = "site"\n',
        test_root="""
            from fetch import fetch, seen

            def test_root(sitepeek_server, record):
                record(**seen(sitepeek_server, body=fetch(sitepeek_server.url)[1]))
        """,
    )
    run(pytester, "--sitepeek-root", "other").assert_outcomes(passed=1)
    seen, finish = records(pytester)
    assert seen["body"].startswith("<h1>Other</h1>")
    assert_nothing_left([seen, finish])


def test_without_a_root_the_fixture_says_what_to_set(pytester: pytest.Pytester) -> None:
    project(pytester, "", test_none="def test_x(sitepeek_server): pass\n")
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*sitepeek_server: which site? Set sitepeek_root * or pass --sitepeek-root DIR*"]
    )


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            'sitepeek_root = "site"\n[tool.sitepeek]\nport = "abc"',
            "pyproject.toml [[]tool.sitepeek[]]: key 'port': 'abc' is not an integer",
        ),
        ('sitepeek_root = "missing"', "Invalid value for '[[]DIRECTORY[]]': Directory * does not"),
    ],
    ids=["bad config file", "missing root"],
)
def test_a_server_that_cannot_start_errors_its_tests_fast(
    pytester: pytest.Pytester, setting: str, message: str
) -> None:
    project(
        pytester,
        f"[tool.pytest.ini_options]\n{setting}\n",
        test_fail="def test_x(sitepeek_server): pass\ndef test_y(sitepeek_server): pass\n",
    )
    began = time.monotonic()
    result = run(pytester)
    assert time.monotonic() - began < 60
    result.assert_outcomes(errors=2)  # both tests, one attempt: the error is cached
    result.stdout.fnmatch_lines([f"*sitepeek.OptionError: {message}*"])


def test_a_session_that_does_not_use_it_starts_nothing(pytester: pytest.Pytester) -> None:
    project(pytester, '[tool.pytest.ini_options]\nsitepeek_root = "site"\n')
    pytester.makepyfile(test_plain="def test_plain(record):\n    record(ran=True)\n")
    run(pytester).assert_outcomes(passed=1)
    assert records(pytester) == [{"ran": True}, {"finish": True, "threads": [], "api": False}]
    run(pytester, "--help").stdout.fnmatch_lines(["*--sitepeek-root=DIR*"])


def test_xdist_runs_one_server_per_worker(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    tests = "\n".join(
        f"def test_{n}(sitepeek_server, record):\n"
        f"    record(**seen(sitepeek_server, worker=os.environ['PYTEST_XDIST_WORKER']))\n"
        for n in range(6)
    )
    project(
        pytester,
        '[tool.pytest.ini_options]\nsitepeek_root = "site"\n',
        test_many="import os\nfrom fetch import seen\n" + tests,
    )
    run(pytester, "-n", "2").assert_outcomes(passed=6)
    seen = records(pytester)
    servers = {(r["worker"], r["pid"], r["port"]) for r in seen if "pid" in r}
    assert len(servers) == 2  # one per worker, each on a port of its own
    assert len({worker for worker, _, _ in servers}) == 2
    assert len({port for _, _, port in servers}) == 2
    assert_nothing_left(seen)


def test_a_failing_test_shows_the_servers_log(pytester: pytest.Pytester) -> None:
    project(
        pytester,
        '[tool.pytest.ini_options]\nsitepeek_root = "site"\n',
        test_fails="def test_x(sitepeek_server):\n    assert sitepeek_server.port < 0\n",
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*- sitepeek log (last 40 lines) -*", "sitepeek * serving */site"])
