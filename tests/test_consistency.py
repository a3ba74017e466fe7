"""Consistency under change (issue 8): files edited while they are being served.

A response is one version of a file: entirely the old content, entirely the new, or
a connection closed before the promised Content-Length -- never a complete-looking
body that mixes two versions, never a hang. Between requests, a change on disk is
seen by the very next request (content and validators), whatever the caches hold.

Every test runs once per worker model against a server over a site of its own, which
the tests edit. Large downloads use a small receive buffer and read slowly, so the
server is certainly in the middle of the body when the file changes.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import h11
import pytest

from conftest import H11Client, Response, Server, start_server

TIMEOUT = 5.0
MIB = 1024 * 1024
LARGE = 32 * MIB  # far more than the socket buffers of both ends hold
HEAD_START = 1 * MIB  # read this much before changing the file


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, worker_model: str) -> Iterator[Server]:
    root = tmp_path_factory.mktemp(f"live-{worker_model}") / "root"
    root.mkdir()
    (root / "index.html").write_text("<p>home</p>\n")
    srv = start_server(root, worker_model)
    yield srv
    code = srv.stop()
    text = srv.stderr_text()
    assert code == 0, text
    assert "Traceback" not in text, text
    assert "internal error" not in text, text


def pattern(size: int) -> bytes:
    """``size`` random-looking bytes (a random MiB repeated: cheap, never equal twice)."""
    block = os.urandom(min(size, MIB))
    return (block * (size // len(block) + 1))[:size]


class Download:
    """One GET over a socket with a small receive buffer, read at our own pace.

    h11 frames the response; a connection closed before Content-Length bytes is
    recorded as ``complete = False`` (it is the server's one way to abort a body).
    """

    def __init__(self, srv: Server, target: str, rcvbuf: int = 32 * 1024) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", srv.port))
        self.sock = sock
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        self.conn = h11.Connection(h11.CLIENT)
        self.conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        self.conn.send(h11.EndOfMessage())
        self.body = bytearray()
        self.complete = False
        self.closed_early = False
        self.status = 0
        self.length = -1
        self.etag: str | None = None
        while not self.status:
            self._step()
        assert self.status == 200, self.status

    def _step(self) -> bool:
        """Handle one event; False once the response is over (complete or cut)."""
        try:
            event = self.conn.next_event()
        except h11.RemoteProtocolError:
            self.closed_early = True  # EOF inside the body
            return False
        if event is h11.NEED_DATA:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            self.conn.receive_data(data)
        elif isinstance(event, h11.Response):
            self.status = event.status_code
            headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            self.length = int(headers["content-length"])
            self.etag = headers.get("etag")
        elif isinstance(event, h11.Data):
            self.body += event.data
        elif isinstance(event, h11.EndOfMessage):
            self.complete = True
            return False
        elif isinstance(event, h11.ConnectionClosed):
            self.closed_early = True
            return False
        return True

    def read(self, count: int) -> None:
        while len(self.body) < count and self._step():
            pass

    def finish(self) -> bytes:
        """Read to the end of the response or of the connection (bounded by TIMEOUT)."""
        started = time.monotonic()
        while self._step():
            assert time.monotonic() - started < 3 * TIMEOUT, "download does not end"
        self.sock.close()
        return bytes(self.body)


def get(srv: Server, target: str, headers: dict[str, str] | None = None) -> Response:
    with srv.connect(TIMEOUT) as sock:
        return H11Client(sock).request("GET", target, headers)


def describe_mix(body: bytes, old: bytes, new: bytes) -> str:
    """Where a body stops matching the old version, and whether the rest is the new."""
    first = next((i for i, (a, b) in enumerate(zip(body, old, strict=False)) if a != b), None)
    if first is None:
        return "a prefix of the old version"
    rest_is_new = body[first:] == new[first : len(body)]
    return f"old bytes up to {first} of {len(body)}, then " + (
        "the new version's bytes" if rest_is_new else "bytes of neither version"
    )


# -- during a response ---------------------------------------------------------------------
def test_atomic_rename_during_a_download_sends_only_the_old_version(live: Server) -> None:
    """Editors and build tools save by writing a temp file and renaming it over."""
    path = live.root / "renamed.bin"
    old, new = pattern(LARGE), pattern(LARGE // 2)
    path.write_bytes(old)
    download = Download(live, "/renamed.bin")
    assert download.length == len(old)  # the promised length is the old version's
    download.read(HEAD_START)
    assert len(download.body) < download.length, "the download ended before the rename"
    temp = live.root / ".renamed.bin.tmp"
    temp.write_bytes(new)
    os.replace(temp, path)
    body = download.finish()
    if download.complete:
        assert body == old, describe_mix(body, old, new)
    else:
        # Closing early is allowed; what was sent is still one version.
        assert old.startswith(body), describe_mix(body, old, new)
    after = get(live, "/renamed.bin")
    assert after.body == new


@pytest.mark.parametrize(
    "mode", ["r+b", "wb"], ids=["overwrite-same-inode", "truncate-and-write-same-inode"]
)
def test_in_place_rewrite_during_a_download_never_mixes(live: Server, mode: str) -> None:
    """The same inode rewritten (same size) mid-response: one version, or cut short.

    An open descriptor pins the inode, not its bytes: sendfile reads what is on disk
    when it gets there. A body that reaches Content-Length must be one version.
    """
    path = live.root / f"rewritten-{mode[0]}.bin"
    old, new = pattern(LARGE), pattern(LARGE)
    path.write_bytes(old)
    inode = path.stat().st_ino
    download = Download(live, f"/{path.name}")
    assert download.length == len(old)
    download.read(HEAD_START)
    assert len(download.body) < download.length
    with path.open(mode) as file:
        file.write(new)
    assert path.stat().st_ino == inode
    body = download.finish()
    if download.complete:
        assert len(body) == download.length
        assert body in (old, new), "complete body mixes versions: " + describe_mix(body, old, new)
    else:
        assert len(body) < download.length


@pytest.mark.parametrize("new_size", [0, 8 * MIB], ids=["to-empty", "to-8MiB"])
def test_truncation_during_sendfile_closes_the_connection(live: Server, new_size: int) -> None:
    """sendfile returns 0 at the new end of file: close, never wait for bytes to come."""
    path = live.root / f"truncated-{new_size}.bin"
    old = pattern(LARGE)
    path.write_bytes(old)
    download = Download(live, f"/{path.name}")
    assert download.length == len(old)
    download.read(HEAD_START)
    os.truncate(path, new_size)
    started = time.monotonic()
    body = download.finish()
    elapsed = time.monotonic() - started
    assert not download.complete
    assert download.closed_early
    assert len(body) < len(old)
    assert old.startswith(body), describe_mix(body, old, b"")
    assert elapsed < TIMEOUT, elapsed  # closed, not timed out
    after = get(live, f"/{path.name}")
    assert after.status == 200
    assert len(after.body) == new_size


# -- between requests ---------------------------------------------------------------------
ROUNDS = 50
SMALL_SIZE = 1024


def _version(i: int) -> bytes:
    return (b"v%06d-" % i) * (SMALL_SIZE // 8)


def _rounds(live: Server, name: str, *, set_mtime: bool) -> tuple[list[str], int]:
    """Rewrite a small file ROUNDS times (same size), GET it after each write.

    Returns the failures and how many writes left (mtime_ns, ctime_ns) unchanged.
    """
    path = live.root / name
    path.write_bytes(_version(0))
    base = path.stat().st_mtime_ns
    failures: list[str] = []
    same_tick = 0
    with live.connect(TIMEOUT) as sock:
        client = H11Client(sock)
        previous = client.request("GET", f"/{name}")
        assert previous.body == _version(0)
        last_times = (path.stat().st_mtime_ns, path.stat().st_ctime_ns)
        for i in range(1, ROUNDS + 1):
            expected = _version(i)
            with path.open("r+b") as file:  # same inode, same size: only the bytes change
                file.write(expected)
            if set_mtime:
                stamp = base + i * 1_000_000  # 1 ms apart, never equal
                os.utime(path, ns=(stamp, stamp))
            st = path.stat()
            times = (st.st_mtime_ns, st.st_ctime_ns)
            same_tick += times == last_times
            last_times = times
            response = client.request("GET", f"/{name}")
            if response.body != expected:
                stale = response.body == _version(i - 1)
                failures.append(f"round {i}: {'stale (previous version)' if stale else 'wrong'}")
            elif response.header("etag") == previous.header("etag"):
                failures.append(f"round {i}: new content under the previous ETag")
            previous = response
    return failures, same_tick


def test_small_cached_file_rewritten_with_distinct_mtimes_is_served_fresh(live: Server) -> None:
    failures, _ = _rounds(live, "fresh-utime.txt", set_mtime=True)
    assert not failures, failures


def test_small_cached_file_rewritten_within_one_mtime_tick_is_served_fresh(live: Server) -> None:
    """No utime: back-to-back same-size writes may share an mtime tick.

    The cache keys on (dev, ino, mtime_ns, ctime_ns, size); should the kernel give two
    writes the same timestamps, only a watcher-driven invalidation can tell them apart.
    The message says how many writes shared their timestamps with the one before.
    """
    failures, same_tick = _rounds(live, "fresh-no-utime.txt", set_mtime=False)
    assert not failures, (f"{same_tick} of {ROUNDS} writes kept mtime/ctime", failures)


def test_same_size_rewrite_with_mtime_restored_changes_the_etag(live: Server) -> None:
    """cp -p, rsync -t and touch -r restore mtime; ctime still changes.

    The cache compares ctime and serves the new bytes; a strong ETag must change with
    the bytes too (RFC 9110 §8.8.1), or a browser revalidating gets 304 for stale
    content.
    """
    path = live.root / "restored.txt"
    path.write_bytes(_version(1))
    first = get(live, "/restored.txt")
    st = path.stat()
    path.write_bytes(_version(2))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns
    second = get(live, "/restored.txt")
    assert second.body == _version(2)
    assert second.header("etag") != first.header("etag"), "same strong ETag, other bytes"
    revalidated = get(live, "/restored.txt", {"If-None-Match": first.header("etag") or ""})
    assert revalidated.status == 200
    assert revalidated.body == _version(2)


@pytest.mark.parametrize("size", [100, 2 * MIB], ids=["cached", "sendfile"])
def test_deleted_file_is_404_on_the_next_request(live: Server, size: int) -> None:
    path = live.root / f"deleted-{size}.bin"
    path.write_bytes(pattern(size))
    with live.connect(TIMEOUT) as sock:
        client = H11Client(sock)
        for _ in range(2):  # the second one is served from the cache, if any
            assert client.request("GET", f"/{path.name}").status == 200
        path.unlink()
        response = client.request("GET", f"/{path.name}")
        assert response.status == 404
        assert len(response.body) < 4096


def test_directory_replaced_by_a_file(live: Server) -> None:
    directory = live.root / "thing"
    directory.mkdir()
    (directory / "index.html").write_text("<p>directory</p>\n")
    assert b"<p>directory</p>" in get(live, "/thing/").body
    assert get(live, "/thing").status == 301
    shutil.rmtree(directory)
    Path(directory).write_bytes(b"a file now\n")
    with live.connect(TIMEOUT) as sock:
        client = H11Client(sock)
        as_file = client.request("GET", "/thing")
        assert as_file.status == 200
        assert as_file.body == b"a file now\n"
        assert client.request("GET", "/thing/").status == 404
        assert client.request("GET", "/thing/index.html").status == 404


def test_file_replaced_by_a_directory(live: Server) -> None:
    path = live.root / "other"
    path.write_bytes(b"a file\n")
    assert get(live, "/other").body == b"a file\n"
    path.unlink()
    path.mkdir()
    (path / "index.html").write_text("<p>directory now</p>\n")
    redirect = get(live, "/other")
    assert redirect.status == 301
    assert redirect.header("location") == "/other/"
    assert b"<p>directory now</p>" in get(live, "/other/").body


def test_cached_file_replaced_by_a_symlink_leaving_the_root_is_404(live: Server) -> None:
    outside = live.root.parent / "outside-secret.txt"
    outside.write_bytes(b"outside secret\n")
    path = live.root / "swapped.txt"
    path.write_bytes(b"inside\n")
    for _ in range(2):
        assert get(live, "/swapped.txt").body == b"inside\n"
    link = live.root / ".swapped.tmp"
    link.symlink_to(outside)
    os.replace(link, path)
    response = get(live, "/swapped.txt")
    assert response.status == 404
    assert b"outside secret" not in response.body
