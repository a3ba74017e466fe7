"""sitepeek.Server: the Python API, against real servers (subprocesses) on port 0.

Every server a test starts is checked after it: its process group is gone and no thread
of ours is left in this process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sitepeek
from conftest import H11Client, Response, build_site

SITEPEEK = (sys.executable, "-m", "sitepeek")
FAST_FAILURE_S = 10.0  # a server that cannot start says so well within this


# -- helpers ----------------------------------------------------------------------------
def live_group(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that still run (zombies left to init do not)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def our_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("sitepeek")]


@pytest.fixture
def started() -> Iterator[list[sitepeek.Server]]:
    """Servers a test starts; after it, none may have left a process or a thread."""
    servers: list[sitepeek.Server] = []
    yield servers
    for server in servers:
        if server.running:
            server.stop()
        assert live_group(server.pid) == [], f"{server} left processes behind"
    assert our_threads() == []


def model_options(model: str) -> dict[str, Any]:
    return {"workers": model, **({"processes": 2} if model == "processes" else {})}


def start(started: list[sitepeek.Server], root: Path, **options: Any) -> sitepeek.Server:
    server = sitepeek.Server(root, **options)
    started.append(server)
    return server


def get(server: sitepeek.Server, target: str, headers: dict[str, str] | None = None) -> Response:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        return H11Client(sock).request("GET", target, headers)


def cli_error(*args: str, cwd: Path | None = None) -> str:
    """The ``Error:`` line the command line prints for ``sitepeek serve ARGS``."""
    result = subprocess.run(
        [*SITEPEEK, "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if not k.startswith("SITEPEEK_")},
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    return errors[-1].removeprefix("Error: ")


# -- serving ----------------------------------------------------------------------------
def test_serves_the_site_and_stops_cleanly(
    site: Path, worker_model: str, started: list[sitepeek.Server]
) -> None:
    with start(started, site, **model_options(worker_model)) as server:
        assert server.url == f"http://127.0.0.1:{server.port}/"
        assert server.running
        response = get(server, "/small.txt")
        assert response.status == 200
        assert response.body == (site / "small.txt").read_bytes()
        assert server.config.workers == worker_model
    assert not server.running
    assert server.stop() == 0  # idempotent: the status of the first stop
    assert "GET /small.txt 200" in server.log
    assert f"Workers:  {worker_model}" in server.log


def test_two_servers_at_once(
    tmp_path: Path, worker_model: str, started: list[sitepeek.Server]
) -> None:
    roots = []
    for name in ("one", "two"):
        root = tmp_path / name
        root.mkdir()
        (root / "name.txt").write_text(name)
        roots.append(root)
    first = start(started, roots[0], **model_options(worker_model))
    second = start(started, roots[1], **model_options(worker_model))
    assert first.port != second.port
    assert get(first, "/name.txt").body == b"one"
    assert get(second, "/name.txt").body == b"two"
    assert second.stop() == 0
    assert get(first, "/name.txt").body == b"one"  # the other one serves on
    assert first.stop() == 0


def test_options_reach_the_server(
    site: Path, tmp_path: Path, worker_model: str, started: list[sitepeek.Server]
) -> None:
    (tmp_path / "sitepeek.toml").write_text(
        "cors = true\nheader = ['X-From-File: 1']\ncompress = false\n"
    )
    server = start(
        started,
        site,
        config_dir=tmp_path,
        spa="index.html",
        header=[("X-Test", "yes, it is")],
        cors=False,  # no --no-cors on the command line: still wins over the file
        **model_options(worker_model),
    )
    response = get(server, "/deep/link", {"Accept": "text/html"})
    assert response.status == 200
    assert b"<h1>Home</h1>" in response.body
    assert response.header("x-test") == "yes, it is"
    assert response.header("x-from-file") is None  # a list given replaces the file's
    assert response.header("access-control-allow-origin") is None
    compressible = get(server, "/app.js", {"Accept-Encoding": "gzip"})
    assert compressible.header("content-encoding") is None  # the file's compress = false
    assert server.config.spa == "index.html"
    assert server.config.cors is False


def test_the_environment_is_read_only_when_given(
    site: Path, worker_model: str, started: list[sitepeek.Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SITEPEEK_SPA", "true")
    monkeypatch.setenv("SITEPEEK_PORT", "1")  # would fail: the API's port is 0 unless given
    plain = start(started, site, **model_options(worker_model))
    assert get(plain, "/deep/link", {"Accept": "text/html"}).status == 404
    told = start(started, site, environ=os.environ, **model_options(worker_model))
    assert get(told, "/deep/link", {"Accept": "text/html"}).status == 200


def test_base_path_is_part_of_the_url(
    site: Path, worker_model: str, started: list[sitepeek.Server]
) -> None:
    server = start(started, site, base="/repo", **model_options(worker_model))
    assert server.url == f"http://127.0.0.1:{server.port}/repo/"
    assert get(server, "/repo/small.txt").status == 200


# -- failing to start -------------------------------------------------------------------
BAD_OPTIONS = [
    ({"port": "abc"}, ["--port", "abc"]),
    ({"port": 70000}, ["--port", "70000"]),
    ({"workers": "fibers"}, ["--workers", "fibers"]),
    ({"spa": "../index.html"}, ["--spa", "../index.html"]),
    ({"header": ["no colon"]}, ["--header", "no colon"]),
    ({"header": [("Content-Length", "1")]}, ["--header", "Content-Length: 1"]),
    ({"proxy": ["/api=ftp://x"]}, ["--proxy", "/api=ftp://x"]),
    ({"open": "docs"}, ["--open", "docs"]),
    ({"reload_delay": -1}, ["--reload-delay", "-1"]),
    ({"keepalive_timeout": "soon"}, ["--keepalive-timeout", "soon"]),
]


@pytest.mark.parametrize(("options", "args"), BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_a_bad_option_fails_with_the_command_lines_message(
    site: Path, options: dict[str, Any], args: list[str], started: list[sitepeek.Server]
) -> None:
    with pytest.raises(sitepeek.OptionError) as failure:
        start(started, site, **options)
    assert str(failure.value) == cli_error(str(site), *args)
    assert isinstance(failure.value, ValueError)


def test_an_unknown_option_is_named_with_a_suggestion(site: Path) -> None:
    suggestion = r"^No such option 'clean_url' \(did you mean 'clean_urls'\?\)\.$"
    with pytest.raises(sitepeek.OptionError, match=suggestion):
        sitepeek.Server(site, clean_url=False)


def test_a_value_of_the_wrong_type_is_named(site: Path) -> None:
    wrong = r"^Invalid value for '--compress': expected true or false, got a string \('no'\)$"
    with pytest.raises(sitepeek.OptionError, match=wrong):
        sitepeek.Server(site, compress="no")
    with pytest.raises(sitepeek.OptionError, match=r"got object$"):
        sitepeek.Server(site, base=object())


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_bad_root_fails_with_the_command_lines_message(
    tmp_path: Path, kind: str, started: list[sitepeek.Server]
) -> None:
    root = tmp_path / "root"
    if kind == "file":
        root.write_text("not a directory")
    began = time.monotonic()
    with pytest.raises(sitepeek.OptionError) as failure:
        start(started, root)
    assert time.monotonic() - began < FAST_FAILURE_S
    assert str(failure.value) == cli_error(str(root))
    assert "Usage: sitepeek serve" in failure.value.log
    assert failure.value.__notes__ == ["sitepeek's output:\n" + failure.value.log.rstrip("\n")]


def test_a_bad_config_file_fails_with_the_command_lines_message(
    site: Path, tmp_path: Path, started: list[sitepeek.Server]
) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.sitepeek]\nclean-url = false\n")
    with pytest.raises(sitepeek.OptionError) as failure:
        start(started, site, config_dir=tmp_path)
    assert str(failure.value) == cli_error(str(site), cwd=tmp_path)
    assert "did you mean 'clean-urls'" in str(failure.value)


def test_a_busy_port_fails_with_the_servers_message(
    site: Path, worker_model: str, started: list[sitepeek.Server]
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        began = time.monotonic()
        with pytest.raises(sitepeek.ServerError) as failure:
            start(started, site, port=port, strict_port=True, **model_options(worker_model))
        assert time.monotonic() - began < FAST_FAILURE_S
    assert not isinstance(failure.value, sitepeek.OptionError)  # exit status 1, not 2
    assert str(failure.value) == f"port {port} is already in use (--strict-port is set)"
    assert str(failure.value) in failure.value.log
    assert our_threads() == []


def test_a_server_that_does_not_start_in_time_is_killed(
    site: Path, worker_model: str, started: list[sitepeek.Server]
) -> None:
    # No interpreter prints its URL within a millisecond of being started.
    with pytest.raises(sitepeek.ServerError, match=r"^sitepeek did not start within 0.001 s$"):
        start(started, site, start_timeout=0.001, **model_options(worker_model))
    assert our_threads() == []


# -- stopping -------------------------------------------------------------------------
def test_stop_while_a_client_is_mid_download(
    tmp_path: Path, worker_model: str, started: list[sitepeek.Server]
) -> None:
    size = 256 * 1024 * 1024  # far more than the socket buffers on both sides hold
    with open(tmp_path / "big.bin", "wb") as f:
        f.truncate(size)
    server = start(started, tmp_path, **model_options(worker_model))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        began = time.monotonic()
        assert server.stop() == 0
        stop_s = time.monotonic() - began
        received = len(first)
        while True:  # the rest ends: EOF or a reset, never a hang (10 s timeout)
            try:
                data = sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not data:
                break
            received += len(data)
    assert received < size
    assert stop_s < server.stop_timeout
    assert "Traceback" not in server.log


def test_a_server_nobody_stopped_ends_with_its_caller(site: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sitepeek
        server = sitepeek.Server({str(site)!r})
        print(server.pid, flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert live_group(int(result.stdout)) == []


def test_a_server_whose_caller_is_killed_stops_too(
    site: Path, worker_model: str, tmp_path: Path
) -> None:
    """SIGKILL leaves no finalizer to run: the server sees its lifeline (its standard
    input, a pipe from the caller) end and stops, its whole group with it, and removes
    the directory the caller made for it to start in."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    code = textwrap.dedent(
        f"""
        import sys, sitepeek
        server = sitepeek.Server({str(site)!r}, workers={worker_model!r})
        print(server.pid, server.port, flush=True)
        sys.stdin.read()  # until the test kills us
        """
    )
    caller = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(temp)},
    )
    assert caller.stdout is not None and caller.stdin is not None
    pid, port = map(int, caller.stdout.readline().split())
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # serving
    caller.kill()
    caller.wait()
    caller.stdin.close()
    caller.stdout.close()
    deadline = time.monotonic() + 15
    while live_group(pid):  # (no event to await in another session's process group)
        assert time.monotonic() < deadline, f"the server group {pid} outlived its caller"
        time.sleep(0.05)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert list(temp.iterdir()) == []


# -- live reload ------------------------------------------------------------------------
def test_wait_for_reload_sees_a_change(
    tmp_path: Path, worker_model: str, started: list[sitepeek.Server]
) -> None:
    (tmp_path / "site").mkdir()
    root = build_site(tmp_path / "site")
    server = start(started, root, **model_options(worker_model))
    with server.wait_for_reload() as reload:
        (root / "new.html").write_text("<p>new</p>")
    assert reload.paths == ("new.html",)
    assert server.reload() == ("index.html",)
    assert server.reload("style.css") == ("style.css",)
    assert server.stop() == 0  # the log is complete once the server has stopped
    assert "reload · 1 file · style.css" in server.log


def test_wait_for_reload_times_out_when_nothing_changes(
    site: Path, started: list[sitepeek.Server]
) -> None:
    server = start(started, site)
    waiter = server.wait_for_reload(timeout=0.3)
    try:
        with pytest.raises(TimeoutError, match=r"^no reload message within 0\.3 s$"):
            waiter.wait()
    finally:
        waiter.close()
    assert waiter.paths is None


def test_reload_helpers_refuse_when_reload_is_off(
    site: Path, started: list[sitepeek.Server]
) -> None:
    server = start(started, site, reload=False)
    with pytest.raises(sitepeek.ServerError, match="live reload is off"):
        server.reload()
    running = start(started, site)
    with pytest.raises(FileNotFoundError):
        running.reload("no-such-file.html")
    with pytest.raises(ValueError, match="outside the served root"):
        running.reload("../root-outside/secret.txt")


# -- the caller's process ---------------------------------------------------------------
def test_importing_sitepeek_loads_no_server_machinery(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>hi</p>")
    code = (
        "import sys, threading\n"
        "import sitepeek\n"
        "assert 'sitepeek.api' not in sys.modules\n"
        "heavy = {'gevent', 'click', 'watchdog', 'sitepeek.handler'}\n"
        f"with sitepeek.Server({str(tmp_path)!r}) as server:\n"
        "    server.reload()\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
        "assert threading.active_count() == 1\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_server_is_stopped_when_collected(site: Path) -> None:
    code = textwrap.dedent(
        f"""
        import gc, os, sitepeek
        server = sitepeek.Server({str(site)!r})
        pid = server.pid
        del server
        gc.collect()
        assert not os.path.exists(f"/proc/{{pid}}"), "still running"
        print(pid)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert live_group(int(result.stdout)) == []


def test_readme_documents_every_public_member() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Use it from Python and pytest", 1)[1].split("\n## ", 1)[0]
    members = [name for name in vars(sitepeek.Server) if not name.startswith("_")]
    members += ["url", "port", "root", "config"]  # set on start
    assert members and all(f"`{name}" in section for name in members)


def test_works_in_a_gevent_patched_process(tmp_path: Path, worker_model: str) -> None:
    (tmp_path / "small.txt").write_bytes(b"0123456789" * 100)
    code = textwrap.dedent(
        f"""
        from gevent import monkey
        monkey.patch_all()
        import urllib.request, sitepeek
        with sitepeek.Server({str(tmp_path)!r}, workers={worker_model!r}) as server:
            body = urllib.request.urlopen(server.url + "small.txt").read()
            paths = server.reload("small.txt")
        print(len(body), paths, server.stop())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(" ", 1) == ["1000", "('small.txt',) 0\n"]


def test_keyword_names_of_the_api_are_no_option_names() -> None:
    from sitepeek.config import OPTIONS

    assert {"config_dir", "environ", "start_timeout", "stop_timeout", "root"}.isdisjoint(
        option.name for option in OPTIONS
    )
