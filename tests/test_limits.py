"""Resource limits on real sockets, for every worker model.

- Out of descriptors: accept() fails with EMFILE. The server logs it once, backs off
  instead of spinning (its CPU time is measured while saturated), stays up, and serves
  again as soon as descriptors are free.
- Memory per idle keep-alive connection: 500 connections that each made one request
  and then stayed open; the growth of the server's RSS (summed over its process tree)
  per connection is printed and bounded.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import (
    WORKER_MODELS,
    Server,
    children,
    start_server,
    stop_cleanly,
)

# -- helpers --------------------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (the process model's workers)."""
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        with contextlib.suppress(OSError):
            todo.extend(children(pid))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` (fields 14 and 15 of /proc/PID/stat)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total += int(match.group(1)) if match else 0
    return total


def fd_counts(pids: list[int]) -> list[int]:
    counts = []
    for pid in pids:
        try:
            counts.append(len(os.listdir(f"/proc/{pid}/fd")))
        except OSError:
            counts.append(0)
    return counts


SMALL = b"small file\n"


def get(sock: socket.socket, path: str = "/small.txt") -> tuple[int, bytes]:
    """One keep-alive GET on ``sock``; the status and the body (framed by Content-Length)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    assert match is not None, head
    length = int(match.group(1))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside the body")
        body += chunk
    return int(head[9:12]), body


def get_new_connection(server: Server, path: str = "/small.txt") -> tuple[int, bytes]:
    with server.connect(timeout=3) as sock:
        return get(sock, path)


def start_server_with_nofile(root: Path, model: str, nofile: int, *args: str) -> Server:
    """conftest.start_server, with RLIMIT_NOFILE set to ``nofile`` (soft and hard).

    sitepeek raises its soft limit to the hard one at start-up, so both are lowered.
    A `python -c` shim sets the limit and execs sitepeek (same pid): unlike preexec_fn,
    nothing runs between fork and exec in this multi-threaded test process.
    """
    shim = (
        "import os, resource, sys; n = int(sys.argv.pop(1)); "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
        "os.execv(sys.executable, [sys.executable, '-m', 'sitepeek', *sys.argv[1:]])"
    )
    return start_server(root, model, *args, launcher=(sys.executable, "-c", shim, str(nofile)))


@pytest.fixture(params=WORKER_MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def small_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("limits")
    (root / "small.txt").write_bytes(SMALL)
    (root / "uncached.txt").write_bytes(b"never requested before the descriptors ran out\n")
    return root


# -- EMFILE on accept ----------------------------------------------------------------

NOFILE = 64
# Clients opened against a server limited to NOFILE descriptors per process: well past
# what one process (or the process model's two workers) can accept.
SATURATING_CLIENTS = {"greenlets": 150, "threads": 150, "processes": 250}
ACCEPT_FAILED = "accept failed"
# CPU time allowed over one second of saturation. The back-off doubles from 10 ms to
# 1 s, so an idle-but-saturated server uses next to none (measured: 0.00 s); a loop
# retrying accept() without backing off would use the whole second.
MAX_SATURATED_CPU_S = 0.25


@pytest.fixture
def nofile_server(small_site: Path, model: str) -> Iterator[Server]:
    # A long keep-alive timeout: the accepted clients must keep their descriptors for
    # the whole test rather than be closed as idle after the default 5 s.
    server = start_server_with_nofile(
        small_site, model, NOFILE, "--keepalive-timeout", "60", "--quiet"
    )
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.stop()


def _saturate(server: Server, count: int) -> list[socket.socket]:
    """Open ``count`` connections (the kernel completes them; the server cannot accept
    them all) and wait until the server reports the failed accept."""
    clients = []
    try:
        for _ in range(count):
            clients.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        deadline = time.monotonic() + 10
        while ACCEPT_FAILED not in server.stderr_text():
            assert time.monotonic() < deadline, "no accept failure logged"
            assert server.proc.poll() is None, server.stderr_text()
            time.sleep(0.05)
    except BaseException:
        for client in clients:
            client.close()
        raise
    return clients


def test_emfile_on_accept_logs_once_backs_off_and_recovers(nofile_server: Server) -> None:
    server = nofile_server
    assert get_new_connection(server) == (200, SMALL)
    clients = _saturate(server, SATURATING_CLIENTS[server.model])
    try:
        time.sleep(0.3)  # past the first, shortest back-off steps
        pids = process_tree(server.proc.pid)
        counts = fd_counts(pids)
        # Really out of descriptors: the busiest accepting process is at the limit.
        assert max(counts) >= NOFILE - 1, counts
        before = cpu_seconds(pids)
        time.sleep(1.0)
        used = cpu_seconds(pids) - before
        print(f"\n{server.model}: {used:.2f} s CPU over 1 s at EMFILE (fds per process {counts})")
        assert used < MAX_SATURATED_CPU_S
        assert server.proc.poll() is None, server.stderr_text()
    finally:
        for client in clients:
            client.close()
    # Descriptors are free again: the back-off (at most 1 s) ends and the server serves.
    deadline = time.monotonic() + 10
    while True:
        try:
            assert get_new_connection(server) == (200, SMALL)
            break
        except OSError:
            assert time.monotonic() < deadline, "not serving again after the clients left"
            time.sleep(0.1)
    failures = [line for line in server.stderr_lines if ACCEPT_FAILED in line]
    # Once per process that accepts: the process model's two workers may each log it.
    accepting = 2 if server.model == "processes" else 1
    assert 1 <= len(failures) <= accepting, failures
    assert "Too many open files" in failures[0]
    stop_cleanly(server)


def test_out_of_descriptors_is_not_reported_as_a_missing_file(small_site: Path) -> None:
    """A file that must be opened while the process has no descriptor left exists: the
    answer must not be 404 (a 503 to retry later is right). The handler is shared by
    every model, so one model shows it."""
    server = start_server_with_nofile(small_site, "greenlets", NOFILE, "--keepalive-timeout", "60")
    try:
        with server.connect() as keep_alive:
            assert get(keep_alive) == (200, SMALL)
            clients = _saturate(server, SATURATING_CLIENTS["greenlets"])
            try:
                status, _ = get(keep_alive, "/uncached.txt")
            finally:
                for client in clients:
                    client.close()
        assert status == 503, f"answered {status} for an existing file"
    finally:
        server.stop()


# -- Memory per idle keep-alive connection -------------------------------------------

IDLE_CONNECTIONS = 500
# RSS growth per idle keep-alive connection (one request served, then idle), summed
# over the process tree. Measured on Linux x86-64, CPython 3.11: greenlets 1.2 KiB and
# processes 1.5 KiB here, since these requests repeat the warm-up's and are answered
# from the hot cache, after which a connection waits as a watcher without a greenlet
# (one whose last request missed keeps its greenlet: about 9 KiB); threads 1.1 KiB (an
# idle connection waits in the selector, never in a thread of its own; 21 KiB when
# each had a thread). The bounds leave a wide margin for the allocator's moods.
MAX_KIB_PER_CONNECTION = {"greenlets": 32, "processes": 32, "threads": 32}


def test_memory_per_idle_keepalive_connection(small_site: Path, model: str) -> None:
    server = start_server(small_site, model, "--keepalive-timeout", "60", "--quiet")
    clients: list[socket.socket] = []
    try:
        # Warm up (imports, caches, the first connections' allocations), then measure.
        for _ in range(20):
            assert get_new_connection(server) == (200, SMALL)
        time.sleep(0.3)
        pids = process_tree(server.proc.pid)
        fds_before, rss_before = sum(fd_counts(pids)), rss_kib(pids)
        for _ in range(IDLE_CONNECTIONS):
            sock = server.connect()
            clients.append(sock)
            assert get(sock) == (200, SMALL)
        time.sleep(0.5)
        pids = process_tree(server.proc.pid)
        # Every connection is still open on the server's side.
        assert sum(fd_counts(pids)) - fds_before >= IDLE_CONNECTIONS
        per_connection = (rss_kib(pids) - rss_before) / IDLE_CONNECTIONS
        print(
            f"\n{model}: {per_connection:.1f} KiB RSS per idle keep-alive connection "
            f"({IDLE_CONNECTIONS} connections, {rss_before / 1024:.1f} MiB before)"
        )
        assert per_connection < MAX_KIB_PER_CONNECTION[model]
    finally:
        for sock in clients:
            sock.close()
        code = server.stop()
    assert code == 0, server.stderr_text()
    assert "Traceback" not in server.stderr_text()


@pytest.mark.parametrize("pieces", [1, 2], ids=["head-whole", "head-in-pieces"])
@pytest.mark.parametrize("model", WORKER_MODELS)
def test_a_client_that_stops_reading_is_disconnected(
    tmp_path: Path, model: str, pieces: int
) -> None:
    """A stalled reader of a large file must not hold its connection forever: once it
    has accepted nothing for --send-timeout, the server closes the connection. Also
    when its request head came in pieces (the threads model parks the connection
    between them: the writing task must not inherit that wait's shutdown-for-reading,
    which would not wake a blocked send)."""
    (tmp_path / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    server = start_server(tmp_path, model, "--send-timeout", "1")
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        head = b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n"
        if pieces == 2:
            sock.sendall(head[:20])
            time.sleep(0.3)  # (the server reads the first piece and waits for more)
        sock.sendall(head[20 if pieces == 2 else 0 :])
        assert sock.recv(12) == b"HTTP/1.1 200"
        # Now read nothing. The server sees no progress, gives up after about 1 s and
        # closes; then everything queued can be drained, and the stream ends short.
        started = time.monotonic()
        while time.monotonic() - started < 3:
            time.sleep(0.1)  # a stalled client, by definition, waits without reading
        sock.settimeout(10)
        received = 0
        while True:
            data = sock.recv(1 << 20)
            if not data:
                break
            received += len(data)
        assert received < 8 * 1024 * 1024  # cut short: the connection was closed
        sock.close()
    finally:
        stop_cleanly(server)
