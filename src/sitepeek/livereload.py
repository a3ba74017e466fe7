"""Live reload inside one worker process: fan-out to WebSockets, the build gate.

The :class:`Broadcaster` receives change events (already moved into the worker
model's context) and tells every connected tab exactly once per build what the build
means for it (reload, swap stylesheets, refresh images, nothing: :mod:`sitepeek.tabs`
decides from what the tab reported it loaded). It is also the gate: it holds HTML
requests while a build is in flight, and a request for a page some tab loaded whose
file is missing until the build that writes it again ends, so a reload never shows a
half-written build (pages are looked up where requests are answered from: the copy of the
last good build while the latest has failed, see :class:`~sitepeek.changes.Serving`).
Every build that changed something is a new site version, sent in
the hello and in every reload message, so a tab that (re)connects behind it reloads.
While a ``--build`` command runs the gate stays closed (longer: :data:`BUILD_WAIT`);
a failed build or a companion that exited shows an overlay in every tab, also in tabs
that connect later, until a good build clears it.
:func:`serve_websocket` runs one reload WebSocket connection (RFC 6455).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources

from sitepeek import inject
from sitepeek.changes import (
    INSTANCE,
    BuildFinished,
    BuildStarted,
    ChangeEvent,
    CompanionExited,
    Outcome,
    PageSeen,
    Pending,
    Serving,
    Settled,
    Touched,
    wall_ms,
)
from sitepeek.concurrency import Channel, Io
from sitepeek.tabs import Decision, TabReport, decide, files_for
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
# How long an HTML request waits for a build in flight to end. Builds of big sites take
# seconds; past this the page is served as it is, and the tab reloads when it ends.
SETTLE_TIMEOUT = 5.0
MAX_TOUCHED = 100  # files one "touched" message may name
MAX_PAGES = 10_000  # page URLs remembered for holding a request for a deleted page


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
    """Per-process fan-out of reload messages; also the gate for HTML requests.

    Every tab gets one message per build that changed something, with the new site
    version and what that tab is to do (see :mod:`sitepeek.tabs`): its own report of
    the URLs it loaded decides. ``root`` and ``base`` (the site root and base path) let
    it tell a page that is one file from a listing or a 404 page; without a root every
    tab is reloaded.
    """

    def __init__(
        self,
        io: Io,
        settle_timeout: float = SETTLE_TIMEOUT,
        *,
        root: str | os.PathLike[str] | None = None,
        base: str = "/",
        report: Callable[[Outcome], None] | None = None,
        share_page: Callable[[PageSeen], None] | None = None,
        touch: Callable[[Touched], None] | None = None,
    ) -> None:
        """``report`` is told what the tabs did for each build (the terminal's line);
        ``share_page`` of each page a tab loaded (for the other worker processes)."""
        self._io = io
        self._tabs: dict[Channel, TabReport] = {}
        self._lock = threading.Lock()
        self._settled = io.signal()
        self._settled.set()
        # settled, as a callable without a property in between (the hot cache asks it
        # for every cached page it answers).
        self.is_settled: Callable[[], bool] = self._settled.is_set
        self._settle_timeout = settle_timeout
        self._building = False
        # The overlays on show, by id ("build", "run:CMD"): sent to every tab that connects.
        self._overlays: dict[str, bytes] = {}
        self._root = None if root is None else os.fspath(root)
        self._served_root = self._root  # (the root is a snapshot's copy while one serves)
        self._base = base
        self._report = report
        self._share_page = share_page
        self._touch = touch
        self._next_build = io.signal()  # set when the next build ends (then replaced)
        self._pages: set[str] = set()  # URL paths tabs loaded as pages with a 200
        self._version = 0  # of the latest build that changed something
        self._ended = 0.0  # when it ended (wall ms)
        self._started: float | None = None  # when the build in flight began (wall ms)

    def subscribe(self) -> Channel:
        channel = self._io.channel()
        with self._lock:
            self._tabs[channel] = TabReport()
        return channel

    def unsubscribe(self, channel: Channel) -> None:
        with self._lock:
            self._tabs.pop(channel, None)

    def hello(self) -> dict[str, object]:
        """The first message on a reload socket: which server run and site version this
        is, and whether a build is in flight, so a tab that is behind reloads once."""
        with self._lock:
            return {
                "type": "hello",
                "version": __version__,
                "server": INSTANCE,
                "site": self._version,
                "ended": self._ended,
                "building": self._started is not None,
                "now": wall_ms(),
            }

    def note(self, channel: Channel, payload: bytes) -> bytes | None:
        """Take a client's text message; the frame to answer with, if any.

        ``{"type": "loaded", "page": ..., "status": ..., "urls": [...]}`` adds to what
        the tab loaded; the answer ``{"type": "noted", "count": n}`` says how many URLs
        the server now knows for it.
        """
        try:
            message = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(message, dict):
            return None
        if message.get("type") == "touched":
            self._touched(message.get("paths"))
            return None
        if message.get("type") != "loaded":
            return None
        with self._lock:
            report = self._tabs.get(channel)
            if report is None:
                return None
            report.add(message.get("page"), message.get("status"), message.get("urls"))
            count = report.count
            page = report.page if report.status in (0, 200) else None
            new_page = page is not None and page not in self._pages
            if page is not None:
                self._remember_page(page)
        if new_page and page is not None and self._share_page is not None:
            self._share_page(PageSeen(page))  # (other worker processes)
        return _text({"type": "noted", "count": count})

    def _touched(self, paths: object) -> None:
        """``{"type": "touched", "paths": [...]}``: a client (``sitepeek.Server.reload``)
        asks that these root-relative files count as changed, as an edit would."""
        if (
            self._touch is None
            or not isinstance(paths, list)
            or not 0 < len(paths) <= MAX_TOUCHED
            or not all(isinstance(p, str) and 0 < len(p) <= 1024 for p in paths)
        ):
            return
        self._touch(Touched(tuple(p.lstrip("/") for p in paths)))

    def _remember_page(self, page: str) -> None:
        """(Under the lock.)"""
        if len(self._pages) >= MAX_PAGES:
            self._pages.clear()  # (a bound; pages are reported again on reconnect)
        self._pages.add(page)

    def on_event(self, event: ChangeEvent) -> None:
        """Handle a change event; runs in the worker model's context."""
        if isinstance(event, PageSeen):
            with self._lock:
                self._remember_page(event.path)
            return
        if isinstance(event, Pending):
            with self._lock:
                self._started = event.started
            self._settled.clear()
            return
        if isinstance(event, BuildStarted | BuildFinished | CompanionExited):
            self._on_command_event(event)
            return
        if isinstance(event, Serving):
            # What exists is what is served: a page a failed build deleted exists in
            # the copy of the last good build, so its requests are not held.
            copy = event.snapshot
            self._root = copy if copy and os.path.isdir(copy) else self._served_root
            return
        with self._lock:
            self._started = None
            fresh = bool(event.paths) and event.version > self._version
            if fresh:
                self._version = event.version
                self._ended = event.ended
                # A page removed for good is missing from now on, not during a build.
                changed = set(event.paths)
                self._pages = {
                    page
                    for page in self._pages
                    if changed.isdisjoint(files_for(page, self._base))
                    or not self._page_missing(page)
                }
            tabs = list(self._tabs.items()) if fresh else []
            ended, self._next_build = self._next_build, self._io.signal()
        actions = {"reload": 0, "css": 0, "images": 0, "none": 0}
        for channel, report in tabs:
            decision = decide(report, event.paths, self._base, self._exists)
            actions[decision.action] += 1
            channel.put(self._message(event, decision))
        self._settled.set()
        ended.set()
        if fresh and self._report is not None:
            self._report(
                Outcome(
                    event.version,
                    actions["reload"],
                    actions["css"],
                    actions["images"],
                    actions["none"],
                )
            )

    def _send(self, message: Mapping[str, object]) -> None:
        frame = _text(message)
        with self._lock:
            channels = list(self._tabs)
        for channel in channels:
            channel.put(frame)

    def _on_command_event(self, event: BuildStarted | BuildFinished | CompanionExited) -> None:
        """--build and --run: hold pages during a build, show or clear overlays."""
        if isinstance(event, BuildStarted):
            with self._lock:
                self._building = True
                self._started = wall_ms()
            self._settled.clear()
            return
        if isinstance(event, CompanionExited):
            self._show_overlay("run:" + event.command, event.title, event.output)
            return
        with self._lock:
            self._building = False
            self._started = None
            ended, self._next_build = self._next_build, self._io.signal()
        ended.set()  # (a page held for the build is answered now, as the files are)
        # What a good build changed came as its Settled (the next site version) already.
        if event.ok:
            with self._lock:
                shown = self._overlays.pop(BUILD_OVERLAY, None)
            if shown is not None:
                self._send({"type": "overlay-clear", "id": BUILD_OVERLAY})
        else:
            self._show_overlay(BUILD_OVERLAY, event.title, event.output)
        self._settled.set()

    def _show_overlay(self, overlay_id: str, title: str, output: str) -> None:
        message = {"type": "overlay", "id": overlay_id, "title": title, "output": output}
        with self._lock:
            self._overlays[overlay_id] = _text(message)
        self._send(message)

    def greeting(self) -> list[bytes]:
        """Frames a newly connected tab gets after the hello: the overlays on show."""
        with self._lock:
            return list(self._overlays.values())

    def _message(self, event: Settled, decision: Decision) -> bytes:
        return _text(
            {
                "type": "reload",
                "site": event.version,
                "ended": event.ended,
                "paths": list(event.paths),
                "action": decision.action,
                "files": list(decision.files),
            }
        )

    def _exists(self, path: str) -> bool:
        return self._root is not None and os.path.exists(os.path.join(self._root, path))

    @property
    def settled(self) -> bool:
        """False while a build is being written."""
        return self._settled.is_set()

    def wait_until_settled(self, path: str | None = None) -> None:
        """Block (bounded) while a build is still being written.

        With the URL ``path`` of a request (below the base path), also while that path
        is a page some tab loaded whose file is missing now: a build has deleted it and
        will write it again, even if the watcher has not reported the build yet. Such a
        request waits for the next build to end, instead of getting a 404 or a listing.
        A path that was missing before is never held.
        """
        if path is not None and path in self._pages:
            with self._lock:
                missing = self._page_missing(path)
                ended = self._next_build
            if missing:
                ended.wait(self._settle_timeout)
                return
        if not self._settled.is_set():
            self._settled.wait(BUILD_WAIT if self._building else self._settle_timeout)

    def _page_missing(self, page: str) -> bool:
        return self._root is not None and not any(
            self._exists(file) for file in files_for(page, self._base)
        )


def _text(message: Mapping[str, object]) -> bytes:
    return encode_frame(Opcode.TEXT, json.dumps(message, separators=(",", ":")).encode())


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
        write(_text(broadcaster.hello()))
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
                elif item.opcode is Opcode.TEXT:
                    answer = broadcaster.note(channel, item.payload)
                    if answer is not None:
                        write(answer)
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
