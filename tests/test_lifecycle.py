"""Start, stop and supervision of the real process, for every worker model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SITEPEEK, WORKER_MODELS, H11Client, children, start_server


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(params=WORKER_MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def big_site(tmp_path: Path) -> Path:
    (tmp_path / "index.html").write_text("<p>hi</p>\n")
    (tmp_path / "big.bin").write_bytes(os.urandom(64 * 1024 * 1024))
    return tmp_path


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_with_idle_and_inflight_connections_is_quick_and_clean(
    big_site: Path, model: str, sig: int
) -> None:
    server = start_server(big_site, model)
    idle = server.connect()
    H11Client(idle).request("GET", "/")  # now an idle keep-alive connection
    slow = server.connect()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.sendall(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert slow.recv(1024).startswith(b"HTTP/1.1 200")  # in flight, never read further
    started = time.monotonic()
    code = server.stop(sig)
    elapsed = time.monotonic() - started
    idle.close()
    slow.close()
    assert code == 0, server.stderr_text()
    # 0.5 s of grace, then the rest is cut: bounded, never the clients' 30 s send timeout
    # (a busy CI machine adds to the process's own exit).
    assert elapsed < 2.0, elapsed
    assert "Traceback" not in server.stderr_text()


@pytest.fixture
def small_site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<p>hi</p>\n")
    return site


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=str)
def test_a_signal_to_the_whole_group_stops_cleanly_and_leaves_nothing_behind(
    small_site: Path, model: str, sig: int, tmp_path: Path
) -> None:
    """What a terminal does: Ctrl-C, or closing the terminal (SIGHUP), signals the
    whole foreground process group, worker processes included."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    server = start_server(small_site, model, env={"TMPDIR": str(temp)})
    with server.connect() as sock:
        assert H11Client(sock).request("GET", "/").status == 200
    os.killpg(server.proc.pid, sig)
    assert server.stop(sig) == 0, server.stderr_text()
    assert "Traceback" not in server.stderr_text()
    assert "started worker" not in server.stderr_text()  # no worker was replaced
    assert list(temp.iterdir()) == []


def test_a_killed_server_leaves_nothing_in_its_temporary_directory(
    small_site: Path, model: str, tmp_path: Path
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    server = start_server(small_site, model, env={"TMPDIR": str(temp)})
    with server.connect() as sock:
        assert H11Client(sock).request("GET", "/").status == 200
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    server.close_pipes()
    assert list(temp.iterdir()) == []


def test_under_nohup_a_hangup_does_not_stop_the_server(small_site: Path, model: str) -> None:
    server = start_server(small_site, model, launcher=["nohup", *SITEPEEK])
    try:
        os.killpg(server.proc.pid, signal.SIGHUP)
        for _ in range(3):  # fresh connections: a stopping server accepts none
            with server.connect() as sock:
                assert H11Client(sock).request("GET", "/").status == 200
        assert server.proc.poll() is None
    finally:
        assert server.stop() == 0, server.stderr_text()


def test_idle_keep_alive_connection_is_closed_at_once_on_stop(big_site: Path, model: str) -> None:
    server = start_server(big_site, model)
    idle = server.connect()
    H11Client(idle).request("GET", "/")
    server.proc.send_signal(signal.SIGTERM)
    idle.settimeout(2)
    assert idle.recv(1) == b""  # closed by the server, not by our timeout
    idle.close()
    assert server.stop() == 0


def test_killed_process_worker_is_replaced(big_site: Path) -> None:
    server = start_server(big_site, "processes", "--processes", "2")
    try:
        workers = children(server.proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        assert _wait_until(
            lambda: any("started worker" in line for line in server.stderr_lines), 5
        ), server.stderr_text()
        assert f"worker {workers[0]} was killed by SIGKILL" in server.stderr_text()
        assert len(children(server.proc.pid)) == 2
        for _ in range(20):  # whichever worker accepts, every request is served
            with server.connect() as sock:
                assert H11Client(sock).request("GET", "/").status == 200
    finally:
        assert server.stop() == 0


def test_workers_exit_when_the_supervisor_is_killed(big_site: Path) -> None:
    server = start_server(big_site, "processes", "--processes", "2")
    workers = children(server.proc.pid)
    assert len(workers) == 2
    server.proc.kill()
    server.proc.wait()
    server.close_pipes()
    assert _wait_until(lambda: not any(_alive(pid) for pid in workers), 5)


def test_busy_port_moves_to_the_next_one(big_site: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        server = start_server(big_site, "greenlets", "--port", str(port))
        try:
            assert server.port != port
            assert f"Port {port} is in use, using {server.port} instead." in "".join(
                server.stdout_lines
            )
        finally:
            assert server.stop() == 0
        strict = subprocess.run(
            [
                sys.executable,
                "-m",
                "sitepeek",
                "serve",
                str(big_site),
                "--port",
                str(port),
                "--strict-port",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert strict.returncode == 1
        assert (
            strict.stderr.strip() == f"Error: port {port} is already in use (--strict-port is set)"
        )
    finally:
        blocker.close()


def test_restart_on_the_same_port_after_connections(big_site: Path) -> None:
    server = start_server(big_site, "greenlets")
    port = server.port
    with server.connect() as sock:
        H11Client(sock).request("GET", "/")
    assert server.stop() == 0
    again = start_server(big_site, "greenlets", "--port", str(port), "--strict-port")
    try:
        assert again.port == port
    finally:
        assert again.stop() == 0


def test_thousand_idle_keep_alive_connections(big_site: Path, model: str) -> None:
    server = start_server(big_site, model, "--keepalive-timeout", "60")
    sockets: list[socket.socket] = []
    try:
        for _ in range(1000):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            sockets.append(sock)
        for sock in sockets:
            head = sock.recv(4096)
            assert head.startswith(b"HTTP/1.1 200"), head[:100]
        # All 1,000 are held open and idle. At the default limit of 1,000 connections
        # a new client is still served at once: the longest-idle one is reclaimed.
        with server.connect() as sock:
            assert H11Client(sock).request("GET", "/").status == 200
        for sock in sockets[500:550]:  # and the other held ones are still usable
            sock.sendall(b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        for sock in sockets:
            sock.close()
        assert server.stop() == 0


def test_at_the_connection_limit_the_longest_idle_one_is_reclaimed(
    big_site: Path, model: str
) -> None:
    server = start_server(big_site, model, "--max-connections", "3", "--processes", "1")
    held = [server.connect() for _ in range(3)]
    try:
        for sock in held:
            H11Client(sock).request("GET", "/")
        with server.connect() as sock:  # the fourth is served without waiting
            assert H11Client(sock).request("GET", "/").status == 200
        held[0].settimeout(5)
        assert held[0].recv(1) == b""  # the longest idle was closed to make room
        for sock in held[1:]:
            assert H11Client(sock).request("GET", "/").status == 200
    finally:
        for sock in held:
            sock.close()
        assert server.stop() == 0


def test_busy_connections_past_the_limit_wait_in_the_backlog(big_site: Path, model: str) -> None:
    server = start_server(big_site, model, "--max-connections", "1", "--processes", "1")
    busy = server.connect()
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        # A download in flight (we stop reading): busy, so not reclaimable.
        busy.sendall(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert busy.recv(100).startswith(b"HTTP/1.1 200")
        waiting = server.connect()
        waiting.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        waiting.settimeout(0.3)
        with pytest.raises(TimeoutError):
            waiting.recv(1)  # queued, not dropped
        busy.close()
        waiting.settimeout(5)
        assert waiting.recv(100).startswith(b"HTTP/1.1 200")  # served once a slot freed
        waiting.close()
    finally:
        busy.close()
        assert server.stop() == 0
