"""Live reload over real sockets, for every worker model: the client script, HTML
injection, the WebSocket endpoint (handshake, frames, reload messages) and its costs.

WebSocket frames are built and parsed here by a small independent client (masked
frames out, unmasked frames in); handshakes are framed by h11. Tests that change files
get their own site and server; the read-only ones share one server per model.
Nothing sleeps to wait for an event: sockets are read with timeouts. The only bounded
waits prove an absence (no second reload message after a burst).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h11
import pytest

from conftest import (
    WORKER_MODELS,
    H11Client,
    Server,
    children,
    recv_until_closed,
    request,
    served,
    start_server,
    stop_cleanly,
)
from sitepeek import __version__
from sitepeek.livereload import client_script, client_tag
from sitepeek.log import human_size

TAG = client_tag()  # <script src="/__sitepeek__/reload.js?v=…" data-sitepeek></script>
CLIENT = "/__sitepeek__/reload.js"
SOCKET = "/__sitepeek__/ws"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
KEY = base64.b64encode(b"sitepeek-nonce16").decode()
MASK = b"\x9a\x0b\x7c\x21"
WAIT = 5.0  # upper bound for anything awaited
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


# -- the site -------------------------------------------------------------------------
def build_site(root: Path) -> Path:
    paragraph = "<p>Live reload keeps this page fresh while you edit it.</p>\n"
    (root / "index.html").write_text(
        "<!doctype html><html><head><title>Home</title></head><body>\n<h1>Home</h1>\n"
        + paragraph * 40  # big enough that gzip wins
        + "</body></html>\n",
        encoding="utf-8",
    )
    (root / "fragment.html").write_text("<p>a fragment, no body end tag</p>\n")
    (root / "about.htm").write_text("<html><BODY><p>about</p></BODY></html>\n")
    (root / "style.css").write_text("body { color: red }\n")
    (root / "app.js").write_text("document.write('</body>');\n")
    (root / "data.json").write_text('{"html": "</body>"}\n')
    (root / "notes.txt").write_text("text that mentions </body> and </html>\n")
    (root / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'></svg>\n")
    (root / "gen").mkdir()
    return root


@pytest.fixture(scope="module", params=WORKER_MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def shared(model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per model for the tests that change nothing."""
    server = start_server(build_site(tmp_path_factory.mktemp("shared")), model)
    yield server
    stop_cleanly(server)


@pytest.fixture(scope="module")
def no_reload(model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(build_site(tmp_path_factory.mktemp("quiet")), model, "--no-reload")
    yield server
    stop_cleanly(server)


@pytest.fixture
def live(model: str, tmp_path: Path) -> Iterator[Server]:
    """A server of its own over a site of its own: the test changes files."""
    root = tmp_path / "site"
    root.mkdir()
    # See test_browser.py: a quiet period a stalled test writer cannot exceed.
    server = start_server(build_site(root), model, "--reload-delay", "150")
    yield server
    stop_cleanly(server)


def reload_log(server: Server) -> str:
    """The server's reload lines, to explain an unexpected message."""
    return "".join(line for line in server.stdout_lines if line.startswith("reload"))


# -- a small WebSocket client ---------------------------------------------------------
def expected_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def upgrade_headers(server: Server, **changes: str | None) -> dict[str, str]:
    """A valid opening handshake; ``changes`` (``Sec_WebSocket_Key=...``) alter it and
    None removes a field."""
    headers = {
        "Host": f"127.0.0.1:{server.port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
        "Origin": server.url,
    }
    for name, value in changes.items():
        field = name.replace("_", "-")
        if value is None:
            del headers[field]
        else:
            headers[field] = value
    return headers


def client_frame(opcode: int, payload: bytes = b"", *, masked: bool = True) -> bytes:
    """One final frame as a browser sends it (RFC 6455 §5.2), masked by default."""
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = bytes((0x80 | opcode, mask_bit | size))
    elif size < 1 << 16:
        head = bytes((0x80 | opcode, mask_bit | 126)) + struct.pack("!H", size)
    else:
        head = bytes((0x80 | opcode, mask_bit | 127)) + struct.pack("!Q", size)
    if not masked:
        return head + payload
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


class WsClient:
    """The client end of one reload WebSocket."""

    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self.sock = sock
        self.buffer = bytearray(buffered)

    def close(self) -> None:
        self.sock.close()

    def send(self, opcode: int, payload: bytes = b"", *, masked: bool = True) -> None:
        self.sock.sendall(client_frame(opcode, payload, masked=masked))

    def _take_frame(self) -> tuple[int, bytes] | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        assert first & 0x80, "server frames are final (no fragmentation is needed)"
        assert not first & 0x70, "no extension was negotiated: RSV bits must be clear"
        assert not second & 0x80, "server frames must not be masked (RFC 6455 §5.1)"
        size, offset = second & 0x7F, 2
        if size == 126:
            if len(buf) < 4:
                return None
            size, offset = struct.unpack("!H", buf[2:4])[0], 4
        elif size == 127:
            if len(buf) < 10:
                return None
            size, offset = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < offset + size:
            return None
        payload = bytes(buf[offset : offset + size])
        del buf[: offset + size]
        return first & 0x0F, payload

    def recv_frame(self, timeout: float = WAIT) -> tuple[int, bytes]:
        """The next frame; TimeoutError when none comes, EOFError when TCP closed."""
        deadline = time.monotonic() + timeout
        while (frame := self._take_frame()) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed")
            self.buffer += data
        return frame

    def recv_json(self, timeout: float = WAIT) -> dict[str, object]:
        opcode, payload = self.recv_frame(timeout)
        assert opcode == OP_TEXT, (opcode, payload)
        message = json.loads(payload)
        assert isinstance(message, dict)
        return message

    def recv_reload(self, timeout: float = WAIT) -> list[str]:
        message = self.recv_json(timeout)
        assert message["type"] == "reload", message
        paths = message["paths"]
        assert isinstance(paths, list)
        return paths

    def closed_by_peer(self, timeout: float = WAIT) -> bool:
        """Whether the server closes TCP (after whatever it still sends) in time."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
            if not data:
                return True


def handshake(server: Server, headers: dict[str, str]) -> tuple[h11.Response, socket.socket, bytes]:
    """Send an upgrade request; return h11's view of the answer's head."""
    sock = server.connect()
    conn = h11.Connection(h11.CLIENT)
    sock.sendall(
        conn.send(h11.Request(method="GET", target=SOCKET, headers=list(headers.items())))
        + conn.send(h11.EndOfMessage())
    )
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
            continue
        break
    assert isinstance(event, h11.InformationalResponse | h11.Response), event
    trailing = b""
    if event.status_code == 101:
        assert conn.their_state is h11.SWITCHED_PROTOCOL
        trailing = bytes(conn.trailing_data[0])
    return event, sock, trailing  # type: ignore[return-value]


def connect_ws(server: Server) -> WsClient:
    """An accepted reload WebSocket whose hello has been read (so it is subscribed)."""
    head, sock, trailing = handshake(server, upgrade_headers(server))
    assert head.status_code == 101
    client = WsClient(sock, trailing)
    hello = client.recv_json()
    assert hello["type"] == "hello"
    return client


PROCESSES = 2  # the workers of a "processes" server (see conftest.start_server)


def worker_of(server: Server, client: WsClient) -> int:
    """The worker process serving this connection: the one holding its socket."""
    local = f"0100007F:{server.port:04X}"  # /proc/net/tcp: the server's end, ...
    remote = f"0100007F:{client.sock.getsockname()[1]:04X}"  # ... connected to ours
    rows = [row.split() for row in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    (inode,) = [row[9] for row in rows if row[1] == local and row[2] == remote]
    for pid in children(server.proc.pid):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
    raise AssertionError("no worker holds the connection")


def one_per_worker(server: Server) -> list[WsClient]:
    """Reload sockets, one on each worker process (one in all in the other models): a
    message on every one of them shows that every process has handled its event (each
    worker gets the supervisor's events in order, each in its own time)."""
    if server.model != "processes":
        return [connect_ws(server)]
    found: dict[int, WsClient] = {}
    deadline = time.monotonic() + WAIT
    try:
        while len(found) < PROCESSES:
            assert time.monotonic() < deadline, f"reload sockets reached only {sorted(found)}"
            client = connect_ws(server)
            pid = worker_of(server, client)
            if pid in found:
                client.close()
            else:
                found[pid] = client
    except BaseException:
        for client in found.values():
            client.close()
        raise
    return list(found.values())


def fields(head: h11.Response) -> dict[str, str]:
    return {name.decode().lower(): value.decode() for name, value in head.headers}


# -- the client script ----------------------------------------------------------------
def test_client_script_is_served(shared: Server) -> None:
    with shared.connect() as sock:
        client = H11Client(sock)
        got = client.request("GET", CLIENT)
        assert got.status == 200
        assert (got.header("content-type") or "").split(";")[0] == "text/javascript"
        assert got.body == client_script()
        assert int(got.header("content-length") or -1) == len(got.body)
        head = client.request("HEAD", CLIENT)
        assert head.status == 200
        assert head.body == b""
        assert head.header("content-length") == got.header("content-length")
        etag = got.header("etag")
        assert etag
        again = client.request("GET", CLIENT, {"If-None-Match": etag})
        assert again.status == 304
        assert again.body == b""
        assert again.header("etag") == etag


# -- injection ------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["/", "/index.html", "/about.htm", "/fragment.html"])
def test_html_gets_the_client_tag_once(shared: Server, target: str) -> None:
    name = {"/": "index.html"}.get(target, target.lstrip("/"))
    with shared.connect() as sock:
        client = H11Client(sock)
        got = client.request("GET", target)
        # The next response on the connection parses only if this one's length was exact.
        assert client.request("GET", "/notes.txt").status == 200
    assert got.status == 200
    assert (got.header("content-type") or "").startswith("text/html")
    assert int(got.header("content-length") or -1) == len(got.body)
    assert got.body.count(TAG) == 1
    assert got.body == served(shared.root / name)
    original = (shared.root / name).read_bytes()
    assert got.body.replace(TAG, b"", 1) == original
    after = got.body[got.body.index(TAG) + len(TAG) :]
    if b"</body>" in original.lower():
        assert after.lower().startswith(b"</body>")
    else:
        assert after == b""


def test_404_page_gets_the_client_tag_once(shared: Server) -> None:
    got = request(shared, "GET", "/no-such-page")
    assert got.status == 404
    assert int(got.header("content-length") or -1) == len(got.body)
    assert got.body.count(TAG) == 1
    assert TAG + b"</body>" in got.body


def test_head_of_an_injected_page_has_the_get_length(shared: Server) -> None:
    get = request(shared, "GET", "/index.html")
    head = request(shared, "HEAD", "/index.html")
    assert head.status == 200
    assert head.body == b""
    assert head.header("content-length") == str(len(get.body))
    assert head.header("etag") == get.header("etag")


def test_gzip_variant_is_the_injected_page(shared: Server) -> None:
    got = request(shared, "GET", "/index.html", {"Accept-Encoding": "gzip"})
    assert got.status == 200
    assert got.header("content-encoding") == "gzip"
    assert int(got.header("content-length") or -1) == len(got.body)
    page = gzip.decompress(got.body)
    assert page == served(shared.root / "index.html")
    assert page.count(TAG) == 1
    assert TAG + b"</body>" in page


@pytest.mark.parametrize("name", ["style.css", "app.js", "data.json", "notes.txt", "logo.svg"])
def test_other_files_are_untouched(shared: Server, name: str) -> None:
    got = request(shared, "GET", "/" + name)
    assert got.status == 200
    assert got.body == (shared.root / name).read_bytes()
    assert TAG not in got.body


def test_no_reload_injects_nothing_and_has_no_endpoints(no_reload: Server) -> None:
    page = request(no_reload, "GET", "/")
    assert page.status == 200
    assert page.body == (no_reload.root / "index.html").read_bytes()
    missing = request(no_reload, "GET", "/missing")
    assert missing.status == 404
    assert b"__sitepeek__" not in missing.body
    assert request(no_reload, "GET", CLIENT).status == 404
    head, sock, _ = handshake(no_reload, upgrade_headers(no_reload))
    sock.close()
    assert head.status_code == 404


# -- the opening handshake ------------------------------------------------------------
def test_handshake_is_accepted(shared: Server) -> None:
    head, sock, trailing = handshake(shared, upgrade_headers(shared))
    with sock:
        assert head.status_code == 101
        got = fields(head)
        assert got["sec-websocket-accept"] == expected_accept(KEY)
        assert got["upgrade"].lower() == "websocket"
        assert "upgrade" in got["connection"].lower()
        assert "sec-websocket-extensions" not in got
        assert "sec-websocket-protocol" not in got
        hello = WsClient(sock, trailing).recv_json()
    assert hello["type"] == "hello" and hello["version"] == __version__
    # The site version and build state a tab compares with what its page shows.
    assert (hello["site"], hello["ended"], hello["building"]) == (0, 0.0, False)
    assert isinstance(hello["server"], str) and hello["server"]
    assert abs(hello["now"] - time.time() * 1000) < 60_000  # type: ignore[operator]


@pytest.mark.parametrize("version", [None, "8", "14", "13, 8"])
def test_unsupported_version_is_426(shared: Server, version: str | None) -> None:
    got = request(shared, "GET", SOCKET, upgrade_headers(shared, Sec_WebSocket_Version=version))
    assert got.status == 426
    assert got.header("sec-websocket-version") == "13"


def test_426_for_a_version_names_the_protocol(shared: Server) -> None:
    # RFC 9110 §15.5.22: a 426 MUST carry Upgrade with the protocol(s) required.
    got = request(shared, "GET", SOCKET, upgrade_headers(shared, Sec_WebSocket_Version="8"))
    assert got.status == 426
    assert (got.header("upgrade") or "").lower() == "websocket"


@pytest.mark.parametrize(
    "key",
    [None, "", "abc", base64.b64encode(b"fifteen bytes!!").decode(), "!" * 24],
)
def test_bad_key_is_400(shared: Server, key: str | None) -> None:
    got = request(shared, "GET", SOCKET, upgrade_headers(shared, Sec_WebSocket_Key=key))
    assert got.status == 400


@pytest.mark.parametrize("origin", ["http://evil.example", None, "null", "http://127.0.0.1:1"])
def test_foreign_or_missing_origin_is_403(shared: Server, origin: str | None) -> None:
    got = request(shared, "GET", SOCKET, upgrade_headers(shared, Origin=origin))
    assert got.status == 403


def test_matching_origin_is_101(shared: Server) -> None:
    origin = f"http://127.0.0.1:{shared.port}"
    head, sock, _ = handshake(shared, upgrade_headers(shared, Origin=origin))
    sock.close()
    assert head.status_code == 101


def test_plain_get_of_the_socket_url_is_426(shared: Server) -> None:
    got = request(shared, "GET", SOCKET)
    assert got.status == 426
    assert (got.header("upgrade") or "").lower() == "websocket"
    assert got.header("sec-websocket-version") == "13"


# -- frames -------------------------------------------------------------------------
def test_ping_gets_a_pong_with_the_same_payload(shared: Server) -> None:
    client = connect_ws(shared)
    try:
        client.send(OP_PING, b"are you there?")
        assert client.recv_frame() == (OP_PONG, b"are you there?")
        client.send(OP_PING)
        assert client.recv_frame() == (OP_PONG, b"")
    finally:
        client.close()


def test_close_is_echoed_and_the_server_closes_tcp(shared: Server) -> None:
    client = connect_ws(shared)
    try:
        client.send(OP_CLOSE, struct.pack("!H", 1000) + b"bye")
        opcode, payload = client.recv_frame()
        assert opcode == OP_CLOSE
        assert struct.unpack("!H", payload[:2])[0] == 1000
        # RFC 6455 §5.5.1/§7.1.1: after the closing handshake the server closes TCP first.
        assert client.closed_by_peer(), "the server kept the TCP connection open"
    finally:
        client.close()


def test_a_reload_socket_is_logged_when_it_ends_with_what_it_sent(shared: Server) -> None:
    origin = f"Origin: {shared.url}\r\n"
    with shared.connect() as sock:
        sock.sendall(
            f"GET {SOCKET}?logged HTTP/1.1\r\nHost: 127.0.0.1:{shared.port}\r\n{origin}"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            + client_frame(OP_CLOSE, struct.pack("!H", 1000))
        )
        received = recv_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 101 ")
    deadline = time.monotonic() + WAIT
    while not (lines := [x for x in list(shared.stdout_lines) if f" GET {SOCKET}?logged " in x]):
        assert time.monotonic() < deadline, "no log line for the socket"
        time.sleep(0.02)  # (the server process writes it: nothing to await)
    (line,) = lines
    assert f" GET {SOCKET}?logged 101 {human_size(len(received))} " in line, line


def test_unmasked_client_frame_is_closed_with_1002(shared: Server) -> None:
    client = connect_ws(shared)
    try:
        client.send(OP_TEXT, b"not masked", masked=False)
        opcode, payload = client.recv_frame()
        assert opcode == OP_CLOSE
        assert struct.unpack("!H", payload[:2])[0] == 1002
        assert client.closed_by_peer()
    finally:
        client.close()


# -- reload messages ----------------------------------------------------------------
def test_a_change_reaches_every_socket_exactly_once(live: Server) -> None:
    clients = [connect_ws(live) for _ in range(3)]
    try:
        (live.root / "index.html").write_text("<p>changed</p>\n")
        for client in clients:
            message = client.recv_json()
            # A client that reported nothing of what it loaded is told to reload.
            assert {k: message[k] for k in ("type", "site", "paths", "action")} == {
                "type": "reload",
                "site": 1,
                "paths": ["index.html"],
                "action": "reload",
            }
        # Exactly once: the next message on every socket is the next change's.
        (live.root / "style.css").write_text("body { color: blue }\n")
        for client in clients:
            assert client.recv_reload() == ["style.css"]
    finally:
        for client in clients:
            client.close()


def test_a_burst_of_300_files_is_one_reload(live: Server) -> None:
    client = connect_ws(live)
    try:
        names = [f"gen/page{i:03}.html" for i in range(300)]
        for name in names:
            (live.root / name).write_text(f"<p>{name}</p>\n")
        paths = client.recv_reload()
        assert sorted(paths) == names, reload_log(live)
        with pytest.raises(TimeoutError):
            # A bounded wait proves that no second one comes.
            client.recv_frame(timeout=1.0)
    finally:
        client.close()


def test_a_change_100ms_after_a_reload_is_another_reload(live: Server) -> None:
    client = connect_ws(live)
    try:
        (live.root / "first.txt").write_text("1\n")
        assert client.recv_reload() == ["first.txt"]
        time.sleep(0.1)  # the subject of the test, not a wait for an event
        (live.root / "second.txt").write_text("2\n")
        assert client.recv_reload() == ["second.txt"]
    finally:
        client.close()


def test_ignored_files_trigger_nothing(live: Server) -> None:
    client = connect_ws(live)
    try:
        root = live.root
        (root / "x.swp").write_text("swap\n")
        (root / ".index.html.swp").write_text("swap\n")
        (root / "index.html~").write_text("backup\n")
        (root / ".git").mkdir()
        (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
        (root / "node_modules").mkdir()
        (root / "node_modules" / "a.js").write_text("module.exports = 1;\n")
        (root / "real.txt").write_text("real\n")
        assert client.recv_reload() == ["real.txt"]
    finally:
        client.close()


def report_loaded(client: WsClient, page: str, *urls: str, status: int = 200) -> None:
    """Tell the server what this "tab" loaded, and await its acknowledgement."""
    message = {"type": "loaded", "page": page, "status": status, "urls": list(urls)}
    client.send(OP_TEXT, json.dumps(message).encode())
    assert client.recv_json() == {"type": "noted", "count": len(set(urls)) + 1}


def test_each_tab_is_told_what_a_build_means_for_it(live: Server) -> None:
    home, other, silent = connect_ws(live), connect_ws(live), connect_ws(live)
    try:
        report_loaded(home, "/", "/style.css", "/logo.svg")
        report_loaded(other, "/about.htm", "/app.js")
        (live.root / "style.css").write_text("body { color: green }\n")
        home_message, other_message = home.recv_json(), other.recv_json()
        assert (home_message["action"], home_message["files"]) == ("css", ["style.css"])
        assert (other_message["action"], other_message["files"]) == ("none", [])
        # It said nothing (yet): its client swaps the stylesheet if it links it.
        silent_message = silent.recv_json()
        assert (silent_message["action"], silent_message["files"]) == ("css", ["style.css"])
        assert home_message["site"] == other_message["site"] == 1
        (live.root / "about.htm").write_text("<html><body>new</body></html>\n")
        assert (home.recv_json()["action"], other.recv_json()["action"]) == ("none", "reload")
    finally:
        for client in (home, other, silent):
            client.close()
    # One terminal line per build, with what the tabs did (from every worker process).
    deadline = time.monotonic() + WAIT
    while reload_log(live).count("\n") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # polls the server's output, which has no event to await
    assert reload_log(live).splitlines() == [
        "reload · 1 file · style.css · tabs: 2 css swapped, 1 unaffected",
        "reload · 1 file · about.htm · tabs: 2 reloaded, 1 unaffected",
    ]


def test_the_reload_line_waits_for_a_worker_process_slowed_down(tmp_path: Path) -> None:
    """The line counts the tabs of every worker process, even one the machine holds
    back for longer than a moment (here: stopped for half a second). (Processes only:
    in the other models the process that sends the reloads prints the line.)"""
    root = tmp_path / "site"
    root.mkdir()
    live = start_server(build_site(root), "processes", "--reload-delay", "150")
    clients: list[WsClient] = []
    try:
        clients += one_per_worker(live)
        slow = worker_of(live, clients[1])
        os.kill(slow, signal.SIGSTOP)
        try:
            (live.root / "notes.txt").write_text("changed\n")
            assert clients[0].recv_reload() == ["notes.txt"]
            time.sleep(0.5)  # the subject of the test: the stopped worker's delay
        finally:
            os.kill(slow, signal.SIGCONT)
        assert clients[1].recv_reload() == ["notes.txt"]
        deadline = time.monotonic() + WAIT
        while not reload_log(live) and time.monotonic() < deadline:
            time.sleep(0.01)  # polls the server's output, which has no event to await
        assert reload_log(live) == "reload · 1 file · notes.txt · tabs: 2 reloaded\n"
    finally:
        for each in clients:
            each.close()
        stop_cleanly(live)


def test_a_reconnecting_tab_learns_the_site_version(live: Server) -> None:
    clients = one_per_worker(live)
    client = clients[0]
    try:
        (live.root / "index.html").write_text("<p>one</p>\n")
        first = client.recv_json()
        (live.root / "style.css").write_text("body { color: blue }\n")
        second = client.recv_json()
        # Every worker process is at version 2, whichever takes the reconnection.
        for other in clients[1:]:
            assert [other.recv_json()["site"] for _ in range(2)] == [1, 2]
    finally:
        for each in clients:
            each.close()
    assert (first["site"], second["site"]) == (1, 2)
    assert second["ended"] >= first["ended"] > 0  # type: ignore[operator]
    _, sock, trailing = handshake(live, upgrade_headers(live))
    with sock:
        hello = WsClient(sock, trailing).recv_json()
    assert (hello["site"], hello["ended"], hello["building"]) == (2, second["ended"], False)


def test_identical_rewrites_and_dotfiles_are_not_changes(live: Server) -> None:
    client = connect_ws(live)
    try:
        root = live.root
        (root / "style.css").write_text((root / "style.css").read_text())
        (root / ".buildinfo").write_text("tags: x\n")
        (root / ".doctrees").mkdir()
        (root / ".doctrees" / "environment.pickle").write_bytes(b"pickle")
        (root / "_redirects").write_text("/old /new 301\n")  # changes answers: counts
        assert client.recv_reload() == ["_redirects"]
    finally:
        client.close()
    assert "style.css" not in reload_log(live) and ".buildinfo" not in reload_log(live)


def test_a_request_for_a_page_being_rebuilt_waits_for_it(live: Server) -> None:
    clients = one_per_worker(live)
    client = clients[0]
    index = live.root / "index.html"
    try:
        report_loaded(client, "/")
        # Every worker process holds requests for the page once it has it: the client's
        # worker shares it through the supervisor, which relays it before any later
        # build; a socket on every worker seeing the build asked for next shows it.
        client.send(OP_TEXT, json.dumps({"type": "touched", "paths": ["notes.txt"]}).encode())
        for each in clients:
            assert each.recv_reload() == ["notes.txt"]
        index.unlink()
        # Before the watcher has even reported the deletion: not a listing of "/".
        writer = threading.Timer(0.1, lambda: index.write_text("<p>rebuilt</p>\n"))
        writer.start()
        try:
            got = request(live, "GET", "/")
        finally:
            writer.join()
        assert got.status == 200 and b"rebuilt" in got.body
        # That build is over (a request now would wait for it to settle) ...
        assert client.recv_reload() == ["index.html"]
        # ... so a path that was never there is answered at once, held by no build.
        started = time.monotonic()
        assert request(live, "GET", "/never/").status == 404
        assert time.monotonic() - started < 1.0
    finally:
        for each in clients:
            each.close()


# -- lifecycle and cost -------------------------------------------------------------
def test_sigterm_with_a_connected_socket_exits_fast(live: Server) -> None:
    client = connect_ws(live)
    try:
        started = time.monotonic()
        code = live.stop(signal.SIGTERM)
        elapsed = time.monotonic() - started
        assert code == 0, live.stderr_text()
        assert elapsed < 2.0, elapsed  # (not held by the open socket; a busy machine)
        assert client.closed_by_peer(timeout=1.0)
    finally:
        client.close()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def server_rss_kib(server: Server) -> int:
    """Resident memory of the server's process tree (supervisor and workers)."""
    pid = server.proc.pid
    return _rss_kib(pid) + sum(_rss_kib(child) for child in children(pid))


def test_200_tabs_cost_little_memory_and_all_reload(live: Server) -> None:
    if live.model == "processes":
        assert len(children(live.proc.pid)) == 2
    for client in [connect_ws(live) for _ in range(10)]:  # warm every worker up
        client.close()
    before = server_rss_kib(live)
    clients: list[WsClient] = []
    try:
        for _ in range(200):
            clients.append(connect_ws(live))
        grown_mib = (server_rss_kib(live) - before) / 1024
        assert grown_mib < 30, f"200 reload sockets cost {grown_mib:.1f} MiB"
        (live.root / "index.html").write_text("<p>for everyone</p>\n")
        for client in clients:
            assert client.recv_reload() == ["index.html"]
    finally:
        for client in clients:
            client.close()


# -- validators of injected pages -----------------------------------------------------
def test_injected_page_validators_change_with_the_client(tmp_path: Path, worker_model: str) -> None:
    """RFC 9110 §8.8.3: a page with the client injected is a different representation
    when the client changes (an upgrade of sitepeek): a tab revalidating with the old
    ETag or date gets the new page with the new script URL, not a 304."""
    package = tmp_path / "lib"
    shutil.copytree(
        Path(__file__).resolve().parent.parent / "src" / "sitepeek",
        package / "sitepeek",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    long_ago = time.time() - 30 * 86400
    for path in package.rglob("*"):
        os.utime(path, (long_ago, long_ago))
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("<!doctype html><body><p>page</p></body>\n")
    os.utime(root / "index.html", (long_ago - 86400, long_ago - 86400))
    env = {"PYTHONPATH": str(package)}

    before = start_server(root, worker_model, env=env)
    try:
        first = request(before, "GET", "/")
        etag, date = first.header("etag"), first.header("last-modified")
        assert first.status == 200 and etag and date
        for validator in ({"If-None-Match": etag}, {"If-Modified-Since": date}):
            assert request(before, "GET", "/", validator).status == 304
    finally:
        stop_cleanly(before)

    script = package / "sitepeek" / "assets" / "reload.js"
    script.write_bytes(script.read_bytes() + b"\n// the next release\n")
    after = start_server(root, worker_model, env=env)
    try:
        for validator in ({"If-None-Match": etag}, {"If-Modified-Since": date}):
            response = request(after, "GET", "/", validator)
            assert response.status == 200, validator
            assert client_tag(script.read_bytes()) in response.body
            assert response.header("etag") != etag
        current = {"If-None-Match": response.header("etag") or ""}
        assert request(after, "GET", "/", current).status == 304
    finally:
        stop_cleanly(after)


def test_a_touched_request_reloads_and_malformed_ones_are_ignored(live: Server) -> None:
    """sitepeek.Server.reload() asks over the reload socket for files to count as
    changed; a malformed request never reloads anything (requests on one socket are
    taken in order, so a junk one taken would be the first reload seen)."""
    client = connect_ws(live)
    try:
        junk: list[object] = [
            {"type": "touched"},
            {"type": "touched", "paths": []},
            {"type": "touched", "paths": "index.html"},
            {"type": "touched", "paths": [1]},
            {"type": "touched", "paths": ["x" * 1025]},
            {"type": "touched", "paths": ["x"] * 101},
            ["touched"],
        ]
        for message in junk:
            client.send(OP_TEXT, json.dumps(message).encode())
        client.send(OP_TEXT, json.dumps({"type": "touched", "paths": ["/index.html"]}).encode())
        assert client.recv_reload() == ["index.html"]
    finally:
        client.close()
