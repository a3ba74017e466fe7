"""Tests for the sans-I/O WebSocket server side (RFC 6455).

Client frames are built here by an independent encoder (:func:`client_frame`, a plain
per-byte XOR), so the parser's fast unmasking is checked against a different
implementation. Frame cases run fed whole and one byte at a time, and must agree.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sitepeek.websocket import (
    WS_GUID,
    FrameParser,
    HandshakeError,
    Message,
    Opcode,
    ProtocolViolation,
    accept_key,
    check_handshake,
    close_frame,
    encode_frame,
    handshake_response,
    normalize_origin,
    parse_close,
)

PROPERTY_SETTINGS = settings(deadline=None, max_examples=200, database=None)
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
MASK = b"\x37\xfa\x21\x3d"  # RFC 6455 §5.7
CLOSE_CODES = frozenset({1002, 1007, 1009})
MAX_STEPS = 100_000


# -- a client-side encoder, independent of the code under test -------------------------
def client_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = MASK,
    length: int | None = None,
    length_form: int | None = None,
) -> bytes:
    """A frame as a client sends it. ``length`` overrides the declared payload length;
    ``length_form`` (7, 16 or 64) forces an encoding of the length."""
    declared = len(payload) if length is None else length
    form = length_form or (7 if declared < 126 else 16 if declared < 1 << 16 else 64)
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask is not None else 0
    if form == 7:
        head = bytes((first, mask_bit | declared))
    elif form == 16:
        head = bytes((first, mask_bit | 126)) + struct.pack("!H", declared)
    else:
        head = bytes((first, mask_bit | 127)) + struct.pack("!Q", declared)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def mask_server_frame(frame: bytes, mask: bytes) -> bytes:
    """Turn an unmasked frame (as encode_frame makes it) into the masked client form."""
    assert not frame[1] & 0x80, "server frames are never masked"
    size = frame[1] & 0x7F
    offset = 2 + {126: 2, 127: 8}.get(size, 0)
    payload = frame[offset:]
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((frame[0], frame[1] | 0x80)) + frame[2:offset] + mask + masked


# -- running the parser ----------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    messages: tuple[Message, ...]
    error: int | None


def parse(pieces: Iterable[bytes], max_message: int = 1 << 20) -> Outcome:
    """Feed ``pieces``, draining messages after each; stop at the first violation."""
    parser = FrameParser(max_message)
    messages: list[Message] = []
    try:
        for piece in pieces:
            parser.feed(piece)
            for _ in range(MAX_STEPS):
                message = parser.next_message()
                if message is None:
                    break
                messages.append(message)
            else:
                raise AssertionError("next_message never answered None")
    except ProtocolViolation as exc:
        assert exc.code in CLOSE_CODES, exc
        return Outcome(tuple(messages), exc.code)
    return Outcome(tuple(messages), None)


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def parse_both(data: bytes, max_message: int = 1 << 20) -> Outcome:
    """Parse ``data`` whole and byte by byte; both must give the same outcome."""
    whole = parse([data], max_message)
    assert parse(bytewise(data), max_message) == whole
    return whole


# -- handshake -------------------------------------------------------------------------
def test_accept_key_rfc_example() -> None:
    assert accept_key(RFC_KEY) == RFC_ACCEPT
    assert WS_GUID == "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


GOOD: dict[str, str] = {
    "host": "localhost:8000",
    "upgrade": "websocket",
    "connection": "Upgrade",
    "sec-websocket-version": "13",
    "sec-websocket-key": RFC_KEY,
}


def without(name: str) -> dict[str, str]:
    return {k: v for k, v in GOOD.items() if k != name}


def with_(**fields: str) -> dict[str, str]:
    return {**GOOD, **{k.replace("_", "-"): v for k, v in fields.items()}}


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(GOOD, id="minimal"),
        pytest.param(with_(upgrade="WebSocket"), id="upgrade-any-case"),
        pytest.param(with_(upgrade="h2c, websocket"), id="upgrade-list"),
        pytest.param(with_(connection="keep-alive, Upgrade"), id="connection-list-firefox"),
        pytest.param(with_(connection="UPGRADE"), id="connection-any-case"),
        pytest.param(with_(connection="keep-alive,upgrade , close"), id="connection-no-ows"),
        pytest.param(with_(sec_websocket_version=" 13 "), id="version-padded"),
        pytest.param(with_(sec_websocket_key="AAAAAAAAAAAAAAAAAAAAAA=="), id="zero-key"),
    ],
)
def test_handshake_accepted(headers: Mapping[str, str]) -> None:
    accept = check_handshake("GET", "1.1", headers, None)
    assert accept == accept_key(headers["sec-websocket-key"].strip())


def test_handshake_accepts_full_version_string() -> None:
    assert check_handshake("GET", "HTTP/1.1", GOOD, None) == RFC_ACCEPT


@pytest.mark.parametrize(
    ("method", "version", "headers", "status"),
    [
        pytest.param("POST", "1.1", GOOD, 400, id="post"),
        pytest.param("HEAD", "1.1", GOOD, 400, id="head"),
        pytest.param("get", "1.1", GOOD, 400, id="method-is-case-sensitive"),
        pytest.param("GET", "1.0", GOOD, 400, id="http10"),
        pytest.param("GET", "HTTP/1.0", GOOD, 400, id="http10-full"),
        pytest.param("GET", "HTTP/2.0", GOOD, 400, id="http2"),
        pytest.param("GET", "", GOOD, 400, id="empty-http-version"),
        pytest.param("GET", "1.1", without("upgrade"), 400, id="no-upgrade"),
        pytest.param("GET", "1.1", with_(upgrade="h2c"), 400, id="upgrade-other"),
        pytest.param("GET", "1.1", with_(upgrade="websocket/13"), 400, id="upgrade-versioned"),
        pytest.param("GET", "1.1", without("connection"), 400, id="no-connection"),
        pytest.param("GET", "1.1", with_(connection="keep-alive"), 400, id="connection-no-up"),
        pytest.param("GET", "1.1", with_(connection="upgrades"), 400, id="connection-substr"),
        pytest.param("GET", "1.1", without("sec-websocket-version"), 426, id="no-version"),
        pytest.param("GET", "1.1", with_(sec_websocket_version="8"), 426, id="version-8"),
        pytest.param("GET", "1.1", with_(sec_websocket_version="13, 8"), 426, id="versions"),
        pytest.param("GET", "1.1", without("sec-websocket-key"), 400, id="no-key"),
        pytest.param("GET", "1.1", with_(sec_websocket_key=""), 400, id="empty-key"),
        pytest.param("GET", "1.1", with_(sec_websocket_key="!" * 24), 400, id="key-not-b64"),
        pytest.param(
            "GET", "1.1", with_(sec_websocket_key="AAAAAAAAAAAAAAAAAAAA"), 400, id="key-15-bytes"
        ),
        pytest.param(
            "GET",
            "1.1",
            with_(sec_websocket_key="AAAAAAAAAAAAAAAAAAAAAAA="),
            400,
            id="key-17-bytes",
        ),
        pytest.param(
            "GET",
            "1.1",
            with_(sec_websocket_key="AAAAAAAAAAAAAAAAAAAAAB=="),
            400,
            id="key-non-canonical",
        ),
        pytest.param(
            "GET",
            "1.1",
            with_(sec_websocket_key=f"{RFC_KEY}, {RFC_KEY}"),
            400,
            id="key-repeated",
        ),
        pytest.param("GET", "1.1", with_(sec_websocket_key="é" * 24), 400, id="key-non-ascii"),
        pytest.param(
            "GET",
            "1.1",
            with_(sec_websocket_key="AAAAAAAAAAAAAAAAAAAAAA"),
            400,
            id="key-unpadded",
        ),
    ],
)
def test_handshake_rejected(
    method: str, version: str, headers: Mapping[str, str], status: int
) -> None:
    with pytest.raises(HandshakeError) as info:
        check_handshake(method, version, headers, None)
    assert info.value.status == status
    assert info.value.reason
    if status == 426:
        # RFC 6455 §4.4: say which version we speak.
        assert ("Sec-WebSocket-Version", "13") in info.value.headers
    else:
        assert info.value.headers == ()


ALLOWED = frozenset({"http://localhost:8000", "http://127.0.0.1:8000"})


@pytest.mark.parametrize(
    ("allowed", "origin", "ok"),
    [
        (None, None, True),
        (None, "http://evil.example", True),
        (ALLOWED, "http://localhost:8000", True),
        (ALLOWED, "http://127.0.0.1:8000", True),
        (ALLOWED, "HTTP://LocalHost:8000", True),
        (ALLOWED, " http://localhost:8000 ", True),
        (ALLOWED, None, False),
        (ALLOWED, "", False),
        (ALLOWED, "null", False),
        (ALLOWED, "http://evil.example", False),
        (ALLOWED, "http://localhost:8001", False),
        (ALLOWED, "https://localhost:8000", False),
        (ALLOWED, "http://localhost", False),
        (ALLOWED, "http://localhost:8000.evil.example", False),
        (ALLOWED, "http://localhost:8000, http://evil.example", False),
        ({"http://localhost"}, "http://localhost:80", True),
        ({"http://localhost:80"}, "http://localhost", True),
        ({"HTTP://LOCALHOST"}, "http://localhost", True),
        ({"https://localhost"}, "https://localhost:443", True),
        ({"https://localhost"}, "https://localhost:80", False),
        ({"http://localhost"}, "http://localhost:443", False),
        ({"http://[::1]"}, "http://[::1]:80", True),
        ({"http://[::1]"}, "http://[::1]:8000", False),
        (set(), "http://localhost:8000", False),
    ],
)
def test_handshake_origin(allowed: set[str] | None, origin: str | None, ok: bool) -> None:
    headers = GOOD if origin is None else with_(origin=origin)
    if ok:
        assert check_handshake("GET", "1.1", headers, allowed) == RFC_ACCEPT
    else:
        with pytest.raises(HandshakeError) as info:
            check_handshake("GET", "1.1", headers, allowed)
        assert info.value.status == 403


def test_origin_checked_after_the_protocol() -> None:
    """A bad handshake is a 400 whatever the Origin: 403 is about who asks, not how."""
    headers = {**without("sec-websocket-key"), "origin": "http://evil.example"}
    with pytest.raises(HandshakeError) as info:
        check_handshake("GET", "1.1", headers, ALLOWED)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("origin", "normal"),
    [
        ("http://localhost:80", "http://localhost"),
        ("https://Example.COM:443", "https://example.com"),
        ("http://example.com:0080", "http://example.com"),
        ("http://example.com/", "http://example.com"),
        ("http://[::1]", "http://[::1]"),
        ("http://[::1]:80", "http://[::1]"),
        ("http://::80", "http://::80"),  # not a host:port; left alone
        ("null", "null"),
        ("http://x:" + "9" * 5000, "http://x:" + "9" * 5000),
    ],
)
def test_normalize_origin(origin: str, normal: str) -> None:
    assert normalize_origin(origin) == normal


def test_handshake_response_is_a_valid_101() -> None:
    data = handshake_response(RFC_ACCEPT)
    assert data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert data.endswith(b"\r\n\r\n")
    client = h11.Connection(h11.CLIENT)
    client.send(
        h11.Request(
            method="GET",
            target="/ws",
            headers=[
                ("Host", "localhost"),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", RFC_KEY),
                ("Sec-WebSocket-Version", "13"),
            ],
        )
    )
    client.send(h11.EndOfMessage())
    client.receive_data(data + b"\x81\x00")
    event = client.next_event()
    assert isinstance(event, h11.InformationalResponse)
    assert event.status_code == 101
    headers = {k.decode().lower(): v.decode() for k, v in event.headers}
    assert headers["upgrade"].lower() == "websocket"
    assert headers["connection"].lower() == "upgrade"
    assert headers["sec-websocket-accept"] == RFC_ACCEPT
    assert client.next_event() is h11.PAUSED
    assert client.trailing_data == (b"\x81\x00", False)


# -- frames ----------------------------------------------------------------------------
LENGTHS = [0, 1, 125, 126, 127, 65535, 65536]


def sample(size: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(size))


@pytest.mark.parametrize("size", LENGTHS)
@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY])
def test_single_frame_message(opcode: Opcode, size: int) -> None:
    payload = b"x" * size if opcode is Opcode.TEXT else sample(size)
    data = client_frame(opcode, payload)
    assert parse_both(data) == Outcome((Message(opcode, payload),), None)


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_trailing_frames_stay_in_step(size: int) -> None:
    data = client_frame(Opcode.BINARY, sample(size)) + client_frame(Opcode.TEXT, b"next")
    outcome = parse_both(data)
    assert outcome == Outcome(
        (Message(Opcode.BINARY, sample(size)), Message(Opcode.TEXT, b"next")), None
    )


@pytest.mark.parametrize("mask", [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", MASK])
def test_unmasking_keeps_leading_and_trailing_zero_bytes(mask: bytes) -> None:
    payload = b"\x00\x00abc\x00" + bytes(mask) + b"\x00"
    assert parse_both(client_frame(Opcode.BINARY, payload, mask=mask)).messages == (
        Message(Opcode.BINARY, payload),
    )


def test_rfc_examples() -> None:
    # RFC 6455 §5.7: a single-frame masked text message, then a fragmented one.
    single = bytes.fromhex("818537fa213d7f9f4d5158")
    assert parse_both(single).messages == (Message(Opcode.TEXT, b"Hello"),)
    fragmented = client_frame(Opcode.TEXT, b"Hel", fin=False) + client_frame(
        Opcode.CONTINUATION, b"lo"
    )
    assert parse_both(fragmented).messages == (Message(Opcode.TEXT, b"Hello"),)


def test_fragmented_message_with_interleaved_ping() -> None:
    data = (
        client_frame(Opcode.TEXT, b"Hel", fin=False)
        + client_frame(Opcode.PING, b"are you there")
        + client_frame(Opcode.CONTINUATION, b"", fin=False)
        + client_frame(Opcode.PONG, b"")
        + client_frame(Opcode.CONTINUATION, b"lo")
        + client_frame(Opcode.BINARY, b"\x00", fin=False)
        + client_frame(Opcode.CONTINUATION, b"\x01")
    )
    assert parse_both(data) == Outcome(
        (
            Message(Opcode.PING, b"are you there"),
            Message(Opcode.PONG, b""),
            Message(Opcode.TEXT, b"Hello"),
            Message(Opcode.BINARY, b"\x00\x01"),
        ),
        None,
    )


def test_utf8_checked_on_the_whole_message() -> None:
    # "é" split between two fragments: neither is valid alone, the message is.
    data = client_frame(Opcode.TEXT, b"caf\xc3", fin=False) + client_frame(
        Opcode.CONTINUATION, b"\xa9"
    )
    assert parse_both(data).messages == (Message(Opcode.TEXT, "café".encode()),)


@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG])
@pytest.mark.parametrize("size", [0, 125])
def test_control_frames(opcode: Opcode, size: int) -> None:
    assert parse_both(client_frame(opcode, sample(size))).messages == (
        Message(opcode, sample(size)),
    )


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x03\xe8", b"\x03\xe9bye", b"\x0b\xb8", b"\x13\x87", b"\x03\xe8" + "é".encode()],
    ids=["empty", "1000", "1001-reason", "3000", "4999", "utf8-reason"],
)
def test_close_frames_delivered(payload: bytes) -> None:
    assert parse_both(client_frame(Opcode.CLOSE, payload)) == Outcome(
        (Message(Opcode.CLOSE, payload),), None
    )


# Every violation with the close code it must produce.
VIOLATIONS = [
    pytest.param(client_frame(Opcode.TEXT, b"hi", mask=None), 1002, id="unmasked"),
    pytest.param(client_frame(Opcode.PING, b"", mask=None), 1002, id="unmasked-control"),
    *(
        pytest.param(client_frame(Opcode.TEXT, b"hi", rsv=rsv), 1002, id=f"rsv-{rsv}")
        for rsv in range(1, 8)
    ),
    *(
        pytest.param(client_frame(op, b""), 1002, id=f"opcode-{op:#x}")
        for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)
    ),
    pytest.param(client_frame(Opcode.PING, b"p", fin=False), 1002, id="fragmented-ping"),
    pytest.param(client_frame(Opcode.PONG, b"p", fin=False), 1002, id="fragmented-pong"),
    pytest.param(client_frame(Opcode.CLOSE, b"", fin=False), 1002, id="fragmented-close"),
    pytest.param(client_frame(Opcode.PING, b"p" * 126), 1002, id="ping-126"),
    pytest.param(
        client_frame(Opcode.PING, b"p" * 5, length_form=16), 1002, id="ping-16-bit-length"
    ),
    pytest.param(client_frame(Opcode.CLOSE, b"\x03\xe8" + b"r" * 124), 1002, id="close-126"),
    pytest.param(client_frame(Opcode.CONTINUATION, b"x"), 1002, id="continuation-first"),
    pytest.param(
        client_frame(Opcode.TEXT, b"a") + client_frame(Opcode.CONTINUATION, b"b"),
        1002,
        id="continuation-after-complete-message",
    ),
    pytest.param(
        client_frame(Opcode.TEXT, b"a", fin=False) + client_frame(Opcode.TEXT, b"b"),
        1002,
        id="text-inside-fragmented",
    ),
    pytest.param(
        client_frame(Opcode.BINARY, b"a", fin=False) + client_frame(Opcode.TEXT, b"b"),
        1002,
        id="text-inside-fragmented-binary",
    ),
    pytest.param(
        client_frame(Opcode.TEXT, b"a", fin=False) + client_frame(Opcode.BINARY, b"b"),
        1002,
        id="binary-inside-fragmented",
    ),
    pytest.param(
        client_frame(Opcode.BINARY, b"", length=1 << 63, length_form=64)[:10],
        1002,
        id="64-bit-length-msb",
    ),
    pytest.param(
        client_frame(Opcode.BINARY, b"", length=(1 << 64) - 1, length_form=64)[:10],
        1002,
        id="64-bit-length-all-ones",
    ),
    # Only the header is sent: the declared length alone must be refused.
    pytest.param(
        client_frame(Opcode.BINARY, b"", length=(1 << 20) + 1)[:10], 1009, id="frame-too-big"
    ),
    pytest.param(
        client_frame(Opcode.BINARY, b"", length=(1 << 63) - 1, length_form=64)[:10],
        1009,
        id="frame-huge",
    ),
    pytest.param(
        client_frame(Opcode.TEXT, b"a" * 65536, fin=False)
        + client_frame(Opcode.CONTINUATION, b"", length=(1 << 20) - 65535)[:10],
        1009,
        id="fragments-too-big",
    ),
    pytest.param(client_frame(Opcode.TEXT, b"\xff"), 1007, id="text-invalid-utf8"),
    pytest.param(client_frame(Opcode.TEXT, b"\xed\xa0\x80"), 1007, id="text-surrogate"),
    pytest.param(client_frame(Opcode.TEXT, b"caf\xc3"), 1007, id="text-truncated-utf8"),
    pytest.param(
        client_frame(Opcode.TEXT, b"ok", fin=False) + client_frame(Opcode.CONTINUATION, b"\x80"),
        1007,
        id="fragmented-invalid-utf8",
    ),
    pytest.param(client_frame(Opcode.CLOSE, b"\x03"), 1002, id="close-one-byte"),
    *(
        pytest.param(
            client_frame(Opcode.CLOSE, code.to_bytes(2, "big")), 1002, id=f"close-code-{code}"
        )
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535)
    ),
    pytest.param(client_frame(Opcode.CLOSE, b"\x03\xe8\xff"), 1007, id="close-reason-bad-utf8"),
]


@pytest.mark.parametrize(("data", "code"), VIOLATIONS)
def test_violation(data: bytes, code: int) -> None:
    assert parse_both(data).error == code


def test_violation_after_good_messages() -> None:
    data = client_frame(Opcode.TEXT, b"one") + client_frame(Opcode.TEXT, b"two", mask=None)
    assert parse_both(data) == Outcome((Message(Opcode.TEXT, b"one"),), 1002)


def test_message_at_max_size_is_fine() -> None:
    data = client_frame(Opcode.TEXT, b"a" * 50, fin=False) + client_frame(
        Opcode.CONTINUATION, b"b" * 50
    )
    assert parse_both(data, max_message=100).messages == (
        Message(Opcode.TEXT, b"a" * 50 + b"b" * 50),
    )
    assert parse_both(data, max_message=99).error == 1009


def test_control_frames_do_not_count_towards_max_message() -> None:
    data = (
        client_frame(Opcode.BINARY, b"a" * 10, fin=False)
        + client_frame(Opcode.PING, b"p" * 125)
        + client_frame(Opcode.CONTINUATION, b"b" * 10)
    )
    assert parse_both(data, max_message=20).messages == (
        Message(Opcode.PING, b"p" * 125),
        Message(Opcode.BINARY, b"a" * 10 + b"b" * 10),
    )


def test_max_message_resets_between_messages() -> None:
    data = client_frame(Opcode.BINARY, b"a" * 20) * 5
    assert parse_both(data, max_message=20).messages == (Message(Opcode.BINARY, b"a" * 20),) * 5


def test_violation_is_sticky() -> None:
    parser = FrameParser()
    # The bad frame is consumed whole: only the failed state can refuse what follows.
    parser.feed(client_frame(Opcode.TEXT, b"\xff"))
    with pytest.raises(ProtocolViolation) as first:
        parser.next_message()
    assert first.value.code == 1007
    parser.feed(client_frame(Opcode.TEXT, b"fine"))
    with pytest.raises(ProtocolViolation) as second:
        parser.next_message()
    assert (first.value.code, first.value.reason) == (second.value.code, second.value.reason)


def test_next_message_without_data() -> None:
    parser = FrameParser()
    assert parser.next_message() is None
    parser.feed(b"")
    assert parser.next_message() is None


# -- server frames ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "head"),
    [
        (0, b"\x82\x00"),
        (125, b"\x82\x7d"),
        (126, b"\x82\x7e\x00\x7e"),
        (65535, b"\x82\x7e\xff\xff"),
        (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_encode_frame_lengths(size: int, head: bytes) -> None:
    payload = sample(size)
    assert encode_frame(Opcode.BINARY, payload) == head + payload


def test_encode_frame_opcodes() -> None:
    assert encode_frame(Opcode.TEXT, b"Hello") == bytes.fromhex("810548656c6c6f")  # §5.7
    assert encode_frame(Opcode.PING) == b"\x89\x00"
    assert encode_frame(Opcode.PONG, b"Hello") == b"\x8a\x05Hello"
    assert encode_frame(Opcode.CLOSE) == b"\x88\x00"


def test_encode_control_frame_too_big() -> None:
    with pytest.raises(ValueError, match="125"):
        encode_frame(Opcode.PING, b"p" * 126)


def test_close_frame_round_trip() -> None:
    frame = close_frame(1001, "going away")
    assert frame == b"\x88\x0c\x03\xe9going away"
    outcome = parse_both(mask_server_frame(frame, MASK))
    assert outcome.error is None
    (message,) = outcome.messages
    assert message.opcode is Opcode.CLOSE
    assert parse_close(message.payload) == (1001, "going away")
    assert close_frame() == b"\x88\x02\x03\xe8"


def test_close_frame_long_reason_cut_on_a_character() -> None:
    frame = close_frame(1000, "é" * 100)
    assert len(frame) <= 2 + 125
    code, reason = parse_close(frame[2:])
    assert code == 1000
    assert reason == "é" * 61


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 2999, 5000])
def test_close_frame_refuses_reserved_codes(code: int) -> None:
    with pytest.raises(ValueError, match=str(code)):
        close_frame(code)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", (None, "")),
        (b"\x03\xe8", (1000, "")),
        (b"\x03\xf3", (1011, "")),
        (b"\x03\xf6", (1014, "")),
        (b"\x0f\x9f" + "ünïcode".encode(), (3999, "ünïcode")),
    ],
)
def test_parse_close(payload: bytes, expected: tuple[int | None, str]) -> None:
    assert parse_close(payload) == expected


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x03", 1002),
        (b"\x03\xed", 1002),  # 1005: no status received, never on the wire
        (b"\x03\xee", 1002),  # 1006: abnormal closure, never on the wire
        (b"\x03\xf7", 1002),  # 1015: TLS failure, never on the wire
        (b"\x03\xe8\xc3", 1007),
    ],
)
def test_parse_close_invalid(payload: bytes, code: int) -> None:
    with pytest.raises(ProtocolViolation) as info:
        parse_close(payload)
    assert info.value.code == code


# -- properties ------------------------------------------------------------------------
@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=12))
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in pairwise(bounds) if b > a]


any_frame = st.builds(
    lambda opcode, payload, fin, rsv, masked: client_frame(
        opcode, payload, fin=fin, rsv=rsv, mask=MASK if masked else None
    ),
    st.sampled_from([0, 1, 2, 8, 9, 10, 3, 0xB]),
    st.binary(max_size=140) | st.sampled_from([b"\x03\xe8", "é".encode(), b"\xc3", b"\xff"]),
    st.booleans(),
    st.sampled_from([0, 0, 0, 0, 1, 4]),
    st.booleans() | st.just(True),
)
streams = st.binary(max_size=300) | st.lists(any_frame | st.binary(max_size=12), max_size=8).map(
    b"".join
)


@PROPERTY_SETTINGS
@given(data=st.data(), stream=streams, max_message=st.sampled_from([0, 10, 130, 1 << 20]))
def test_arbitrary_bytes_only_raise_protocol_violation(
    data: st.DataObject, stream: bytes, max_message: int
) -> None:
    # parse() lets anything but a ProtocolViolation with a known code escape.
    whole = parse([stream], max_message)
    pieces = data.draw(chunked(stream))
    assert parse(pieces, max_message) == whole


payloads = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=100).map(str.encode),
    st.tuples(st.sampled_from([125, 126, 127, 65535, 65536, 70000]), st.binary(min_size=1)).map(
        lambda size_seed: (size_seed[1] * (size_seed[0] // len(size_seed[1]) + 1))[: size_seed[0]]
    ),
)


@PROPERTY_SETTINGS
@given(payload=payloads, binary=st.booleans(), mask=st.binary(min_size=4, max_size=4))
def test_encode_mask_parse_round_trip(payload: bytes, binary: bool, mask: bytes) -> None:
    opcode = Opcode.BINARY if binary else Opcode.TEXT
    if opcode is Opcode.TEXT:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            opcode = Opcode.BINARY
    frame = mask_server_frame(encode_frame(opcode, payload), mask)
    assert parse([frame]) == Outcome((Message(opcode, payload),), None)


@PROPERTY_SETTINGS
@given(
    data=st.data(),
    text=st.text(max_size=200),
    cuts=st.lists(st.integers(0, 800), max_size=6),
    pings=st.lists(st.binary(max_size=125), max_size=6),
    mask=st.binary(min_size=4, max_size=4),
)
def test_fragmented_round_trip(
    data: st.DataObject, text: str, cuts: list[int], pings: list[bytes], mask: bytes
) -> None:
    """A text message cut into fragments anywhere (even inside a character), with pings
    between them, comes out whole after the pings, however the bytes arrive."""
    payload = text.encode()
    bounds = [0, *sorted({c % (len(payload) + 1) for c in cuts}), len(payload)]
    parts = [payload[a:b] for a, b in pairwise(bounds)]
    frames = []
    for index, part in enumerate(parts):
        opcode = Opcode.TEXT if index == 0 else Opcode.CONTINUATION
        frames.append(client_frame(opcode, part, fin=index == len(parts) - 1, mask=mask))
        if index < len(pings) and index < len(parts) - 1:
            frames.append(client_frame(Opcode.PING, pings[index], mask=mask))
    stream = b"".join(frames)
    sent_pings = pings[: len(parts) - 1]
    expected = Outcome(
        (*(Message(Opcode.PING, p) for p in sent_pings), Message(Opcode.TEXT, payload)), None
    )
    assert parse(data.draw(chunked(stream))) == expected
