"""Sans-I/O WebSocket, server side (RFC 6455).

The handler owns the socket. This module validates the opening handshake
(:func:`check_handshake`, which raises :class:`HandshakeError` carrying the status and
header fields to answer with), turns client bytes into messages
(:class:`FrameParser`, which raises :class:`ProtocolViolation` carrying the close code
to send) and turns server messages into frames (:func:`encode_frame`,
:func:`close_frame`). No extension and no subprotocol is ever negotiated, so every
RSV bit must be clear (§5.2).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import IntEnum

from sitepeek.http11 import response_head

__all__ = [
    "WS_GUID",
    "FrameParser",
    "HandshakeError",
    "Message",
    "Opcode",
    "ProtocolViolation",
    "accept_key",
    "check_handshake",
    "close_frame",
    "encode_frame",
    "handshake_response",
    "normalize_origin",
    "parse_close",
]

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# -- opening handshake (§4.2) ----------------------------------------------------------
class HandshakeError(Exception):
    """The upgrade request is not acceptable: answer ``status`` with ``headers``, no 101.

    ``headers`` holds the fields the answer must carry: a 426 lists the version we
    speak (§4.4).
    """

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers


def accept_key(client_key: str) -> str:
    """The Sec-WebSocket-Accept value for a Sec-WebSocket-Key (§4.2.2 item 5.4)."""
    # SHA-1 here is a protocol constant, not a security measure.
    digest = hashlib.sha1((client_key + WS_GUID).encode("latin-1"), usedforsecurity=False)
    return base64.b64encode(digest.digest()).decode("ascii")


def check_handshake(
    method: str,
    version: str,
    headers: Mapping[str, str],
    allowed_origins: Collection[str] | None,
) -> str:
    """Validate a client's opening handshake (§4.2.1); return the Sec-WebSocket-Accept.

    ``version`` is "1.1" (as :class:`sitepeek.http11.Request` has it) or "HTTP/1.1".
    ``headers`` have lowercase names, repeated fields combined with ", ". When
    ``allowed_origins`` is not None, the Origin field must be present and in it
    (§4.2.2 item 4: the server's defence against cross-site pages; compared after
    :func:`normalize_origin`). Raises :class:`HandshakeError`.
    """
    if method != "GET":
        raise HandshakeError(400, "WebSocket handshake must use GET")
    if version.removeprefix("HTTP/") != "1.1":
        raise HandshakeError(400, "WebSocket handshake needs HTTP/1.1")
    if "websocket" not in _tokens(headers.get("upgrade", "")):
        raise HandshakeError(400, "Upgrade header must include websocket")
    if "upgrade" not in _tokens(headers.get("connection", "")):
        raise HandshakeError(400, "Connection header must include upgrade")
    if headers.get("sec-websocket-version", "").strip() != "13":
        raise HandshakeError(
            426, "Unsupported WebSocket version", (("Sec-WebSocket-Version", "13"),)
        )
    key = headers.get("sec-websocket-key", "").strip()
    if not _is_valid_key(key):
        raise HandshakeError(400, "Sec-WebSocket-Key must be base64 of 16 bytes")
    if allowed_origins is not None:
        origin = headers.get("origin")
        if origin is None:
            raise HandshakeError(403, "Origin header required")
        if normalize_origin(origin) not in {normalize_origin(o) for o in allowed_origins}:
            raise HandshakeError(403, "Origin not allowed")
    return accept_key(key)


def handshake_response(accept: str) -> bytes:
    """The complete ``101 Switching Protocols`` head accepting the upgrade (§4.2.2)."""
    return response_head(
        101,
        (
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept),
        ),
    )


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize_origin(origin: str) -> str:
    """Lowercase an origin and drop its scheme's default port.

    ``"HTTP://LocalHost:80"`` and ``"http://localhost"`` are the same origin
    (RFC 6454 §4/§6.2). Anything that is not ``scheme://host[:port]`` (the opaque
    ``"null"`` origin, say) is only lowercased and stripped.
    """
    text = origin.strip().lower().rstrip("/")
    scheme, sep, authority = text.partition("://")
    if not sep:
        return text
    host, colon, port = authority.rpartition(":")
    # A bracketed IPv6 literal contains colons of its own: "[::1]" has no port.
    bare_host = ":" not in host or (host.startswith("[") and host.endswith("]"))
    if (
        colon
        and host
        and bare_host
        and port.isascii()
        and port.isdecimal()
        and len(port) <= 5  # also keeps int() clear of its digit limit
        and int(port) == _DEFAULT_PORTS.get(scheme)
    ):
        return f"{scheme}://{host}"
    return text


def _tokens(value: str) -> set[str]:
    """The case-folded members of a comma-separated list (RFC 9110 §5.6.1)."""
    return {token.strip().lower() for token in value.split(",")}


def _is_valid_key(key: str) -> bool:
    # §4.2.1 item 5: base64 of a 16-byte nonce is always 24 characters; re-encoding
    # rejects non-canonical forms (stray bits in the padding group).
    if len(key) != 24:
        return False
    try:
        nonce = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(nonce) == 16 and base64.b64encode(nonce).decode("ascii") == key


# -- frames (§5) -----------------------------------------------------------------------
class Opcode(IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA

    @property
    def is_control(self) -> bool:
        return self >= Opcode.CLOSE


@dataclass(frozen=True, slots=True)
class Message:
    """A complete data message (TEXT or BINARY, fragments joined) or a control frame.

    A TEXT payload is valid UTF-8; a CLOSE payload passes :func:`parse_close`.
    """

    opcode: Opcode
    payload: bytes


class ProtocolViolation(Exception):
    """The client broke RFC 6455: send a Close frame with ``code``, then close (§7.1.7)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


# Close codes (§7.4.1).
PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009

_MAX_CONTROL_PAYLOAD = 125  # §5.5
_LENGTH_16 = 126
_LENGTH_64 = 127


@dataclass(slots=True)
class _FrameHeader:
    fin: bool
    opcode: Opcode
    length: int
    mask: bytes


class FrameParser:
    """Incremental parser for the frames a client sends on one connection.

    Feed bytes with :meth:`feed`, take messages with :meth:`next_message` until it
    answers None. Each frame's header is checked as soon as its bytes are here, and
    a payload is buffered only once its declared length is known to fit in
    ``max_message``. After a :class:`ProtocolViolation` the connection is failed:
    every later call raises the same violation.
    """

    def __init__(self, max_message: int = 1 << 20) -> None:
        self._max_message = max_message
        self._buffer = bytearray()
        self._header: _FrameHeader | None = None  # header of the frame being received
        self._message_opcode: Opcode | None = None  # TEXT/BINARY while fragments arrive
        self._fragments: list[bytes] = []
        self._message_size = 0
        self._failure: ProtocolViolation | None = None

    def feed(self, data: bytes) -> None:
        """Add bytes received from the client."""
        self._buffer += data

    def next_message(self) -> Message | None:
        """The next complete message, or None when more data is needed.

        Raises :class:`ProtocolViolation`.
        """
        if self._failure is not None:
            raise ProtocolViolation(self._failure.code, self._failure.reason)
        try:
            return self._next_message()
        except ProtocolViolation as exc:
            self._failure = exc
            raise

    def _next_message(self) -> Message | None:
        while True:
            if self._header is None:
                self._header = self._parse_header()
                if self._header is None:
                    return None
            header = self._header
            if len(self._buffer) < header.length:
                return None
            payload = _unmask(self._buffer[: header.length], header.mask)
            del self._buffer[: header.length]
            self._header = None
            message = self._complete(header, payload)
            if message is not None:
                return message

    def _parse_header(self) -> _FrameHeader | None:
        """Check and consume one frame header (§5.2), or None if it is incomplete."""
        buf = self._buffer
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        if first & 0x70:
            raise ProtocolViolation(PROTOCOL_ERROR, "RSV bit set without an extension")
        try:
            opcode = Opcode(first & 0x0F)
        except ValueError:
            raise ProtocolViolation(PROTOCOL_ERROR, "Unknown opcode") from None
        fin = bool(first & 0x80)
        if not second & 0x80:
            # §5.1: a server MUST close the connection on an unmasked client frame.
            raise ProtocolViolation(PROTOCOL_ERROR, "Client frame not masked")
        length = second & 0x7F
        self._check_sequence(opcode, fin, length)
        offset = 2
        if length == _LENGTH_16:
            if len(buf) < 4:
                return None
            length, offset = int.from_bytes(buf[2:4], "big"), 4
        elif length == _LENGTH_64:
            if len(buf) < 10:
                return None
            length, offset = int.from_bytes(buf[2:10], "big"), 10
            if length >> 63:
                raise ProtocolViolation(PROTOCOL_ERROR, "64-bit length with the MSB set")
        if not opcode.is_control and self._message_size + length > self._max_message:
            raise ProtocolViolation(MESSAGE_TOO_BIG, "Message too big")
        if len(buf) < offset + 4:
            return None
        mask = bytes(buf[offset : offset + 4])
        del buf[: offset + 4]
        if not opcode.is_control:
            if opcode is not Opcode.CONTINUATION:
                self._message_opcode = opcode
            self._message_size += length
        return _FrameHeader(fin, opcode, length, mask)

    def _check_sequence(self, opcode: Opcode, fin: bool, length: int) -> None:
        if opcode.is_control:
            # §5.5: control frames are never fragmented and carry at most 125 bytes.
            if not fin:
                raise ProtocolViolation(PROTOCOL_ERROR, "Fragmented control frame")
            if length > _MAX_CONTROL_PAYLOAD:
                raise ProtocolViolation(PROTOCOL_ERROR, "Control frame over 125 bytes")
        elif opcode is Opcode.CONTINUATION:
            if self._message_opcode is None:
                raise ProtocolViolation(PROTOCOL_ERROR, "Continuation without a message")
        elif self._message_opcode is not None:
            # §5.4: fragments of one message are not interleaved with another message.
            raise ProtocolViolation(PROTOCOL_ERROR, "Data frame inside a fragmented message")

    def _complete(self, header: _FrameHeader, payload: bytes) -> Message | None:
        if header.opcode.is_control:
            # §5.4: control frames may arrive between the fragments of a message.
            if header.opcode is Opcode.CLOSE:
                parse_close(payload)
            return Message(header.opcode, payload)
        self._fragments.append(payload)
        if not header.fin:
            return None
        opcode = self._message_opcode
        assert opcode is not None  # set by the first frame of the message
        data = self._fragments[0] if len(self._fragments) == 1 else b"".join(self._fragments)
        self._fragments = []
        self._message_opcode = None
        self._message_size = 0
        if opcode is Opcode.TEXT:
            _check_utf8(data)
        return Message(opcode, data)


def _unmask(data: bytes | bytearray, mask: bytes) -> bytes:
    """XOR ``data`` with the repeating 4-byte ``mask`` (§5.3) as one big integer."""
    size = len(data)
    if not size:
        return b""
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


def _check_utf8(data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation(INVALID_DATA, "Text is not valid UTF-8") from None


def encode_frame(opcode: Opcode, payload: bytes = b"") -> bytes:
    """One unmasked server frame with FIN set (§5.2: servers never mask)."""
    size = len(payload)
    if opcode.is_control and size > _MAX_CONTROL_PAYLOAD:
        raise ValueError("control frame payload over 125 bytes")
    first = 0x80 | opcode
    if size < _LENGTH_16:
        head = bytes((first, size))
    elif size < 1 << 16:
        head = struct.pack("!BBH", first, _LENGTH_16, size)
    else:
        head = struct.pack("!BBQ", first, _LENGTH_64, size)
    return head + payload


def close_frame(code: int = 1000, reason: str = "") -> bytes:
    """A Close frame with ``code`` and ``reason``, cut to fit 125 bytes (§5.5.1)."""
    if not _is_sendable_close_code(code):
        raise ValueError(f"close code {code} may not be sent")
    encoded = reason.encode("utf-8")
    if len(encoded) > _MAX_CONTROL_PAYLOAD - 2:
        # Cut on a character boundary so the reason stays valid UTF-8.
        encoded = encoded[: _MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(Opcode.CLOSE, code.to_bytes(2, "big") + encoded)


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """The (code, reason) of a Close payload; (None, "") when it has no code.

    Raises :class:`ProtocolViolation`: 1002 for a one-byte payload or a code no
    endpoint may send (§7.4.1, §7.4.2), 1007 for a reason that is not UTF-8 (§5.5.1).
    """
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise ProtocolViolation(PROTOCOL_ERROR, "Close payload of one byte")
    code = int.from_bytes(payload[:2], "big")
    if not _is_sendable_close_code(code):
        raise ProtocolViolation(PROTOCOL_ERROR, f"Invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation(INVALID_DATA, "Close reason is not valid UTF-8") from None
    return code, reason


# §7.4.1 defines 1000-1003 and 1007-1011; IANA registered 1012-1014 since. 1004 is
# reserved, and 1005, 1006 and 1015 only ever describe a closure locally. 3000-4999
# belong to libraries and applications (§7.4.2).
_PROTOCOL_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})


def _is_sendable_close_code(code: int) -> bool:
    return code in _PROTOCOL_CLOSE_CODES or 3000 <= code <= 4999
