"""Shared fixtures: a test site and a real sitepeek server per worker model.

Servers run as real subprocesses (``python -m sitepeek serve``) on port 0 and are
talked to over loopback, with raw sockets for wire-level cases and h11 as an
independent strict parser of every response.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest

from sitepeek.inject import inject
from sitepeek.livereload import client_tag

WORKER_MODELS = ("greenlets", "threads", "processes")
URL_LINE = re.compile(r"(https?)://127\.0\.0\.1:(\d+)/")
START_TIMEOUT = 15.0


@dataclass
class Server:
    """A running sitepeek subprocess."""

    proc: subprocess.Popen[str]
    port: int
    root: Path
    model: str
    stderr_lines: list[str] = field(default_factory=list)
    stdout_lines: list[str] = field(default_factory=list)
    pumps: list[threading.Thread] = field(default_factory=list)
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def connect(self, timeout: float = 5.0) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self.close_pipes()

    def close_pipes(self) -> None:
        for pump in self.pumps:
            pump.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def stderr_text(self) -> str:
        return "".join(self.stderr_lines)


def children(pid: int) -> list[int]:
    """The direct child processes of ``pid`` (a process model's workers)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _pump(stream: object, sink: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sink.append(line)


def _start_pump(stream: object, sink: list[str]) -> threading.Thread:
    thread = threading.Thread(target=_pump, args=(stream, sink), daemon=True)
    thread.start()
    return thread


# Every server a test started, so none outlives the run when a test fails before
# stopping its own (see _no_server_left_behind).
_STARTED: list[Server] = []


@pytest.fixture(autouse=True, scope="session")
def _no_server_left_behind() -> Iterator[None]:
    yield
    for server in _STARTED:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
            server.close_pipes()


SITEPEEK = (sys.executable, "-m", "sitepeek")


def start_server(
    root: Path,
    model: str = "greenlets",
    *args: str,
    env: dict[str, str] | None = None,
    launcher: Sequence[str] = SITEPEEK,
    cwd: Path | None = None,
) -> Server:
    """Start ``sitepeek serve ROOT --port 0`` and wait for its URL line.

    ``launcher`` is the command that runs sitepeek (a shim may set limits first);
    ``cwd`` its working directory (where config files and --build sources are).
    """
    cmd = [*launcher, "serve", str(root), "--port", "0", "--workers", model]
    if model == "processes" and "--processes" not in args:
        cmd += ["--processes", "2"]
    cmd += list(args)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        cwd=cwd,
    )
    server = Server(proc, 0, root, model)
    _STARTED.append(server)
    deadline = time.monotonic() + START_TIMEOUT
    assert proc.stdout is not None and proc.stderr is not None
    server.pumps.append(_start_pump(proc.stderr, server.stderr_lines))
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            proc.wait(5)
            server.close_pipes()
            raise RuntimeError(f"sitepeek exited early: {server.stderr_text()}")
        server.stdout_lines.append(line)
        match = URL_LINE.search(line)
        if match:
            server.scheme, server.port = match.group(1), int(match.group(2))
            server.pumps.append(_start_pump(proc.stdout, server.stdout_lines))
            return server
    proc.kill()
    raise RuntimeError("sitepeek did not print its URL in time")


def served(path: Path) -> bytes:
    """The bytes sitepeek sends for a file in its default configuration.

    Live reload is on by default, so HTML gets the client's script tag injected
    (``sitepeek.inject`` has its own tests); every other file is sent as it is.
    """
    return as_served(path.read_bytes(), html=path.suffix in (".html", ".htm"))


def as_served(data: bytes, html: bool = True) -> bytes:
    return inject(data, client_tag()) if html else data


def build_site(root: Path) -> Path:
    """The files every behavioural test relies on."""
    (root / "index.html").write_text(
        "<!doctype html><html><body><h1>Home</h1></body></html>\n", encoding="utf-8"
    )
    (root / "small.txt").write_bytes(b"0123456789" * 100)
    (root / "style.css").write_text("body { color: red }\n")
    (root / "app.js").write_text("console.log('hi');\n" * 50)
    (root / "data.json").write_text('{"a": 1}\n')
    (root / "module.mjs").write_text("export const x = 1;\n")
    (root / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>\n")
    (root / "image.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBP")
    (root / "font.woff2").write_bytes(b"wOF2" + bytes(100))
    (root / "empty.txt").write_bytes(b"")
    (root / "large.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / "sub").mkdir()
    (root / "sub" / "index.html").write_text("<p>sub</p>\n")
    (root / "htm").mkdir()
    (root / "htm" / "index.htm").write_text("<p>htm</p>\n")
    (root / "noindex").mkdir()
    (root / "noindex" / "file.txt").write_text("f\n")
    (root / "café.txt").write_text("crème\n", encoding="utf-8")
    (root / "a b.txt").write_text("space\n")
    (root / "a+b.txt").write_text("plus\n")
    (root / ".secret").write_text("hidden\n")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]\n")
    (root / ".well-known").mkdir()
    (root / ".well-known" / "security.txt").write_text("Contact: x\n")
    (root / "evil.com").mkdir()
    (root / "evil.com" / "index.html").write_text("<p>not evil</p>\n")
    outside = root.parent / (root.name + "-outside")
    outside.mkdir()
    (outside / "secret.txt").write_text("outside\n")
    (root / "link-out").symlink_to(outside)
    (root / "link-file-out.txt").symlink_to(outside / "secret.txt")
    (root / "link-in.txt").symlink_to(root / "small.txt")
    os.mkfifo(root / "fifo")
    return root


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site") / "root"
    root.mkdir()
    return build_site(root)


@pytest.fixture(scope="session", params=WORKER_MODELS)
def worker_model(request: pytest.FixtureRequest) -> str:
    """Every behavioural test runs once per worker model."""
    return str(request.param)


@pytest.fixture(scope="session")
def server(site: Path, worker_model: str) -> Iterator[Server]:
    srv = start_server(site, worker_model)
    yield srv
    stop_cleanly(srv)


def stop_cleanly(server: Server) -> None:
    """Stop with SIGTERM: exit status 0, and nothing on stderr that hints at a bug."""
    code = server.stop()
    stderr = server.stderr_text()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert "internal error" not in stderr


# -- raw HTTP helpers ------------------------------------------------------------------
def recv_until_closed(sock: socket.socket, limit: int = 64 * 1024 * 1024) -> bytes:
    chunks = []
    total = 0
    while total < limit:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class H11Client:
    """A strict client over one connection: every response is framed by h11."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn = h11.Connection(h11.CLIENT)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_response(self, method: str = "GET") -> Response:
        if self.conn.our_state is h11.IDLE:
            # Tell h11 what we sent, so it knows whether a body may follow (HEAD).
            self.conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
            self.conn.send(h11.EndOfMessage())
        head: h11.Response | None = None
        body = bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = self.sock.recv(65536)
                self.conn.receive_data(data)
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("closed before a complete response")
        assert head is not None
        raw = [(k.decode(), v.decode("latin-1")) for k, v in head.headers]
        headers: dict[str, str] = {}
        for k, v in raw:
            headers[k.lower()] = v if k.lower() not in headers else headers[k.lower()] + ", " + v
        response = Response(head.status_code, headers, bytes(body), raw)
        if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
            pass
        else:
            self.conn.start_next_cycle()
        return response

    def request(self, method: str, target: str, headers: dict[str, str] | None = None) -> Response:
        hdrs = {"Host": "127.0.0.1", **(headers or {})}
        lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in hdrs.items()]
        self.send_raw(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        return self.read_response(method)


def request(
    server: Server,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
) -> Response:
    """One request on a fresh connection, framed by h11."""
    with server.connect() as sock:
        return H11Client(sock).request(method, target, headers)
