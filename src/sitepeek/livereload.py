"""Live reload inside one worker process: fan-out to WebSockets, the build gate.

The :class:`Broadcaster` receives change events (already moved into the worker
model's context), tells every connected tab exactly once per settled burst, and holds
HTML requests while a burst is in flight so a reload never shows a half-written build.
:func:`serve_websocket` runs one reload WebSocket connection (RFC 6455).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from sitepeek import inject
from sitepeek.changes import ChangeEvent, Pending, Settled
from sitepeek.concurrency import Channel, Io
from sitepeek.version import __version__
from sitepeek.websocket import (
    FrameParser,
    Message,
    Opcode,
    ProtocolViolation,
    close_frame,
    encode_frame,
)

PREFIX = "/__sitepeek__/"
CLIENT_PATH = PREFIX + "reload.js"
SOCKET_PATH = PREFIX + "ws"
# A ping every so often keeps proxies and NATs from dropping an idle tab's socket;
# a client that answers nothing for two intervals is gone.
PING_INTERVAL = 20.0
RECV_SIZE = 4096
MAX_CLIENT_MESSAGE = 64 * 1024


def client_script() -> bytes:
    """The browser side, shipped as package data."""
    return resources.files("sitepeek").joinpath("assets/reload.js").read_bytes()


def client_version(script: bytes) -> str:
    """A short digest of the client: its URL changes whenever the script does."""
    return hashlib.blake2b(script, digest_size=6).hexdigest()


def client_tag(script: bytes | None = None) -> bytes:
    """The ``<script>`` element injected into HTML. Its URL is versioned, so the
    script can be cached for good: a reload then costs no request for it."""
    version = client_version(client_script() if script is None else script)
    return inject.snippet_tag(f"{CLIENT_PATH}?v={version}")


@dataclass(frozen=True, slots=True)
class _Closed:
    """The reader saw the end of the connection."""


class Broadcaster:
    """Per-process fan-out of reload messages; also the gate for HTML requests."""

    def __init__(self, io: Io, settle_timeout: float = 2.0) -> None:
        self._io = io
        self._channels: set[Channel] = set()
        self._lock = threading.Lock()
        self._settled = io.signal()
        self._settled.set()
        self._settle_timeout = settle_timeout

    def subscribe(self) -> Channel:
        channel = self._io.channel()
        with self._lock:
            self._channels.add(channel)
        return channel

    def unsubscribe(self, channel: Channel) -> None:
        with self._lock:
            self._channels.discard(channel)

    def on_event(self, event: ChangeEvent) -> None:
        """Handle a change event; runs in the worker model's context."""
        if isinstance(event, Pending):
            self._settled.clear()
            return
        if isinstance(event, Settled):
            frame = encode_frame(
                Opcode.TEXT, json.dumps({"type": "reload", "paths": list(event.paths)}).encode()
            )
            with self._lock:
                channels = list(self._channels)
            for channel in channels:
                channel.put(frame)
            self._settled.set()

    @property
    def settled(self) -> bool:
        """False while a burst of changes is being written."""
        return self._settled.is_set()

    def wait_until_settled(self) -> None:
        """Block (bounded) while a burst of changes is still being written."""
        if not self._settled.is_set():
            self._settled.wait(self._settle_timeout)


def serve_websocket(
    sock: socket.socket,
    io: Io,
    broadcaster: Broadcaster,
    buffered: bytes,
    stopping: Callable[[], bool],
    send: Callable[[bytes], None] | None = None,
) -> None:
    """Run one reload WebSocket after the 101 response was sent; returns when it ends.

    A reader task parses client frames into the same channel the broadcaster writes
    to, so this loop waits on one queue: reload messages, client frames, or a ping
    interval passing. Frames go out through ``send`` (default ``sock.sendall``): the
    connection's counting writer, so the request log shows what was sent.
    """
    write = sock.sendall if send is None else send
    channel = broadcaster.subscribe()
    parser = FrameParser(max_message=MAX_CLIENT_MESSAGE)
    parser.feed(buffered)
    sock.settimeout(PING_INTERVAL * 3)
    io.spawn(lambda: _read_frames(sock, parser, channel))
    try:
        hello = {"type": "hello", "version": __version__}
        write(encode_frame(Opcode.TEXT, json.dumps(hello).encode()))
        unanswered = 0
        while not stopping():
            item = channel.get(PING_INTERVAL)
            if item is None:
                if unanswered >= 2:
                    write(close_frame(1001, "no pong"))
                    return
                unanswered += 1
                write(encode_frame(Opcode.PING, b"sitepeek"))
            elif isinstance(item, bytes):
                write(item)
            elif isinstance(item, Message):
                if item.opcode is Opcode.PING:
                    write(encode_frame(Opcode.PONG, item.payload))
                elif item.opcode is Opcode.PONG:
                    unanswered = 0
                elif item.opcode is Opcode.CLOSE:
                    # RFC 6455 §5.5.1: echo the close, then the server closes TCP.
                    write(close_frame(1000))
                    return
            elif isinstance(item, ProtocolViolation):
                write(close_frame(item.code))
                return
            else:  # _Closed
                return
        write(close_frame(1001, "server shutting down"))
    except OSError:
        pass
    finally:
        broadcaster.unsubscribe(channel)
        # Wake the reader task (an OS thread in the threads model would otherwise
        # keep waiting in recv, and the kernel would keep the connection open).
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _read_frames(sock: socket.socket, parser: FrameParser, channel: Channel) -> None:
    try:
        while True:
            message = parser.next_message()
            if message is not None:
                channel.put(message)
                continue
            data = sock.recv(RECV_SIZE)
            if not data:
                break
            parser.feed(data)
    except ProtocolViolation as violation:
        channel.put(violation)
        return
    except OSError:
        pass
    channel.put(_Closed())
