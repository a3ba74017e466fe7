"""TLS: one more way a connection reads and writes.

:func:`server_context` builds the one SSLContext a process serves with (ALPN offers
``http/1.1`` only: we speak nothing else). :class:`TlsSocket` speaks TLS over an
accepted TCP socket through memory BIOs, so it is socket-shaped for the connection,
the proxy and the reload WebSocket whatever the worker model: its TCP I/O is the
socket's own (gevent's cooperative one or a thread's blocking one), and the reaper's
``shutdown`` acts on TCP only, never on TLS state another task is using. Its
non-blocking side (:meth:`TlsSocket.nonblocking`) lets the event loop that parks idle
connections decrypt a request and send a hot answer without waiting.
:func:`is_client_hello` sniffs a connection's first bytes, and :func:`https_location`
says where a plain-HTTP request on the TLS port is sent.

Standard library only.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path

from sitepeek.concurrency import FdWait, RawSocket, send_all

__all__ = [
    "TlsError",
    "TlsSocket",
    "https_location",
    "is_client_hello",
    "server_context",
]

ALPN_PROTOCOLS = ("http/1.1",)
# TLS record header content type 22: handshake (RFC 8446 §5.1). A ClientHello always
# begins with it; an HTTP request line never does (a method is a token).
_HANDSHAKE = 0x16
_RECV_SIZE = 64 * 1024
# A TLS record carries at most 16 KiB of plaintext, and one read returns one record's.
_RECORD_SIZE = 16 * 1024


class TlsError(ValueError):
    """A certificate or key that cannot be served with; the message says why."""


def _refuse_password() -> str:
    raise TlsError("the key is encrypted: give sitepeek an unencrypted key file")


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for ``cert`` (the chain, leaf first) and ``key``; raises
    TlsError with a one-line reason for a missing file or a mismatched pair."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    # A client that closes without close_notify has still sent whole requests.
    context.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    for label, path in (("--cert", cert), ("--key", key)):
        if not path.exists():
            raise TlsError(f"{label} {path}: no such file")
        if not path.is_file():
            raise TlsError(f"{label} {path}: not a file")
    try:
        context.load_cert_chain(cert, key, password=_refuse_password)
    except TlsError:
        raise
    except ssl.SSLError as exc:
        raise TlsError(f"--cert {cert} / --key {key}: {_describe(exc)}") from None
    except OSError as exc:
        raise TlsError(f"--cert {cert} / --key {key}: {exc.strerror or exc}") from None
    return context


def _describe(exc: ssl.SSLError) -> str:
    reason = (exc.reason or "").upper()
    if "KEY_VALUES_MISMATCH" in reason:
        return "the key does not belong to the certificate"
    if "PEM" in reason or "PEM lib" in str(exc) or "NO_START_LINE" in reason:
        return "not a PEM certificate chain and private key"
    return (exc.reason or str(exc)).replace("_", " ").lower()


def is_client_hello(first: bytes) -> bool:
    """Do a connection's first bytes begin a TLS handshake?"""
    return bool(first) and first[0] == _HANDSHAKE


def https_location(host: str, target: str) -> str:
    """The https:// URL of a plain request for ``target`` with ``host`` (already
    checked to be a host[:port]); anything but an origin-form target goes to "/"."""
    path = target if target.startswith("/") and not target.startswith("//") else "/"
    return f"https://{host}{path}"


class TlsSocket:
    """The server side of TLS over a connected TCP socket, socket-shaped.

    One task reads and one task writes at a time (the connection's, or a WebSocket's
    reader and writer); the TLS state is touched under a lock that is never held
    across socket I/O, so the two never block each other and records go out in order.
    """

    # Bytes pass through user space to be encrypted: never sendfile on fileno().
    encrypted = True

    def __init__(
        self,
        tcp: socket.socket,
        context: ssl.SSLContext,
        first: bytes = b"",
        raw: RawSocket | None = None,
        readable: FdWait | None = None,
    ) -> None:
        """``raw`` and ``readable``: the non-blocking socket under ``tcp`` and a wait
        for it (gevent), used while no timeout is set, as the connection does."""
        self._tcp = tcp
        self._raw = raw if readable is not None else None
        self._readable = readable
        self._timeout: float | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._lock = threading.Lock()  # never contended across a yield (see above)
        # An answer send_nowait encrypted but the kernel took only in part: the rest of
        # its records, and how many of the next sendall's bytes they already carry.
        self._unsent = b""
        self._owed = 0
        self.family = tcp.family
        if first:
            self._incoming.write(first)

    # -- the handshake -----------------------------------------------------------------
    def handshake(self) -> None:
        """Complete the server handshake; raises OSError (ssl.SSLError included)."""
        while True:
            done = False
            with self._lock:
                try:
                    self._tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    out = self._outgoing.read()  # the alert, for the client's sake
                    if out:
                        self._send_quietly(out)
                    raise
                out = self._outgoing.read()
            if out:
                self._send_tcp(out)
            if done:
                return
            data = self._recv_tcp()
            if not data:
                raise ConnectionAbortedError("the client left during the TLS handshake")
            with self._lock:
                self._incoming.write(data)

    def _send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self._tcp.sendall(data)

    @property
    def tcp_type(self) -> type[socket.socket]:
        """The class of the TCP socket underneath (gevent's or the standard one), for
        the proxy's backend connections."""
        return type(self._tcp)

    def selected_alpn_protocol(self) -> str | None:
        return self._tls.selected_alpn_protocol()

    # -- the socket interface the connection code uses -----------------------------------
    # -- TCP underneath ------------------------------------------------------------------
    def _recv_tcp(self) -> bytes:
        raw = self._raw
        if raw is None or self._timeout is not None:
            return self._tcp.recv(_RECV_SIZE)
        readable = self._readable
        assert readable is not None
        while True:
            try:
                return raw.recv(_RECV_SIZE)
            except BlockingIOError:
                readable.wait()  # cooperatively; the reaper's shutdown wakes it

    def _send_tcp(self, data: bytes) -> None:
        send_all(self._raw, self._tcp, data)

    def recv(self, size: int) -> bytes:
        while (data := self._decrypt(size)) is None:
            self._receive(self._recv_tcp())
        return data

    def recv_nowait(self, size: int) -> bytes:
        """What has arrived, decrypted, without waiting (b"": the end); raises
        BlockingIOError while no whole record is there (one may arrive in pieces)."""
        raw = self._raw
        assert raw is not None
        while (data := self._decrypt(size)) is None:
            self._receive(raw.recv(_RECV_SIZE))
        return data

    def pending(self) -> int:
        """Bytes received and not read yet: decrypted (``ssl.SSLSocket.pending`` counts
        only these) or still in records. While there are any, a request may be waiting
        although the TCP socket will not turn readable for it."""
        with self._lock:
            return self._tls.pending() + self._incoming.pending

    def nonblocking(self) -> RawSocket | None:
        """This socket's non-blocking side (see :class:`_NonBlocking`), where the TCP
        socket has one and a wait for it."""
        return None if self._raw is None else _NonBlocking(self)

    def _decrypt(self, size: int) -> bytes | None:
        """The plaintext of the next record, b"" at the end; None: more TCP bytes needed."""
        with self._lock:
            # Nothing buffered at either level: a read could only fail; go to TCP.
            if self._incoming.pending or self._tls.pending():
                try:
                    return self._tls.read(min(size, _RECORD_SIZE))
                except ssl.SSLWantReadError:
                    return None
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return b""  # close_notify, or TCP closed without it
            return b"" if self._incoming.eof else None

    def _receive(self, data: bytes) -> None:
        with self._lock:
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            view = memoryview(data)
            if self._owed:  # (in records already: see send_nowait)
                owed = min(self._owed, len(view))
                self._owed -= owed
                view = view[owed:]
            self._encrypt(view)
            out = self._take_outgoing()
        self._send_tcp(out)

    def send_nowait(self, data: bytes) -> int:
        """Encrypt ``data`` and send what the kernel takes at once, never waiting:
        ``len(data)`` when it all went. Else 0, and the caller passes ``data`` to
        :meth:`sendall` next (as ``send_all`` does), which sends the rest of its
        records without encrypting it again: part of a record cannot be taken back."""
        raw = self._raw
        assert raw is not None
        with self._lock:
            if self._owed:
                raise BlockingIOError  # (what sendall must finish goes first)
            self._encrypt(memoryview(data))
            out = self._take_outgoing()
        try:
            sent = raw.send(out)
        except BlockingIOError:
            sent = 0
        if sent == len(out):
            return len(data)
        with self._lock:
            self._unsent, self._owed = out[sent:], len(data)
        return 0

    def _encrypt(self, view: memoryview) -> None:
        while view:  # a memory BIO takes everything: one pass, bar a partial write
            written = self._tls.write(view)
            view = view[written:]

    def _take_outgoing(self) -> bytes:
        """Every record not yet handed to TCP, in order (under the lock)."""
        out = self._outgoing.read()
        if self._unsent:
            out, self._unsent = self._unsent + out, b""
        return out

    def send(self, data: bytes) -> int:
        self.sendall(data)
        return len(data)

    def shutdown(self, how: int) -> None:
        """TCP shutdown; for a graceful SHUT_WR, close_notify first (RFC 8446 §6.1).

        SHUT_RD and SHUT_RDWR come from the reaper or shutdown, possibly in another
        task: they act on TCP only, which wakes whoever waits on it."""
        if how == socket.SHUT_WR:
            with self._lock:
                # The alert is queued; the peer's reply is not awaited.
                with contextlib.suppress(ssl.SSLError):
                    self._tls.unwrap()
                out = self._take_outgoing()
            if out:
                self._send_quietly(out)
        self._tcp.shutdown(how)

    def close(self) -> None:
        """close_notify first, as far as it goes without waiting (RFC 8446 §6.1): a
        client reading to the end then sees a clean close, not a truncation."""
        with self._lock:
            with contextlib.suppress(ssl.SSLError):
                self._tls.unwrap()
            out = self._take_outgoing()
        if out:
            with contextlib.suppress(OSError):
                if self._raw is not None:
                    self._raw.send(out)
                else:
                    self._tcp.send(out, socket.MSG_DONTWAIT)
        self._tcp.close()

    def fileno(self) -> int:
        return self._tcp.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout
        self._tcp.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self._tcp.gettimeout()

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self._tcp.setsockopt(level, option, value)

    def getsockname(self) -> object:
        return self._tcp.getsockname()

    def getpeername(self) -> object:
        return self._tcp.getpeername()


class _NonBlocking:
    """A TLS socket's non-blocking side (see :class:`~sitepeek.concurrency.RawSocket`),
    for the event loop that waits for a connection's next request and sends hot
    answers: ``recv`` decrypts what has arrived, ``send`` encrypts and sends what the
    kernel takes; neither waits. A send the kernel takes in part returns 0: the rest
    goes through :meth:`TlsSocket.sendall` with the same bytes, as ``send_all`` and
    the handler's hand-off to a task do."""

    __slots__ = ("_secure",)

    def __init__(self, secure: TlsSocket) -> None:
        self._secure = secure

    def recv(self, size: int, /) -> bytes:
        return self._secure.recv_nowait(size)

    def send(self, data: bytes, /) -> int:
        return self._secure.send_nowait(data)

    def fileno(self) -> int:
        return self._secure.fileno()
