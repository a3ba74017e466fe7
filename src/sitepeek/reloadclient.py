"""A client of the live-reload WebSocket, as a browser tab is one.

:meth:`sitepeek.Server.wait_for_reload` uses it to know that the server told its tabs to
reload: it connects to the reload socket the injected script connects to (RFC 6455, the
same handshake a browser sends, Origin included), waits for the server's first message
(which the server sends once this client is subscribed, so no reload can slip by
unseen), then reads until a reload message arrives.

Only :func:`reload_paths` knows which message means "reload"; every other message is
skipped, so new kinds of messages on the socket change nothing here.

Standard library only, and plain blocking sockets with a deadline: this runs in the
caller's process whatever it uses for concurrency (under gevent's monkey-patching the
same calls cooperate).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from collections.abc import Collection, Sequence
from types import TracebackType

from sitepeek.livereload import SOCKET_PATH
from sitepeek.websocket import Opcode, accept_key

MAX_HEAD = 16 * 1024
MAX_MESSAGE = 16 * 1024 * 1024


def reload_paths(message: bytes) -> tuple[str, ...] | None:
    """The changed paths if ``message`` tells a tab to reload, else None.

    A reload message is ``{"type": "reload", "paths": [...]}`` (see assets/reload.js).
    """
    try:
        data = json.loads(message)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("type") != "reload":
        return None
    paths = data.get("paths")
    return tuple(str(path) for path in paths) if isinstance(paths, list) else ()


class ReloadWaiter:
    """One reload-socket connection that waits for the next reload message.

    Connected and subscribed on construction; ``expect`` names paths (relative to the
    root, with "/") the awaited reload must report. As a context manager, leaving the block
    without an exception waits for the reload (if :meth:`wait` was not called) and
    closes the connection; :attr:`paths` then holds the paths the server reported.
    """

    def __init__(self, host: str, port: int, timeout: float, expect: Collection[str] = ()) -> None:
        self.timeout = timeout
        self.expect = frozenset(expect)
        self.paths: tuple[str, ...] | None = None
        self._buffer = bytearray()
        deadline = time.monotonic() + timeout
        self._sock = socket.create_connection((host.strip("[]"), port), timeout=timeout)
        try:
            self._handshake(host, port, deadline)
            self._next_message(deadline)  # the server has subscribed us once it speaks
        except BaseException:
            self._sock.close()
            raise

    def wait(self, timeout: float | None = None) -> tuple[str, ...]:
        """Block until the server sends a reload message (one that names every path of
        ``expect``, if given: a reload for an earlier change may still be on its way);
        return its paths.

        Raises TimeoutError after ``timeout`` seconds (default: the waiter's timeout),
        ConnectionError if the server closes the socket first.
        """
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            try:
                message = self._next_message(deadline)
            except TimeoutError:
                raise TimeoutError(f"no reload message within {limit:g} s") from None
            paths = reload_paths(message)
            if paths is not None and self.expect <= set(paths):
                self.paths = paths
                return paths

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ReloadWaiter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None and self.paths is None:
                self.wait()
        finally:
            self.close()

    # -- the wire ------------------------------------------------------------------
    def _handshake(self, host: str, port: int, deadline: float) -> None:
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        authority = f"{host}:{port}"
        request = (
            f"GET {SOCKET_PATH} HTTP/1.1\r\n"
            f"Host: {authority}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            f"Origin: http://{authority}\r\n\r\n"
        )
        self._sock.sendall(request.encode("ascii"))
        while b"\r\n\r\n" not in self._buffer:
            if len(self._buffer) > MAX_HEAD:
                raise ConnectionError("the reload socket's answer has no end of head")
            self._receive(deadline)
        head, _, rest = bytes(self._buffer).partition(b"\r\n\r\n")
        self._buffer[:] = rest
        lines = head.decode("latin-1").split("\r\n")
        if lines[0].split(" ")[1:2] != ["101"]:
            raise ConnectionError(f"the reload socket answered {lines[0]!r}")
        fields = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }
        if fields.get("sec-websocket-accept") != accept_key(key):
            raise ConnectionError("the reload socket's handshake has a wrong accept key")

    def _next_message(self, deadline: float) -> bytes:
        """The next complete data message; answers pings on the way (RFC 6455 §5.5)."""
        parts: list[bytes] = []
        while True:
            fin, opcode, payload = self._next_frame(deadline)
            if opcode == Opcode.PING:
                self._send(Opcode.PONG, payload)
            elif opcode == Opcode.CLOSE:
                raise ConnectionError("the server closed the reload socket")
            elif opcode != Opcode.PONG:
                parts.append(payload)
                if fin:
                    return b"".join(parts)

    def _next_frame(self, deadline: float) -> tuple[bool, int, bytes]:
        header = self._read(2, deadline)
        fin, opcode = bool(header[0] & 0x80), header[0] & 0x0F
        masked, length = bool(header[1] & 0x80), header[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read(2, deadline))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read(8, deadline))[0]
        if length > MAX_MESSAGE:
            raise ConnectionError(f"a reload socket frame of {length} bytes")
        mask = self._read(4, deadline) if masked else b""
        payload = self._read(length, deadline)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return fin, opcode, payload

    def touch(self, paths: Sequence[str]) -> None:
        """Ask the server to count ``paths`` (relative to the root) as changed, as an
        edit would: they become the next site version, and its tabs reload."""
        message = json.dumps({"type": "touched", "paths": list(paths)})
        self._send(Opcode.TEXT, message.encode())

    def _send(self, opcode: Opcode, payload: bytes) -> None:
        """A client frame: always masked (RFC 6455 §5.3)."""
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        if len(payload) < 126:
            head = bytes([0x80 | opcode, 0x80 | len(payload)])
        else:  # (a 16-bit length: a client never sends more than 64 KiB here)
            head = bytes([0x80 | opcode, 0x80 | 126]) + len(payload).to_bytes(2, "big")
        self._sock.sendall(head + mask + masked)

    def _read(self, size: int, deadline: float) -> bytes:
        while len(self._buffer) < size:
            self._receive(deadline)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _receive(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the reload socket timed out")
        self._sock.settimeout(remaining)
        try:
            data = self._sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("the reload socket timed out") from None
        if not data:
            raise ConnectionError("the server closed the reload socket")
        self._buffer += data
