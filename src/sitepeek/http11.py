"""Sans-I/O HTTP/1.1 request parsing and response serialisation (RFC 9112).

Bytes go in with :meth:`RequestParser.feed`, requests come out of
:meth:`RequestParser.next_request`. No sockets here: the handler owns I/O, so every
edge case can be tested by feeding bytes. A malformed message raises
:class:`ProtocolError`, which carries the status code to answer with.

Request bodies are never handed to the application (a static server has no use for
them) but they are always consumed with the framing the message declares, so a
pipelined connection never falls out of step (RFC 9112 §6).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "ProtocolError",
    "Request",
    "RequestParser",
    "reason_phrase",
    "response_head",
]


class ProtocolError(Exception):
    """The peer broke the protocol; answer with ``status`` and close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits for one request; each has its own status code."""

    max_request_line: int = 8 * 1024  # 414 URI Too Long
    max_header_bytes: int = 64 * 1024  # 431 Request Header Fields Too Large
    max_header_fields: int = 100  # 431
    max_body: int = 1024 * 1024  # 413 Content Too Large: bodies are discarded, not stored
    max_chunk_line: int = 1024  # chunk-size line with extensions; 400 beyond


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request head.

    ``path`` is the path component of the target exactly as sent (still
    percent-encoded), ``query`` the raw query without ``?`` (None when the target had
    no ``?``). Header names are lowercase; repeated fields are combined with ", "
    (RFC 9110 §5.3).
    """

    method: str
    target: str
    path: str
    query: str | None
    version: str  # "1.1" or "1.0"
    headers: Mapping[str, str]
    keep_alive: bool
    has_body: bool
    expects_continue: bool

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)


# RFC 9110 §5.6.2: token = 1*tchar
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9112 §2.3: HTTP-version = HTTP-name "/" DIGIT "." DIGIT
_HTTP_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
# RFC 9110 §5.5: field-value = *field-content; no CTLs except HTAB; obs-text allowed.
_FIELD_VALUE_INVALID = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Request-target characters: visible ASCII only (RFC 3986 plus what browsers send
# unescaped); a fragment ("#") is never sent by a conforming client (RFC 9112 §3.2).
_TARGET_INVALID = re.compile(rb"[^\x21-\x7e]|#")
# RFC 3986 §3.1 scheme, for absolute-form targets (RFC 9112 §3.2.2).
_ABSOLUTE_FORM = re.compile(r"(?i)https?://([^/?]*)(.*)")
# RFC 9112 §7.1: chunk-size = 1*HEXDIG
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(;.*)?")

_STANDARD_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


class _State(Enum):
    HEAD = 1
    BODY_LENGTH = 2
    BODY_CHUNK_SIZE = 3
    BODY_CHUNK_DATA = 4
    BODY_CHUNK_CRLF = 5
    BODY_TRAILERS = 6
    UPGRADED = 7


class RequestParser:
    """Incremental parser for the requests of one connection (pipelining included)."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buffer = bytearray()
        self._state = _State.HEAD
        self._remaining = 0  # body bytes still to discard (length or current chunk)
        self._body_seen = 0
        self._head_scanned = 0  # buffer prefix already searched for the end of the head
        self._eof = False

    # -- input ---------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Add bytes received from the peer; ``b""`` means the peer closed its side."""
        if data:
            self._buffer += data
        else:
            self._eof = True

    @property
    def eof(self) -> bool:
        return self._eof

    @property
    def has_partial_request(self) -> bool:
        """True when bytes of a request that is not complete yet are buffered."""
        if self._state is not _State.HEAD:
            return True
        return bool(self._buffer.lstrip(b"\r\n"))

    def take_buffered(self) -> bytes:
        """Hand over bytes received after the last request (for a protocol upgrade)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        self._state = _State.UPGRADED
        return data

    # -- output --------------------------------------------------------------------
    def next_request(self) -> Request | None:
        """The next complete request head, or None when more data is needed.

        The body of the previous request is discarded first. Raises ProtocolError.
        """
        if self._state is _State.UPGRADED:
            return None
        if self._state is not _State.HEAD and not self._discard_body():
            return None
        return self._parse_head()

    # -- head ----------------------------------------------------------------------
    def _parse_head(self) -> Request | None:
        buf = self._buffer
        # RFC 9112 §2.2: ignore empty lines received before the request-line.
        start = 0
        while buf.startswith(b"\r\n", start) or buf.startswith(b"\n", start):
            start += 2 if buf[start] == 0x0D else 1
        if start:
            del buf[:start]
            self._head_scanned = 0
        end = _find_head_end(buf, self._head_scanned)
        if end < 0:
            # Resume the search where it stopped: rescanning the whole buffer on every
            # call would make a head trickled in byte by byte cost quadratic time. A
            # terminator is at most 3 bytes, so only the last 2 can start one.
            self._head_scanned = max(0, len(buf) - 2)
            self._check_head_size(buf, None)
            if self._eof and buf:
                raise ProtocolError(400, "Incomplete request")
            return None
        self._head_scanned = 0
        self._check_head_size(buf, end)
        head = bytes(buf[:end])
        del buf[:end]
        return self._build_request(head)

    def _check_head_size(self, buf: bytearray, end: int | None) -> None:
        """Reject a complete head (``end``) or a partial one early: bad method, 414, 431.

        Both cases check the same things in the same order, so where the input happens
        to be cut never changes the answer. Sizes are the request line without its line
        terminator, and the field lines with theirs (not the empty line ending the
        head); for a partial head they are lower bounds, as a trailing CR may be the
        start of a CRLF.
        """
        newline = buf.find(b"\n")
        line_end = newline if newline >= 0 else len(buf)
        # RFC 9112 §3: a request line starts with a method token and SP. Bytes that
        # cannot (a TLS ClientHello on the plain port, say) get a 400 now rather than
        # a wait for a line end that may never come. A lone CR may be a leading CRLF.
        # Only the bytes within the line limit count, so that whether this 400 or the
        # 414 below wins does not depend on how much of a long line has arrived.
        window = min(line_end, self._limits.max_request_line)
        space = buf.find(b" ", 0, window)
        method = bytes(buf[: space if space >= 0 else window])
        if space == 0 or (method not in (b"", b"\r") and not _TOKEN.fullmatch(method)):
            raise ProtocolError(400, "Malformed method")
        if line_end and buf[line_end - 1] == 0x0D:
            line_end -= 1
        if line_end > self._limits.max_request_line:
            raise ProtocolError(414, "URI Too Long")
        if newline < 0:
            return
        if end is not None:
            fields_end = end - (2 if buf[end - 2] == 0x0D else 1)
        else:
            fields_end = len(buf) - (1 if buf.endswith(b"\n\r") else 0)
        if fields_end - (newline + 1) > self._limits.max_header_bytes:
            raise ProtocolError(431, "Request Header Fields Too Large")

    def _build_request(self, head: bytes) -> Request:
        lines = head.split(b"\n")
        lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
        while lines and not lines[-1]:
            lines.pop()
        # Sizes were checked by _check_head_size, before anything else can fail.
        method, target, version = _parse_request_line(lines[0])
        header_lines = lines[1:]
        if len(header_lines) > self._limits.max_header_fields:
            raise ProtocolError(431, "Too Many Header Fields")
        headers = _parse_fields(header_lines)
        path, query, host = _split_target(method, target)
        if host is not None:
            # RFC 9112 §3.2.2: absolute-form wins over the Host field.
            headers["host"] = host
        elif version == "1.1" and "host" not in headers:
            raise ProtocolError(400, "Missing Host header")
        keep_alive = _keep_alive(version, headers.get("connection", ""))
        has_body = self._start_body(version, headers)
        # RFC 9110 §10.1.1: a server MUST ignore 100-continue in an HTTP/1.0 request.
        expects = version == "1.1" and headers.get("expect", "").lower() == "100-continue"
        return Request(
            method=method,
            target=target,
            path=path,
            query=query,
            version=version,
            headers=headers,
            keep_alive=keep_alive,
            has_body=has_body,
            expects_continue=expects,
        )

    # -- body framing (RFC 9112 §6.3) ------------------------------------------------
    def _start_body(self, version: str, headers: dict[str, str]) -> bool:
        transfer_encoding = headers.get("transfer-encoding")
        content_length = headers.get("content-length")
        if transfer_encoding is not None:
            if content_length is not None:
                # Both at once is the classic smuggling shape: reject (§6.3 item 3).
                raise ProtocolError(400, "Both Transfer-Encoding and Content-Length")
            if version == "1.0":
                raise ProtocolError(400, "Transfer-Encoding in an HTTP/1.0 request")
            codings = [c.strip().lower() for c in transfer_encoding.split(",")]
            if codings[-1] != "chunked":
                raise ProtocolError(400, "Transfer-Encoding must end with chunked")
            if any(c != "chunked" for c in codings) or len(codings) > 1:
                raise ProtocolError(501, "Unsupported transfer coding")
            self._state = _State.BODY_CHUNK_SIZE
            self._body_seen = 0
            return True
        if content_length is not None:
            length = _parse_content_length(content_length)
            if length > self._limits.max_body:
                raise ProtocolError(413, "Content Too Large")
            if length:
                self._state = _State.BODY_LENGTH
                self._remaining = length
                return True
        return False

    def _discard_body(self) -> bool:
        """Consume body bytes; True once the whole body is gone."""
        buf = self._buffer
        while True:
            state = self._state
            if state is _State.BODY_LENGTH or state is _State.BODY_CHUNK_DATA:
                taken = min(self._remaining, len(buf))
                del buf[:taken]
                self._remaining -= taken
                if self._remaining:
                    return self._need_more()
                self._state = _State.HEAD if state is _State.BODY_LENGTH else _State.BODY_CHUNK_CRLF
                if self._state is _State.HEAD:
                    return True
            elif state is _State.BODY_CHUNK_SIZE:
                line = self._take_line(self._limits.max_chunk_line)
                if line is None:
                    return self._need_more()
                match = _CHUNK_SIZE.fullmatch(line)
                if match is None:
                    raise ProtocolError(400, "Invalid chunk size")
                size = int(match.group(1), 16)
                self._body_seen += size
                if self._body_seen > self._limits.max_body:
                    raise ProtocolError(413, "Content Too Large")
                self._remaining = size
                self._state = _State.BODY_CHUNK_DATA if size else _State.BODY_TRAILERS
            elif state is _State.BODY_CHUNK_CRLF:
                if len(buf) < 2:
                    return self._need_more()
                if buf[:2] != b"\r\n":
                    raise ProtocolError(400, "Missing CRLF after chunk data")
                del buf[:2]
                self._state = _State.BODY_CHUNK_SIZE
            elif state is _State.BODY_TRAILERS:
                line = self._take_line(self._limits.max_header_bytes)
                if line is None:
                    return self._need_more()
                if not line:
                    self._state = _State.HEAD
                    return True
            else:  # pragma: no cover - HEAD/UPGRADED never reach here
                return True

    def _need_more(self) -> bool:
        if self._eof:
            raise ProtocolError(400, "Connection closed inside a request body")
        return False

    def _take_line(self, limit: int) -> bytes | None:
        buf = self._buffer
        index = buf.find(b"\r\n")
        if index < 0:
            # A trailing CR may be the start of the CRLF, not part of the line.
            if len(buf) - (1 if buf.endswith(b"\r") else 0) > limit:
                raise ProtocolError(400, "Line too long in chunked body")
            return None
        if index > limit:
            raise ProtocolError(400, "Line too long in chunked body")
        line = bytes(buf[:index])
        del buf[: index + 2]
        return line


def _find_head_end(buf: bytearray, start: int = 0) -> int:
    """Index just past the empty line ending the head, or -1; search from ``start``.

    RFC 9112 §2.2 lets a recipient accept a bare LF as a line terminator, so the head
    ends at the first LF followed by LF or CRLF. Searching for CRLFCRLF first would
    skip an earlier mixed ending and swallow the next pipelined request.
    """
    index = start
    while (index := buf.find(b"\n", index)) >= 0:
        index += 1
        if buf.startswith(b"\n", index):
            return index + 1
        if buf.startswith(b"\r\n", index):
            return index + 2
    return -1


def _parse_request_line(line: bytes) -> tuple[str, str, str]:
    if b"\r" in line:
        raise ProtocolError(400, "Bare CR in request line")
    parts = line.split(b" ")
    if len(parts) != 3:
        raise ProtocolError(400, "Malformed request line")
    raw_method, raw_target, raw_version = parts
    if not _TOKEN.fullmatch(raw_method):
        raise ProtocolError(400, "Malformed method")
    version_match = _HTTP_VERSION.fullmatch(raw_version)
    if version_match is None:
        raise ProtocolError(400, "Malformed HTTP version")
    if version_match.group(1) != b"1":
        raise ProtocolError(505, "HTTP Version Not Supported")
    version = "1.1" if version_match.group(2) != b"0" else "1.0"
    if not raw_target or _TARGET_INVALID.search(raw_target):
        raise ProtocolError(400, "Invalid request target")
    return raw_method.decode("ascii"), raw_target.decode("ascii"), version


def _parse_fields(lines: Iterable[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            # RFC 9112 §5.2: obs-fold is rejected with 400.
            raise ProtocolError(400, "Obsolete line folding")
        name, colon, value = line.partition(b":")
        # RFC 9112 §5.1: no whitespace between field name and colon.
        if not colon or not _TOKEN.fullmatch(name):
            raise ProtocolError(400, "Malformed header field")
        value = value.strip(b" \t")
        if _FIELD_VALUE_INVALID.search(value):
            raise ProtocolError(400, "Invalid character in header value")
        key = name.decode("ascii").lower()
        text = value.decode("latin-1")
        if key in headers:
            if key == "host":
                raise ProtocolError(400, "Multiple Host headers")  # RFC 9112 §3.2
            headers[key] = f"{headers[key]}, {text}"
        else:
            headers[key] = text
    host = headers.get("host")
    if host is not None and _FIELD_VALUE_INVALID.search(host.encode("latin-1")):
        raise ProtocolError(400, "Invalid Host header")
    return headers


def _split_target(method: str, target: str) -> tuple[str, str | None, str | None]:
    """(path, query, host from absolute-form) of a request target (RFC 9112 §3.2)."""
    if target.startswith("/"):
        path, question, query = target.partition("?")
        return path, (query if question else None), None
    if target == "*":
        if method != "OPTIONS":
            raise ProtocolError(400, "Asterisk-form is only for OPTIONS")
        return "*", None, None
    if method == "CONNECT":
        return "", None, target  # authority-form; answered with 405 by the handler
    match = _ABSOLUTE_FORM.fullmatch(target)
    if match is None:
        raise ProtocolError(400, "Invalid request target")
    authority, rest = match.groups()
    if not authority or "@" in authority:
        raise ProtocolError(400, "Invalid authority in request target")
    path, question, query = rest.partition("?")
    return (path or "/"), (query if question else None), authority


def _parse_content_length(value: str) -> int:
    # RFC 9112 §6.3 item 5: a list of identical values may be accepted as one.
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1:
        raise ProtocolError(400, "Conflicting Content-Length values")
    (text,) = values
    if not text.isdigit() or not text.isascii() or len(text) > 18:
        raise ProtocolError(400, "Invalid Content-Length")
    return int(text)


def _keep_alive(version: str, connection: str) -> bool:
    tokens = {t.strip().lower() for t in connection.split(",")} if connection else set()
    if "close" in tokens:
        return False
    if version == "1.0":
        return "keep-alive" in tokens
    return True


def is_known_method(method: str) -> bool:
    return method in _STANDARD_METHODS


# -- responses -------------------------------------------------------------------------
_REASONS = {
    101: "Switching Protocols",
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    304: "Not Modified",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    408: "Request Timeout",
    412: "Precondition Failed",
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    421: "Misdirected Request",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

_STATUS_LINES = {code: f"HTTP/1.1 {code} {reason}\r\n" for code, reason in _REASONS.items()}


def reason_phrase(status: int) -> str:
    return _REASONS.get(status, "Unknown")


def response_head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    """Serialise a status line and header fields, ending with the blank line."""
    status_line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} {reason_phrase(status)}\r\n"
    parts = [status_line]
    for name, value in headers:
        parts.append(f"{name}: {value}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")
