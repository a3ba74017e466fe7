"""Connections: one client connection's state and writer, and the table of them all.

:class:`Connection` is what a response is written through: :meth:`~Connection.sendall`
for sitepeek's own answers (the first one's status is recorded and the header-override
rule applied), :meth:`~Connection.write` for bytes framed elsewhere (the proxy, the
reload WebSocket); both count what went out, for the request log.
:class:`ConnectionTable` is the registry every worker model uses.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sitepeek.concurrency import FdWait, Io, RawSocket, send_all
from sitepeek.entities import FileVersion, content_identity
from sitepeek.hotcache import Candidate
from sitepeek.http11 import RequestParser
from sitepeek.responses import without_overridden

__all__ = [
    "CloseConnection",
    "Connection",
    "ConnectionTable",
    "Park",
    "linger",
    "send_file_range",
    "shutdown",
]

# sendfile() in chunks, so a file rewritten in place is noticed between them.
SENDFILE_CHUNK = 1 << 20
# Files up to this size are copied (pread + send) rather than sent zero-copy, so an
# in-place rewrite during a download can never reach the client mixed (see send_file_range).
COPY_LIMIT = 16 * 1024 * 1024
COPY_CHUNK = 256 * 1024
# After answering with "Connection: close", read what the client still sends for a
# moment, so our response is not destroyed by a TCP reset (RFC 9112 §9.6).
LINGER_SECONDS = 0.5
LINGER_BYTES = 256 * 1024
RECV_SIZE = 64 * 1024


class CloseConnection(Exception):
    """The connection cannot continue (peer gone, file changed mid-response)."""


class Park(Exception):
    """The connection is idle with nothing buffered: let it wait without a task."""


@dataclass(slots=True, eq=False)
class Connection:
    """One client connection: its socket, its state, and what it was sent."""

    sock: socket.socket
    idle: bool = True  # no request in progress: shutdown and reclaim may close it
    # When its latest request began (or it was accepted): a client sees an answer
    # before the task that sent it has run on, so only start times order connections
    # the way their clients used them.
    last_request: float = 0.0
    websocket: bool = False
    # When the connection's current wait (idle, head, write) expires; 0 = none.
    # The reaper enforces it, so no I/O call needs a per-call timer.
    deadline: float = 0.0
    reading: bool = False
    # When the request head being read must be complete (0: none begun). Kept here, as
    # a connection waiting for the rest of one may be parked (threads model).
    head_deadline: float = 0.0
    expired: bool = False
    status: int = 0  # of the response being sent (for the request log)
    sent: int = 0
    extra: bytes = b""  # header lines added to this response (_headers, --header, CORS)
    # Their lowercase names: they replace sitepeek's own fields of the same name.
    overrides: frozenset[str] = frozenset()
    parser: RequestParser | None = None
    peer: object = None
    # The bytes of the request being answered when they may key a hot-cache entry
    # (they arrived alone in one read), and, once the answer is known to be a file
    # of the site, the URL path's directory and whether the build gate applies.
    hot_key: bytes | None = None
    hot: Candidate | None = None

    # The non-blocking OS socket under ``sock`` when the worker model offers one
    # (Io.raw_socket): tried first, it skips the model's wrapper whenever the kernel
    # takes the bytes at once. None: use ``sock``.
    raw: RawSocket | None = None
    readable: FdWait | None = None  # waits for ``raw`` to have bytes
    writable: FdWait | None = None  # waits for room in ``raw`` (made when first needed)
    # Adopted (see Handler.adopt): waits for its next request as a watcher, not a task.
    parkable: bool = False
    # The last request was answered from the hot cache: likely the next one too, so
    # the connection parks when idle. After any other answer its task waits on: a
    # client asking for new things each time would pay a task per request otherwise.
    hot_streak: bool = False
    on_readable: Callable[[], None] | None = None
    # Bytes received and held above the kernel (TLS: see TlsSocket.pending): while
    # there are any, the connection must not wait for ``raw`` to turn readable.
    pending: Callable[[], int] | None = None

    def sendall(self, data: bytes) -> None:
        if not self.status:
            self.status = int(data[9:12])  # "HTTP/1.1 200 ..."
            if self.overrides:
                data = without_overridden(data, self.overrides)
        self.sent += len(data)
        send_all(self.raw, self.sock, data)

    def begin(self, status: int) -> None:
        """The status of a response written with :meth:`write` (proxy, WebSocket)."""
        self.status = status

    def write(self, data: bytes) -> None:
        """Send bytes framed elsewhere as they are, counted for the request log."""
        self.sock.sendall(data)
        self.sent += len(data)

    def recv(self, size: int) -> bytes:
        raw = self.raw
        readable = self.readable
        if raw is None or readable is None:
            return self.sock.recv(size)
        while True:
            try:
                return raw.recv(size)
            except BlockingIOError:
                readable.wait()  # cooperatively


class ConnectionTable:
    """Every open connection of one process: registry, deadlines, reclaim, shutdown.

    Every worker model registers its connections here, so they are counted, reaped,
    reclaimed at ``--max-connections`` and closed at shutdown the same way.
    """

    def __init__(
        self, io: Io, keepalive_timeout: float, header_timeout: float, send_timeout: float
    ) -> None:
        self._connections: set[Connection] = set()
        self._lock = threading.Lock()
        self._freed = io.signal()  # set whenever a connection closes
        self._reaper_stop = io.signal()
        interval = min(keepalive_timeout, header_timeout, send_timeout)
        self._interval = min(1.0, max(0.05, interval / 10))
        io.spawn(self._reap)

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[Connection]:
        with self._lock:
            return iter(list(self._connections))

    def open(self, sock: socket.socket, peer: object) -> Connection | None:
        """Register an accepted socket; None (and the socket closed) if it is unusable."""
        conn = Connection(sock, last_request=time.monotonic(), peer=peer)
        try:
            # Blocking without a per-call timeout: deadlines are the reaper's job.
            sock.settimeout(None)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            with contextlib.suppress(OSError):
                sock.close()
            return None
        with self._lock:
            self._connections.add(conn)
        return conn

    def close(self, conn: Connection) -> None:
        with self._lock:
            self._connections.discard(conn)
        # Its callback refers to it: freed now, not by a later garbage collection
        # (which a TLS connection's OpenSSL state, unseen by Python, would wait for).
        conn.on_readable = None
        if conn.readable is not None:
            conn.readable.close()
        if conn.writable is not None:
            conn.writable.close()
        with contextlib.suppress(OSError):
            conn.sock.close()
        self._freed.set()

    # -- shutdown: two named paths ---------------------------------------------------
    def close_idle(self) -> None:
        """Graceful: stop the reaper and close the idle connections at once."""
        self._reaper_stop.set()
        with self._lock:
            idle = [conn for conn in self._connections if conn.idle]
        for conn in idle:
            shutdown(conn.sock)

    def abort_all(self) -> None:
        """Immediate: cut every remaining connection (the shutdown deadline has passed)."""
        with self._lock:
            remaining = list(self._connections)
        for conn in remaining:
            shutdown(conn.sock)

    def reclaim_idle(self, busy_grace: float = 0.0) -> bool:
        """Close the idle connection used least recently (its latest request began
        first), to make room for a new one.

        Called by the worker model when it is at ``max_connections``: an idle
        keep-alive connection is cheap for its client to reopen, a new client waiting
        in the backlog is not (nginx reclaims idle connections the same way).

        ``busy_grace`` is for models whose tasks are preempted (threads): a connection
        used before the oldest idle one and busy for less than that may be done
        already, its task not having run on since it answered; then nothing is closed
        (ask again in a moment) rather than a connection its client used more recently.
        """
        with self._lock:
            # A reload socket is idle but not reclaimable: its tab would reconnect.
            candidates = [conn for conn in self._connections if not conn.websocket]
        idle = [conn for conn in candidates if conn.idle]
        if not idle:
            return False
        oldest = min(idle, key=lambda conn: conn.last_request)
        if busy_grace:
            now = time.monotonic()
            for conn in candidates:
                if (
                    not conn.idle
                    and conn.last_request < oldest.last_request
                    and now - conn.last_request < busy_grace
                ):
                    return False
        shutdown(oldest.sock)
        return True

    def wait_for_room(self, limit: int, timeout: float) -> None:
        """Wait (at most ``timeout``) until fewer than ``limit`` connections are open."""
        self._freed.clear()
        if len(self._connections) >= limit:
            self._freed.wait(timeout)

    def wait_closed(self, timeout: float) -> bool:
        """Wait until every connection has closed; False if some remain at ``timeout``."""
        deadline = time.monotonic() + timeout
        while self._connections:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._freed.clear()
            if self._connections:
                self._freed.wait(min(left, 0.05))
        return True

    def _reap(self) -> None:
        """Enforce connection deadlines: one periodic sweep instead of a timer per call.

        A connection waiting to read is shut down for reading, so its recv returns
        and it can still answer 408; one stuck in a write is shut down entirely.
        """
        while not self._reaper_stop.wait(self._interval):
            now = time.monotonic()
            with self._lock:
                expired = [c for c in self._connections if c.deadline and now > c.deadline]
            for conn in expired:
                if conn.expired:
                    continue
                conn.expired = True
                how = socket.SHUT_RD if conn.reading else socket.SHUT_RDWR
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(how)


def send_file_range(
    out: Connection,
    io: Io,
    send_timeout: float,
    fd: int,
    offset: int,
    count: int,
    identity: FileVersion | None = None,
) -> None:
    """Send ``count`` bytes of ``fd`` from ``offset``: zero-copy or copied.

    With ``identity`` (a file of the site), a file rewritten in place during the
    response closes the connection, so a client never gets a complete-looking body
    that mixes two versions. sendfile cannot promise that: what it queued is read
    from the page cache when the client reads it, after any later rewrite. So a
    file up to COPY_LIMIT is copied (read, check, send), and only larger ones (media,
    archives) go out with zero-copy sendfile, checked between chunks and before the
    last byte: a rewrite racing the client's reading of already-queued data can
    still mix there (README, "Files that change while served").

    The connection's deadline is renewed for every chunk: a large download may take
    long, but a client that stops reading is cut off after send_timeout.
    """
    # Through TLS (tls.TlsSocket) every byte is encrypted in user space: always copied.
    if getattr(out.sock, "encrypted", False) or (identity is not None and count <= COPY_LIMIT):
        _send_copy(out, fd, offset, count, identity, send_timeout)
        return
    fileno = out.sock.fileno()
    timeout = send_timeout
    expected = identity.content if identity is not None else None
    while count > 0:
        chunk = min(count, SENDFILE_CHUNK)
        if expected is not None:
            if content_identity(os.fstat(fd)) != expected:
                raise CloseConnection
            if chunk == count and count > 1:
                chunk -= 1  # the last byte goes out after one more check
        out.deadline = time.monotonic() + timeout
        try:
            sent = os.sendfile(fileno, fd, offset, chunk)
        except BlockingIOError:
            # Only a non-blocking (gevent) socket gets here: a thread's sendfile
            # blocks. The reaper enforces out.deadline while we wait.
            if out.writable is None:
                out.writable = io.write_wait(fileno)
            if out.writable is None:
                raise
            out.writable.wait()
            continue
        if sent == 0:
            raise CloseConnection  # the file shrank under us: close, never hang
        out.sent += sent
        offset += sent
        count -= sent


def _send_copy(
    out: Connection,
    fd: int,
    offset: int,
    count: int,
    identity: FileVersion | None,
    send_timeout: float,
) -> None:
    """Read a chunk, check the file is still that version (with ``identity``), send
    it; repeat."""
    expected = None if identity is None else identity.content
    while count > 0:
        data = os.pread(fd, min(count, COPY_CHUNK), offset)
        if not data or (expected is not None and content_identity(os.fstat(fd)) != expected):
            raise CloseConnection  # shrank or rewritten: never send a mix
        out.deadline = time.monotonic() + send_timeout
        out.sock.sendall(data)
        out.sent += len(data)
        offset += len(data)
        count -= len(data)


def shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def linger(sock: socket.socket) -> None:
    """Half-close, then drain briefly so the client reads our final response."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(LINGER_SECONDS)
        deadline = time.monotonic() + LINGER_SECONDS
        drained = 0
        while drained < LINGER_BYTES and time.monotonic() < deadline:
            data = sock.recv(RECV_SIZE)
            if not data:
                break
            drained += len(data)
    except OSError:
        pass
