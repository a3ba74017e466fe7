"""Coverage-guided fuzzing of sitepeek's HTTP/1.1 parsers with atheris (libFuzzer).

    python fuzz/fuzz_http11.py [--target all|request|response] [libFuzzer flags] CORPUS...
    python fuzz/fuzz_http11.py --write-seeds fuzz/seeds
    python fuzz/fuzz_http11.py --replay FILE...      # run inputs once, without libFuzzer

Each input is decoded with atheris.FuzzedDataProvider into: which parser (with
``--target all``), a set of limits, option flags, a list of chunk sizes, and the message
bytes. The message is fed to the parser in those chunks, draining it after each one
(``next_request``/``next_body_chunk`` for RequestParser, ``next_event`` for
ResponseParser), then, depending on a flag, end of input (``feed(b"")``) is fed and the
parser drained again.

What counts as a crash:

- any exception other than ProtocolError from RequestParser, or other than BadGateway
  from ResponseParser (it promises BadGateway for every malformed response);
- a ProtocolError status outside 400-505;
- a broken promise of the API: an empty body chunk, a header name that is not
  lowercase, a version other than 1.0/1.1, data after EndOfMessage;
- a different outcome when the same bytes arrive in one piece instead of in chunks
  (RequestParser documents that where the input is cut never changes the answer).
  Set SITEPEEK_FUZZ_SPLIT_CHECK=0 to turn this check off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import atheris  # type: ignore[import-untyped]

# No atheris.enabled_hooks.add("RegEx"): atheris 3.0's regex hook fails on bytes
# patterns, which are all http11 has. fuzz/http11.dict gives libFuzzer the tokens instead.

with atheris.instrument_imports(include=["sitepeek"]):
    from sitepeek import http11
    from sitepeek.http11 import (
        END_OF_BODY,
        BadGateway,
        BodyData,
        EndOfMessage,
        Limits,
        ProtocolError,
        RequestParser,
        ResponseHead,
        ResponseParser,
    )

# Small limits let short inputs reach the 413/414/431 and chunk-line paths.
LIMITS = (
    http11.DEFAULT_LIMITS,
    Limits(
        max_request_line=64,
        max_header_bytes=256,
        max_header_fields=8,
        max_body=128,
        max_chunk_line=16,
    ),
    Limits(
        max_request_line=16, max_header_bytes=24, max_header_fields=2, max_body=8, max_chunk_line=4
    ),
)
READ_BODIES = 1  # RequestParser: read bodies with next_body_chunk (else discard them)
BODY_LIMIT = 2  # RequestParser: a per-path body limit callback, as the proxy uses
FEED_EOF = 4  # end with feed(b"")
HEAD_REQUEST = 8  # ResponseParser: the request was HEAD
UPGRADE = 16  # RequestParser: after a request with Upgrade, take_buffered() (a tunnel)
MAX_SPLITS = 15
TARGETS = ("request", "response")
SPLIT_CHECK = os.environ.get("SITEPEEK_FUZZ_SPLIT_CHECK", "1") != "0"

Event = tuple[object, ...]


class Violation(AssertionError):
    """The parser broke a promise of its API (reported by libFuzzer as a crash)."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise Violation(message)


# -- Decoding an input ------------------------------------------------------------------


def decode(data: bytes, target: str | None) -> tuple[str, int, int, list[int], bytes]:
    """(target, limits index, flags, chunk sizes, message) from fuzzer bytes.

    FuzzedDataProvider takes integers from the end of the input and bytes from the
    front, so the message is the input's prefix and the controls its last bytes.
    """
    fdp = atheris.FuzzedDataProvider(data)
    if target is None:
        target = TARGETS[fdp.ConsumeIntInRange(0, len(TARGETS) - 1)]
    limits = fdp.ConsumeIntInRange(0, len(LIMITS) - 1)
    flags = fdp.ConsumeIntInRange(0, 255)
    splits = [fdp.ConsumeIntInRange(0, 255) for _ in range(fdp.ConsumeIntInRange(0, MAX_SPLITS))]
    message = fdp.ConsumeBytes(fdp.remaining_bytes())
    return target, limits, flags, splits, message


def encode(target: str | None, limits: int, flags: int, splits: list[int], message: bytes) -> bytes:
    """The inverse of decode(), for seeds (integers are single bytes, read backwards)."""
    controls = ([TARGETS.index(target)] if target is not None else []) + [
        limits,
        flags,
        len(splits),
        *splits,
    ]
    return message + bytes(reversed(controls))


def chunks(message: bytes, splits: list[int]) -> list[bytes]:
    """``message`` cut at the given sizes; a size of 0 is an extra drain with no data."""
    out: list[bytes] = []
    at = 0
    for size in splits:
        out.append(message[at : at + size])
        at += size
    out.append(message[at:])
    return out


# -- RequestParser --------------------------------------------------------------------


def _body_limit(path: str) -> int:
    return 16 if path.startswith("/s") else 1 << 20


def run_requests(pieces: list[bytes], limits: Limits, flags: int) -> list[Event]:
    """Feed ``pieces``; the transcript of requests, body bytes and the final error."""
    parser = RequestParser(limits, body_limit=_body_limit if flags & BODY_LIMIT else None)
    events: list[Event] = []
    in_body = [False]
    try:
        for piece in pieces:
            if piece:
                parser.feed(piece)
            _drain_requests(parser, flags, events, in_body)
            parser.has_partial_request  # noqa: B018 - must not raise, whatever the state
        if flags & FEED_EOF:
            parser.feed(b"")
            _drain_requests(parser, flags, events, in_body)
    except ProtocolError as exc:
        _check(400 <= exc.status <= 505, f"ProtocolError status {exc.status}")
        _check(type(exc) is ProtocolError, f"RequestParser raised {type(exc).__name__}")
        events.append(("error", exc.status, exc.reason))
    if events and events[-1] == ("upgraded",):
        # As the handler does after a WebSocket upgrade: the rest belongs to the tunnel.
        events.append(("tunnel", parser.take_buffered()))
        _check(parser.next_request() is None, "a request after take_buffered()")
    return events


def _drain_requests(
    parser: RequestParser, flags: int, events: list[Event], in_body: list[bool]
) -> None:
    while not (events and events[-1] == ("upgraded",)):
        if in_body[0]:
            chunk = parser.next_body_chunk()
            if chunk is None:
                return
            if chunk is END_OF_BODY:
                events.append(("end",))
                in_body[0] = False
                continue
            _check(isinstance(chunk, bytes) and len(chunk) > 0, f"body chunk {chunk!r}")
            assert isinstance(chunk, bytes)
            if events and events[-1][0] == "body":
                events[-1] = ("body", events[-1][1] + chunk)  # type: ignore[operator]
            else:
                events.append(("body", chunk))
            continue
        request = parser.next_request()
        if request is None:
            return
        _check(request.version in ("1.0", "1.1"), f"version {request.version!r}")
        _check(bool(request.method), "empty method")
        _check(
            all(name == name.lower() and name for name in request.headers),
            f"header names {list(request.headers)}",
        )
        _check(request.target != "", "empty target")
        events.append(
            (
                "request",
                request.method,
                request.target,
                request.path,
                request.query,
                request.version,
                tuple(request.headers.items()),
                request.keep_alive,
                request.has_body,
                request.expects_continue,
            )
        )
        if flags & UPGRADE and "upgrade" in request.headers:
            events.append(("upgraded",))
        elif flags & READ_BODIES:
            in_body[0] = True


# -- ResponseParser -------------------------------------------------------------------


def run_response(pieces: list[bytes], limits: Limits, flags: int) -> list[Event]:
    parser = ResponseParser("HEAD" if flags & HEAD_REQUEST else "GET", limits)
    events: list[Event] = []
    try:
        for piece in pieces:
            if piece:
                parser.feed(piece)
            _drain_response(parser, events)
        if flags & FEED_EOF:
            parser.feed(b"")
            _drain_response(parser, events)
    except ProtocolError as exc:
        _check(isinstance(exc, BadGateway), f"ResponseParser raised {exc!r}, not BadGateway")
        _check(exc.status == 502, f"BadGateway status {exc.status}")
        events.append(("error", exc.reason))
    if events and events[-1] == ("upgraded",):
        events.append(("tunnel", parser.take_buffered()))
    return events


def _drain_response(parser: ResponseParser, events: list[Event]) -> None:
    while True:
        if events and events[-1][0] in ("upgraded", "end"):
            # After 101 the bytes belong to another protocol; after the end, to nobody.
            _check(parser.next_event() is None, "an event after the end or an upgrade")
            return
        event = parser.next_event()
        if event is None:
            return
        if isinstance(event, ResponseHead):
            _check(100 <= event.status <= 999, f"status {event.status}")
            _check(event.version in ("1.0", "1.1"), f"version {event.version!r}")
            events.append(
                (
                    "head",
                    event.status,
                    event.reason,
                    event.version,
                    event.headers,
                    event.framing,
                    event.content_length,
                )
            )
            if event.status == 101:
                events.append(("upgraded",))
        elif isinstance(event, BodyData):
            _check(isinstance(event.data, bytes) and len(event.data) > 0, "empty BodyData")
            if events and events[-1][0] == "body":
                events[-1] = ("body", events[-1][1] + event.data)  # type: ignore[operator]
            else:
                events.append(("body", event.data))
        elif isinstance(event, EndOfMessage):
            events.append(("end",))
        else:
            raise Violation(f"unknown event {event!r}")


# -- The fuzz target --------------------------------------------------------------------

RUNNERS: dict[str, Callable[[list[bytes], Limits, int], list[Event]]] = {
    "request": run_requests,
    "response": run_response,
}


def one_input(data: bytes, target: str | None) -> None:
    which, limits_index, flags, splits, message = decode(data, target)
    run = RUNNERS[which]
    limits = LIMITS[limits_index]
    split = run(chunks(message, splits), limits, flags)
    if SPLIT_CHECK and splits:
        whole = run([message], limits, flags)
        if whole != split:
            raise Violation(
                f"{which}: the outcome depends on how the input is cut\n"
                f"  in one piece: {whole!r}\n  in pieces {chunks(message, splits)!r}: {split!r}"
            )


# -- Seeds ------------------------------------------------------------------------------

REQUEST_SEEDS = {
    "get": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "pipelined": b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nHEAD /b?x=1 HTTP/1.1\r\nHost: h\r\n"
    b"Connection: close\r\n\r\n",
    "http10": b"GET /index.html HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "length_body": b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n",
    "chunked": b"POST /api HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
    "expect": b"PUT /s/x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
    b"Content-Length: 20\r\n\r\n01234567890123456789",
    "absolute": b"GET http://example.test:8080/p?q HTTP/1.1\r\nHost: other\r\n\r\n",
    "asterisk": b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    "connect": b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
    "bare_lf": b"\r\n\nGET /lf HTTP/1.1\nHost: h\nAccept: */*\n\n",
    "websocket": b"GET /__sitepeek__/ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n\x81\x85abcd",
    "repeated": b"GET / HTTP/1.1\r\nHost: h\r\nAccept: a\r\nAccept: b\r\n"
    b"Content-Length: 0, 0\r\n\r\n",
    "smuggle": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "folding": b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
    "tls": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
}
RESPONSE_SEEDS = {
    "length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0;x=y\r\nTrailer: t\r\n\r\n",
    "close": b"HTTP/1.0 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nuntil the end",
    "no_content": b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
    "continue": b'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n',
    "upgrade": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\n\r\n\x81\x02hi",
    "folded": b"HTTP/1.1 404 \r\nX-A: one\r\n two\r\nContent-Length: 0\r\n\r\n",
    "no_reason": b"HTTP/1.1 502\nContent-Length: 1\n\nx",
}


def write_seeds(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    count = 0
    for target, seeds in (("request", REQUEST_SEEDS), ("response", RESPONSE_SEEDS)):
        for name, message in seeds.items():
            variants = {
                "whole": (0, FEED_EOF | READ_BODIES | UPGRADE, []),
                "split": (0, READ_BODIES, [1, 3, 0, 7, 16, 2]),
                "small": (1, FEED_EOF | BODY_LIMIT | HEAD_REQUEST, [len(message) // 2]),
            }
            for variant, (limits, flags, splits) in variants.items():
                data = encode(target, limits, flags, splits, message)
                decoded = decode(data, None)
                assert decoded == (target, limits, flags, splits, message), (name, decoded)
                (directory / f"{target}-{name}-{variant}").write_bytes(data)
                count += 1
    return count


# -- Entry point --------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    target: str | None = None
    rest: list[str] = []
    replay: list[str] | None = None
    args = iter(argv[1:])
    for arg in args:
        if arg.startswith("--target"):
            value = arg.partition("=")[2] or next(args, "")
            if value not in ("all", *TARGETS):
                print(f"--target: all, request or response, not {value!r}", file=sys.stderr)
                return 2
            target = None if value == "all" else value
        elif arg == "--write-seeds":
            directory = Path(next(args, "fuzz/seeds"))
            print(f"wrote {write_seeds(directory)} seeds to {directory}")
            return 0
        elif arg == "--replay":
            replay = list(args)
        else:
            rest.append(arg)
    if target is not None and replay is None:
        # Seeds carry a target byte; a single-target run reads inputs without it.
        print(f"fuzzing {target} only (seeds written for --target all decode differently)")
    if replay is not None:
        for name in replay:
            one_input(Path(name).read_bytes(), target)
        print(f"replayed {len(replay)} inputs: no crash")
        return 0
    atheris.Setup([argv[0], *rest], lambda data: one_input(data, target))
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
