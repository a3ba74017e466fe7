"""Live reload inside one worker process: fan-out to WebSockets, the build gate.

The :class:`Broadcaster` receives change events (already moved into the worker
model's context), tells every connected tab exactly once per settled burst, and holds
HTML requests while a burst is in flight so a reload never shows a half-written build.
While a ``--build`` command runs the gate stays closed (longer: :data:`BUILD_WAIT`);
a failed build or a companion that exited shows an overlay in every tab, also in tabs
that connect later, until a good build clears it. :func:`serve_websocket` runs one reload WebSocket
connection (RFC 6455).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources

from sitepeek import inject
from sitepeek.changes import (
    BuildFinished,
    BuildStarted,
    ChangeEvent,
    CompanionExited,
    Pending,
    Settled,
)
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
# How long a page request waits for a running --build (a burst of plain file changes
# waits ``settle_timeout``): long enough for a real generator, bounded all the same.
BUILD_WAIT = 30.0
BUILD_OVERLAY = "build"


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
        self._building = False
        # The overlays on show, by id ("build", "run:CMD"): sent to every tab that connects.
        self._overlays: dict[str, bytes] = {}

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
            if event.paths:  # none: a burst that turned out to be nothing to reload for
                self._send({"type": "reload", "paths": list(event.paths)})
            self._settled.set()
        elif isinstance(event, BuildStarted | BuildFinished | CompanionExited):
            self._on_command_event(event)

    def _send(self, message: Mapping[str, object]) -> None:
        frame = encode_frame(Opcode.TEXT, json.dumps(message).encode())
        with self._lock:
            channels = list(self._channels)
        for channel in channels:
            channel.put(frame)

    def _on_command_event(self, event: BuildStarted | BuildFinished | CompanionExited) -> None:
        """--build and --run: hold pages during a build, show or clear overlays."""
        if isinstance(event, BuildStarted):
            self._building = True
            self._settled.clear()
            return
        if isinstance(event, CompanionExited):
            self._show_overlay("run:" + event.command, event.title, event.output)
            return
        self._building = False
        if event.ok:
            with self._lock:
                shown = self._overlays.pop(BUILD_OVERLAY, None)
            if shown is not None:
                self._send({"type": "overlay-clear", "id": BUILD_OVERLAY})
            if event.paths:
                self._send({"type": "reload", "paths": list(event.paths)})
        else:
            self._show_overlay(BUILD_OVERLAY, event.title, event.output)
        self._settled.set()

    def _show_overlay(self, overlay_id: str, title: str, output: str) -> None:
        message = {"type": "overlay", "id": overlay_id, "title": title, "output": output}
        with self._lock:
            self._overlays[overlay_id] = encode_frame(Opcode.TEXT, json.dumps(message).encode())
        self._send(message)

    def greeting(self) -> list[bytes]:
        """Frames a newly connected tab gets after the hello: the overlays on show."""
        with self._lock:
            return list(self._overlays.values())

    @property
    def settled(self) -> bool:
        """False while a burst of changes is being written."""
        return self._settled.is_set()

    def wait_until_settled(self) -> None:
        """Block (bounded) while a burst of changes or a build is still being written."""
        if not self._settled.is_set():
            self._settled.wait(BUILD_WAIT if self._building else self._settle_timeout)


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
        for frame in broadcaster.greeting():
            write(frame)
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
