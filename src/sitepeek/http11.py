"""Sans-I/O HTTP/1.1 request parsing and response serialisation (RFC 9112).

Bytes go in with :meth:`RequestParser.feed`, requests come out of
:meth:`RequestParser.next_request`. No sockets here: the handler owns I/O, so every
edge case can be tested by feeding bytes. A malformed message raises
:class:`ProtocolError`, which carries the status code to answer with.

A request body is discarded by default (a static server has no use for it), but it is
always consumed with the framing the message declares, so a pipelined connection never
falls out of step (RFC 9112 §6). A caller that wants the body (the proxy) reads it with
:meth:`RequestParser.next_body_chunk` before asking for the next request.

:class:`ResponseParser` is the other side, for the proxy's backend connection: bytes
go in, :class:`ResponseHead`, :class:`BodyData` and :class:`EndOfMessage` events come
out, and a malformed response raises :class:`BadGateway` (a ProtocolError with 502).

Why one module of this size: both parsers share the grammar (tokens, fields, chunked
framing, limits), and one module keeps one definition of each rule.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Final, NamedTuple

__all__ = [
    "DEFAULT_LIMITS",
    "END_OF_BODY",
    "BadGateway",
    "BodyData",
    "EndOfBody",
    "EndOfMessage",
    "Framing",
    "Limits",
    "ProtocolError",
    "Request",
    "RequestParser",
    "ResponseEvent",
    "ResponseHead",
    "ResponseParser",
    "combine_fields",
    "find_head_end",
    "reason_phrase",
    "response_head",
]


# Connection-specific fields (RFC 9110 §7.6.1; Proxy-Connection was never standard but
# is still sent): they describe one hop, never a resource.
HOP_BY_HOP: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# What the server frames itself (RFC 9112 §6): a configured header must never set them.
FRAMING_FIELDS: frozenset[str] = HOP_BY_HOP | {"content-length"}


class ProtocolError(Exception):
    """The peer broke the protocol; answer with ``status`` and close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class BadGateway(ProtocolError):
    """The backend sent something that is not a valid HTTP/1.1 response (502)."""

    def __init__(self, reason: str) -> None:
        super().__init__(502, reason)


class EndOfBody:
    """The request body is complete (see :meth:`RequestParser.next_body_chunk`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END_OF_BODY"


END_OF_BODY: Final = EndOfBody()


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits for one request; each has its own status code."""

    max_request_line: int = 8 * 1024  # 414 URI Too Long
    max_header_bytes: int = 64 * 1024  # 431 Request Header Fields Too Large
    max_header_fields: int = 100  # 431
    # 413 Content Too Large; RequestParser's body_limit can raise it per request (proxy).
    max_body: int = 1024 * 1024
    max_chunk_line: int = 1024  # chunk-size line with extensions; 400 beyond


DEFAULT_LIMITS = Limits()


class Request(NamedTuple):
    """A parsed request head. (A named tuple: one is made per request, and a frozen
    dataclass costs several times as much to build.)

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


# RFC 9110 §5.6.2: token = 1*tchar. The one definition: the other modules that
# check tokens (field names, media ranges, content codings) import these.
TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
TOKEN = re.compile(TCHAR + "+")
_TOKEN = re.compile(TCHAR.encode() + b"+")  # (the parser works on bytes)
# RFC 9112 §2.3: HTTP-version = HTTP-name "/" DIGIT "." DIGIT
_HTTP_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
# RFC 9110 §5.5: field-value = *field-content; no CTLs except HTAB; obs-text allowed.
_FIELD_VALUE_INVALID = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Request-target characters: visible ASCII only (RFC 3986 plus what browsers send
# unescaped); a fragment ("#") is never sent by a conforming client (RFC 9112 §3.2).
_TARGET_INVALID = re.compile(rb"[^\x21-\x7e]|#")
# RFC 3986 §3.1 scheme, for absolute-form targets (RFC 9112 §3.2.2).
_ABSOLUTE_FORM = re.compile(r"(?i)https?://([^/?]*)(.*)")
# RFC 9112 §3.2: Host = uri-host [ ":" port ], with RFC 3986 §3.2.2 and §3.2.3:
#   uri-host = IP-literal / IPv4address / reg-name     port = *DIGIT
#   reg-name = *( unreserved / pct-encoded / sub-delims )   (IPv4address is one too)
#   IP-literal = "[" ( IPv6address / IPvFuture ) "]"
#   IPvFuture = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )
# reg-name is 1* here: an empty Host names no site, and sitepeek answers it with 400.
_UNRESERVED_SUB_DELIMS = r"A-Za-z0-9\-._~!$&'()*+,;="
_REG_NAME = rf"(?:[{_UNRESERVED_SUB_DELIMS}]++|%[0-9A-Fa-f]{{2}})++"
_URI_HOST_PORT = re.compile(
    rf"(?:\[([0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.[{_UNRESERVED_SUB_DELIMS}:]+)\]"
    rf"|{_REG_NAME})(?::[0-9]*)?"
)
# Host values already found valid (bounded: hostile clients send endless names).
_VALID_HOSTS: set[str] = set()
_VALID_HOSTS_MAX = 1024
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
    """Incremental parser for the requests of one connection (pipelining included).

    ``body_limit``, when given, maps a request's raw path to the largest body accepted
    for it (instead of ``limits.max_body``): the handler allows large uploads to be
    streamed to a proxied backend while static paths keep the small limit. It is
    asked at head time, because a too-large Content-Length is a 413 right away.
    """

    def __init__(
        self, limits: Limits = DEFAULT_LIMITS, *, body_limit: Callable[[str], int] | None = None
    ) -> None:
        self._limits = limits
        self._body_limit_for = body_limit
        self._body_limit = limits.max_body  # for the body being read
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
    def drained(self) -> bool:
        """True when nothing is buffered: the next bytes received start a request."""
        return self._state is _State.HEAD and not self._buffer

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

        What is left of the previous request's body is discarded first. Raises
        ProtocolError.
        """
        if self._state is _State.UPGRADED:
            return None
        if self._state is not _State.HEAD and self._read_body(deliver=False) is None:
            return None
        return self._parse_head()

    def next_body_chunk(self) -> bytes | EndOfBody | None:
        """The next piece of the current request's body (opt-in; call after next_request).

        Returns decoded body bytes (never empty; chunked framing removed, trailers
        dropped), None when more input is needed (feed, then ask again), or
        :data:`END_OF_BODY` once the body is complete -- at once for a request without
        a body. Limits and errors are those of discarding (413, 400 on a truncated
        body). A body not read to the end is discarded by the next next_request().
        """
        if self._state is _State.HEAD or self._state is _State.UPGRADED:
            return END_OF_BODY
        return self._read_body(deliver=True)

    # -- head ----------------------------------------------------------------------
    def _parse_head(self) -> Request | None:
        buf = self._buffer
        if not buf:
            return None  # the common case between requests: nothing to look at
        if buf[0] in _CR_LF:
            # RFC 9112 §2.2: ignore empty lines received before the request-line.
            start = 0
            while buf.startswith(b"\r\n", start) or buf.startswith(b"\n", start):
                start += 2 if buf[start] == 0x0D else 1
            if start:
                del buf[:start]
                self._head_scanned = 0
                if not buf:
                    return None
        end = find_head_end(buf, self._head_scanned)
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
        head = bytes(buf[:end])
        limits = self._limits
        if end <= min(limits.max_request_line, limits.max_header_bytes):
            # A head this small is within every size limit, and the fast path accepts
            # only a valid method: _check_head_size could not object to it.
            parsed = _parse_common_head(head, limits.max_header_fields)
            if parsed is not None:
                del buf[:end]
                return self._finish_request(*parsed)
        self._check_head_size(buf, end)
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
        # The request line is complete: judge it now (an HTTP/0.9 "GET /" would
        # otherwise wait for a header section that never comes), before the 431 check
        # in both the complete and the partial case, so the answer does not depend on
        # how the input was cut.
        _parse_request_line(bytes(buf[:line_end]))
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
        return self._finish_request(method, target, version, _parse_fields(header_lines))

    def _finish_request(
        self, method: str, target: str, version: str, headers: dict[str, str]
    ) -> Request:
        path, query, host = _split_target(method, target)
        field = headers.get("host")
        if field is not None and not is_valid_host(field):
            # RFC 9112 §3.2: a server MUST answer 400 to an invalid Host field value,
            # before anything looks at the name (the loopback allowlist answers 421).
            raise ProtocolError(400, "Invalid Host header")
        if host is not None:
            # RFC 9112 §3.2.2: absolute-form wins over the Host field.
            headers["host"] = host
        elif version == "1.1" and "host" not in headers:
            raise ProtocolError(400, "Missing Host header")
        keep_alive = _keep_alive(version, headers.get("connection", ""))
        limit = self._limits.max_body
        if self._body_limit_for is not None:
            limit = self._body_limit_for(path)
        has_body = self._start_body(version, headers, limit)
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
    def _start_body(self, version: str, headers: dict[str, str], limit: int) -> bool:
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
            self._body_limit = limit
            return True
        if content_length is not None:
            length = _parse_content_length(content_length)
            if length > limit:
                raise ProtocolError(413, "Content Too Large")
            if length:
                self._state = _State.BODY_LENGTH
                self._remaining = length
                self._body_limit = limit
                return True
        return False

    def _read_body(self, deliver: bool) -> bytes | EndOfBody | None:
        """Consume body bytes: the next data (when ``deliver``), None, or END_OF_BODY.

        Without ``deliver`` the data is dropped as it arrives and only None (more
        input needed) or END_OF_BODY come back.
        """
        buf = self._buffer
        while True:
            state = self._state
            if state is _State.BODY_LENGTH or state is _State.BODY_CHUNK_DATA:
                taken = min(self._remaining, len(buf))
                data = bytes(buf[:taken]) if deliver and taken else b""
                del buf[:taken]
                self._remaining -= taken
                if not self._remaining:
                    self._state = (
                        _State.HEAD if state is _State.BODY_LENGTH else _State.BODY_CHUNK_CRLF
                    )
                if data:
                    return data
                if self._remaining:
                    self._need_more()
                    return None
                if self._state is _State.HEAD:
                    return END_OF_BODY
            elif state is _State.BODY_CHUNK_SIZE:
                line = self._take_line(self._limits.max_chunk_line)
                if line is None:
                    self._need_more()
                    return None
                match = _CHUNK_SIZE.fullmatch(line)
                if match is None:
                    raise ProtocolError(400, "Invalid chunk size")
                size = int(match.group(1), 16)
                self._body_seen += size
                if self._body_seen > self._body_limit:
                    raise ProtocolError(413, "Content Too Large")
                self._remaining = size
                self._state = _State.BODY_CHUNK_DATA if size else _State.BODY_TRAILERS
            elif state is _State.BODY_CHUNK_CRLF:
                if len(buf) < 2:
                    self._need_more()
                    return None
                if buf[:2] != b"\r\n":
                    raise ProtocolError(400, "Missing CRLF after chunk data")
                del buf[:2]
                self._state = _State.BODY_CHUNK_SIZE
            elif state is _State.BODY_TRAILERS:
                # RFC 9112 §7.1.2: trailer fields are dropped, never merged into the head.
                line = self._take_line(self._limits.max_header_bytes)
                if line is None:
                    self._need_more()
                    return None
                if not line:
                    self._state = _State.HEAD
                    return END_OF_BODY
            else:  # pragma: no cover - HEAD/UPGRADED never reach here
                return END_OF_BODY

    def _need_more(self) -> None:
        """Wait for more input, unless the peer has closed: then the body is cut short."""
        if self._eof:
            raise ProtocolError(400, "Connection closed inside a request body")

    def _take_line(self, limit: int) -> bytes | None:
        return _take_line(self._buffer, limit, _chunk_line_error)


def _chunk_line_error() -> ProtocolError:
    return ProtocolError(400, "Line too long in chunked body")


def _take_line(buf: bytearray, limit: int, too_long: Callable[[], ProtocolError]) -> bytes | None:
    """Remove and return the CRLF-terminated line at the start of ``buf`` (None: partial)."""
    index = buf.find(b"\r\n")
    if index < 0:
        # A trailing CR may be the start of the CRLF, not part of the line.
        if len(buf) - (1 if buf.endswith(b"\r") else 0) > limit:
            raise too_long()
        return None
    if index > limit:
        raise too_long()
    line = bytes(buf[:index])
    del buf[: index + 2]
    return line


_CR_LF = b"\r\n"


def find_head_end(buf: bytearray, start: int = 0) -> int:
    """Index just past the empty line ending the head, or -1; search from ``start``.

    RFC 9112 §2.2 lets a recipient accept a bare LF as a line terminator, so the head
    ends at the first LF followed by LF or CRLF. Searching for CRLFCRLF first would
    skip an earlier mixed ending and swallow the next pipelined request.
    """
    crlf = buf.find(b"\r\n\r\n", start)
    if (
        crlf >= 0
        and buf.find(b"\n\n", start, crlf + 2) < 0
        and buf.find(b"\n\r\n", start, crlf + 4) == crlf + 1
    ):
        # The usual head: CRLF line ends, and no bare-LF ending before its CRLFCRLF.
        return crlf + 4
    index = start
    while (index := buf.find(b"\n", index)) >= 0:
        index += 1
        if buf.startswith(b"\n", index):
            return index + 1
        if buf.startswith(b"\r\n", index):
            return index + 2
    return -1


# The shape of nearly every real request line: an uppercase method, an origin-form
# target, HTTP/1.0 or 1.1, CRLF. Anything else takes the general path below.
_COMMON_REQUEST_LINE = re.compile(rb"([A-Z]{3,7}) (/[\x21\x22\x24-\x7e]*) HTTP/1\.([01])\r\n")
# Field lines already validated, mapped to (lowercase name, value). Clients repeat the
# same lines (Host, User-Agent, Accept…) on every request, so most lookups hit.
_FIELD_LINES: dict[bytes, tuple[str, str]] = {}
_FIELD_LINES_MAX = 4096


def _parse_common_head(head: bytes, max_fields: int) -> tuple[str, str, str, dict[str, str]] | None:
    """Fast path for a well-formed CRLF head without repeated fields; None otherwise.

    It accepts exactly what the general path accepts (every field line passes the
    same checks) and hands every unusual head to it, so errors are reported there.
    """
    match = _COMMON_REQUEST_LINE.match(head)
    if match is None or not head.endswith(b"\r\n\r\n"):
        return None
    lines = head[match.end() : -4].split(b"\r\n") if len(head) > match.end() + 2 else []
    if len(lines) > max_fields:
        return None
    headers: dict[str, str] = {}
    cache = _FIELD_LINES
    for line in lines:
        entry = cache.get(line)
        if entry is None:
            if b"\n" in line or b"\r" in line:
                return None
            entry = _parse_field_line(line)
            if len(cache) < _FIELD_LINES_MAX:
                cache[line] = entry
        name, value = entry
        if name in headers:
            return None  # combining and the Host rules live in the general path
        headers[name] = value
    method, target, minor = match.groups()
    return method.decode(), target.decode(), ("1.1" if minor == b"1" else "1.0"), headers


def _parse_field_line(line: bytes) -> tuple[str, str]:
    """One field line's lowercase name and value (RFC 9112 §5); raises ProtocolError."""
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
    return name.decode("ascii").lower(), value.decode("latin-1")


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
        key, text = _parse_field_line(line)
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
    if not is_valid_host(authority):  # RFC 9112 §3.2.2: no userinfo either
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


def is_valid_host(value: str) -> bool:
    """Is ``value`` a valid Host field value, ``uri-host [":" port]`` (RFC 9112 §3.2)?

    Not empty; no userinfo (``a@b``), no path (``a/b``), at most one port of digits;
    an IP-literal holds an IPv6 address (no zone) or an IPvFuture.
    """
    if value in _VALID_HOSTS:  # clients send the same Host on every request
        return True
    match = _URI_HOST_PORT.fullmatch(value)
    if match is None:
        return False
    literal = match.group(1)
    if literal is not None and not literal.startswith("v"):
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return False
    if len(_VALID_HOSTS) < _VALID_HOSTS_MAX:
        _VALID_HOSTS.add(value)
    return True


def is_known_method(method: str) -> bool:
    return method in _STANDARD_METHODS


# -- responses from a backend (the proxy's side) ---------------------------------------
class Framing(Enum):
    """How a response's body is delimited (RFC 9112 §6.3)."""

    NONE = "none"  # HEAD request, 1xx, 204, 304: no body, whatever the fields say
    LENGTH = "length"  # Content-Length
    CHUNKED = "chunked"  # Transfer-Encoding: chunked
    CLOSE = "close"  # neither: the body ends when the backend closes the connection


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A response's status line and fields, as the backend sent them.

    ``headers`` keeps order, repetition and the case of names (a proxy relays them;
    Set-Cookie must never be combined). A 1xx head is followed by another head; after
    a 101 the connection speaks another protocol (see ResponseParser.take_buffered).
    """

    status: int
    reason: str
    version: str  # "1.1" or "1.0"
    headers: tuple[tuple[str, str], ...]
    framing: Framing
    content_length: int | None = None  # with Framing.LENGTH

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 999:
            raise ValueError(f"status out of range: {self.status}")
        if (self.framing is Framing.LENGTH) != (self.content_length is not None):
            raise ValueError("content_length goes with Framing.LENGTH only")

    @property
    def informational(self) -> bool:
        return self.status < 200

    def header(self, name: str) -> str | None:
        """Every field named ``name`` (any case), combined with ", "; None if absent."""
        key = name.lower()
        values = [value for field, value in self.headers if field.lower() == key]
        return ", ".join(values) if values else None


@dataclass(frozen=True, slots=True)
class BodyData:
    """A piece of the response body, framing removed (never empty)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The response is complete (trailer fields, if any, are dropped)."""


ResponseEvent = ResponseHead | BodyData | EndOfMessage

# RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]. A
# missing SP before an empty reason is common enough to accept.
_STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: (.*))?")
# RFC 9112 §4: reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )
_REASON_INVALID = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class _Body(Enum):
    HEAD = 1
    LENGTH = 2
    CHUNK_SIZE = 3
    CHUNK_DATA = 4
    CHUNK_CRLF = 5
    TRAILERS = 6
    CLOSE = 7
    END = 8  # EndOfMessage is the next event
    DONE = 9
    UPGRADED = 10


def _bad_chunk_line() -> ProtocolError:
    return BadGateway("Line too long in chunked response body")


class ResponseParser:
    """Incremental parser for the one response a backend sends (sans-I/O).

    ``request_method`` decides whether a body may follow (none for HEAD, RFC 9112
    §6.3 item 1). Feed bytes with :meth:`feed` (``b""`` when the backend closed),
    take events with :meth:`next_event` until it returns None (more input needed) or
    EndOfMessage. Anything malformed raises :class:`BadGateway`. The limits are the
    request parser's: ``max_request_line`` bounds the status line; ``max_body`` is
    not used, as response bodies are streamed through.
    """

    def __init__(self, request_method: str, limits: Limits = DEFAULT_LIMITS) -> None:
        self._head_only = request_method == "HEAD"
        self._limits = limits
        self._buffer = bytearray()
        self._state = _Body.HEAD
        self._remaining = 0
        self._head_scanned = 0
        self._received = False
        self._eof = False

    def feed(self, data: bytes) -> None:
        """Add bytes received from the backend; ``b""`` means it closed the connection."""
        if data:
            self._buffer += data
            self._received = True
        else:
            self._eof = True

    @property
    def eof(self) -> bool:
        return self._eof

    def take_buffered(self) -> bytes:
        """After a 101 head: the bytes the backend sent in the new protocol so far."""
        data = bytes(self._buffer)
        self._buffer.clear()
        self._state = _Body.UPGRADED
        return data

    def next_event(self) -> ResponseEvent | None:
        """The next event, or None when more input is needed (or the response is over)."""
        state = self._state
        if state is _Body.HEAD:
            return self._next_head()
        if state is _Body.END:
            self._state = _Body.DONE
            return EndOfMessage()
        if state is _Body.DONE or state is _Body.UPGRADED:
            return None
        if state is _Body.CLOSE:
            if self._buffer:
                data = bytes(self._buffer)
                self._buffer.clear()
                return BodyData(data)
            if self._eof:
                self._state = _Body.DONE
                return EndOfMessage()
            return None
        return self._next_body()

    # -- head ----------------------------------------------------------------------
    def _next_head(self) -> ResponseHead | None:
        buf = self._buffer
        limits = self._limits
        end = find_head_end(buf, self._head_scanned)
        bound = limits.max_request_line + limits.max_header_bytes + 4
        if end < 0:
            self._head_scanned = max(0, len(buf) - 2)
            if len(buf) > bound:
                raise BadGateway("Response head too large")
            if self._eof:
                if not buf and not self._received:
                    raise BadGateway("The backend closed the connection without a response")
                raise BadGateway("The backend closed the connection inside the response head")
            return None
        self._head_scanned = 0
        if end > bound:
            raise BadGateway("Response head too large")
        head = bytes(buf[:end])
        del buf[:end]
        response = self._build_head(head)
        if response.status == 101:
            self._state = _Body.UPGRADED
        elif response.informational:
            self._state = _Body.HEAD  # the final response follows (RFC 9110 §15.2)
        elif response.framing is Framing.NONE or response.content_length == 0:
            self._state = _Body.END
        elif response.framing is Framing.LENGTH:
            self._state = _Body.LENGTH
            self._remaining = response.content_length or 0
        elif response.framing is Framing.CHUNKED:
            self._state = _Body.CHUNK_SIZE
        else:
            self._state = _Body.CLOSE
        return response

    def _build_head(self, head: bytes) -> ResponseHead:
        lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]
        while lines and not lines[-1]:
            lines.pop()
        status_line = lines[0] if lines else b""
        if len(status_line) > self._limits.max_request_line:
            raise BadGateway("Status line too long")
        match = _STATUS_LINE.fullmatch(status_line)
        if match is None:
            raise BadGateway("Malformed status line")
        major, minor, code, reason = match.groups()
        if major != b"1":
            raise BadGateway("Unsupported HTTP version in response")
        if reason is not None and _REASON_INVALID.search(reason):
            raise BadGateway("Invalid character in reason phrase")
        if sum(len(line) + 2 for line in lines[1:]) > self._limits.max_header_bytes:
            raise BadGateway("Response header fields too large")
        headers = _parse_response_fields(lines[1:], self._limits.max_header_fields)
        version = "1.1" if minor != b"0" else "1.0"
        status = int(code)
        if status < 100:
            raise BadGateway("Invalid status code")
        framing, length = self._framing(status, version, headers)
        return ResponseHead(
            status=status,
            reason=(reason or b"").decode("latin-1"),
            version=version,
            headers=headers,
            framing=framing,
            content_length=length,
        )

    def _framing(
        self, status: int, version: str, headers: tuple[tuple[str, str], ...]
    ) -> tuple[Framing, int | None]:
        """RFC 9112 §6.3, in its order."""
        if self._head_only or status < 200 or status in (204, 304):
            return Framing.NONE, None
        transfer_encoding = _combined(headers, "transfer-encoding")
        content_length = _combined(headers, "content-length")
        if transfer_encoding is not None:
            # Item 3 lets TE override CL, but a proxy relaying such a message is how
            # smuggling happens: reject, as we do for requests.
            if content_length is not None:
                raise BadGateway("Both Transfer-Encoding and Content-Length in response")
            if version == "1.0":
                raise BadGateway("Transfer-Encoding in an HTTP/1.0 response")  # §6.1
            codings = [c.strip().lower() for c in transfer_encoding.split(",")]
            if codings != ["chunked"]:
                raise BadGateway("Unsupported transfer coding in response")
            return Framing.CHUNKED, None
        if content_length is not None:
            try:
                return Framing.LENGTH, _parse_content_length(content_length)
            except ProtocolError:
                raise BadGateway("Invalid Content-Length in response") from None
        return Framing.CLOSE, None  # item 8: read until the connection closes

    # -- body ----------------------------------------------------------------------
    def _next_body(self) -> BodyData | EndOfMessage | None:
        buf = self._buffer
        while True:
            state = self._state
            if state is _Body.LENGTH or state is _Body.CHUNK_DATA:
                taken = min(self._remaining, len(buf))
                if taken:
                    data = bytes(buf[:taken])
                    del buf[:taken]
                    self._remaining -= taken
                    if not self._remaining:
                        self._state = _Body.END if state is _Body.LENGTH else _Body.CHUNK_CRLF
                    return BodyData(data)
                self._need_more()
                return None
            if state is _Body.CHUNK_SIZE:
                line = _take_line(buf, self._limits.max_chunk_line, _bad_chunk_line)
                if line is None:
                    self._need_more()
                    return None
                match = _CHUNK_SIZE.fullmatch(line)
                if match is None:
                    raise BadGateway("Invalid chunk size in response")
                self._remaining = int(match.group(1), 16)
                self._state = _Body.CHUNK_DATA if self._remaining else _Body.TRAILERS
            elif state is _Body.CHUNK_CRLF:
                if len(buf) < 2:
                    self._need_more()
                    return None
                if buf[:2] != b"\r\n":
                    raise BadGateway("Missing CRLF after chunk data in response")
                del buf[:2]
                self._state = _Body.CHUNK_SIZE
            elif state is _Body.TRAILERS:
                line = _take_line(buf, self._limits.max_header_bytes, _bad_chunk_line)
                if line is None:
                    self._need_more()
                    return None
                if not line:
                    self._state = _Body.DONE
                    return EndOfMessage()
            else:  # pragma: no cover - the other states never reach here
                return None

    def _need_more(self) -> None:
        """Wait for more input, unless the backend has closed: then the body is cut short."""
        if self._eof:
            raise BadGateway("The backend closed the connection inside the response body")


def _parse_response_fields(lines: list[bytes], max_fields: int) -> tuple[tuple[str, str], ...]:
    fields: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            # RFC 9112 §5.2: a proxy must reject obs-fold or replace it with SP: replace.
            if not fields:
                raise BadGateway("Line folding before the first header field")
            name, value = fields[-1]
            folded = line.strip(b" \t")
            if _FIELD_VALUE_INVALID.search(folded):
                raise BadGateway("Invalid character in response header value")
            fields[-1] = (name, f"{value} {folded.decode('latin-1')}".strip())
            continue
        raw_name, colon, raw_value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(raw_name):
            raise BadGateway("Malformed response header field")
        raw_value = raw_value.strip(b" \t")
        if _FIELD_VALUE_INVALID.search(raw_value):
            raise BadGateway("Invalid character in response header value")
        fields.append((raw_name.decode("ascii"), raw_value.decode("latin-1")))
        if len(fields) > max_fields:
            raise BadGateway("Too many response header fields")
    return tuple(fields)


def _combined(headers: Iterable[tuple[str, str]], key: str) -> str | None:
    values = [value for name, value in headers if name.lower() == key]
    return ", ".join(values) if values else None


# -- responses -------------------------------------------------------------------------
def combine_fields(fields: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """One line per field name, values joined with ", " in order (RFC 9110 §5.3).

    A name keeps its place and its spelling from its first line. Set-Cookie is the
    exception §5.3 names: its lines are never combined (RFC 6265 §3), they stay
    separate, together at the first one's place.
    """
    names: dict[str, str] = {}  # lowercase -> as first written
    values: dict[str, list[str]] = {}
    for name, value in fields:
        key = name.lower()
        names.setdefault(key, name)
        values.setdefault(key, []).append(value)
    combined: list[tuple[str, str]] = []
    for key, name in names.items():
        if key == "set-cookie":
            combined.extend((name, value) for value in values[key])
        else:
            combined.append((name, ", ".join(values[key])))
    return combined


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
    504: "Gateway Timeout",
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
