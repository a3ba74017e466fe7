"""Netlify / Cloudflare Pages ``_redirects`` and ``_headers`` files at the site root.

Pure parsing and matching plus reading the two files: no HTTP. The handler asks
:meth:`RuleSet.match_redirect` what a request path turns into (a redirect, a rewrite or a
404 page) and :meth:`RuleSet.headers_for` which headers to add; :class:`RulesFile`
re-reads the files when they change, so an edit applies to the next request.

Where the two hosts differ, sitepeek follows Netlify (the format's origin) unless noted:

- ``FROM [QUERY...] TO [STATUS[!]] [CONDITIONS...]``; the first token after FROM that
  starts with ``/``, ``http://`` or ``https://`` is TO, the tokens between are query
  conditions (``key=:name`` binds, ``key=value`` must equal, ``key`` or ``key=`` must be
  present). A token starting with ``#`` ends the line.
- Statuses 301 (default), 302, 303, 307, 308, 200 (rewrite) and 404; ``!`` forces the rule
  even when a file exists at FROM. Any other status, a proxy (200 to an external URL),
  a host in FROM and a host condition (``Country=``, ``Language=``, ``Role=``, ``Cookie=``,
  ``Sign=``: a preview cannot evaluate them) are reported and the line skipped.
- ``:name`` is a whole path segment; ``*`` only as the whole last segment, and it also
  matches the bare directory (``/news/*`` matches ``/news``). One trailing slash is
  ignored on both sides (``/a`` matches ``/a/`` and the other way round).
- The request's query string is appended to a redirect target unless the target has a
  query of its own. A redirect whose target is the request URL itself is not a match (the
  trailing-slash rule would otherwise turn ``/a/ /a`` into a loop).
- ``_headers``: every matching block applies; a header set by several blocks (or several
  times in one) is combined with ``", "`` (``Set-Cookie`` stays separate lines, RFC 9110
  §5.3); Cloudflare's ``! Name`` removes Name whichever matching block set it.

Matching never builds a regex from the files: redirects compare path segments one by
one, and ``_headers`` patterns (``*`` anywhere) run as a bit-parallel NFA, so a request
costs O(len(path) x ceil(len(pattern) / 64)) machine words per rule and cannot
backtrack.

Why one module of this size: both files share the parser, the path patterns and the
reload-on-change logic, and the rules they write must be read the same way.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote, unquote_plus

from sitepeek.http11 import FRAMING_FIELDS, TOKEN, combine_fields

__all__ = [
    "HEADERS_FILE",
    "REDIRECTS_FILE",
    "HeaderRule",
    "RedirectRule",
    "RuleMatch",
    "RuleSet",
    "RulesFile",
    "parse_headers",
    "parse_redirects",
]

REDIRECTS_FILE: Final = "_redirects"
HEADERS_FILE: Final = "_headers"
# Far above what either host accepts (Netlify and Cloudflare cap rules in the thousands);
# a bigger file is more likely a mistake than a rule set, and every request walks it.
MAX_FILE_BYTES: Final = 4 * 1024 * 1024

REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
RULE_STATUSES: Final = REDIRECT_STATUSES | {200, 404}
DEFAULT_STATUS: Final = 301
_RULE_STATUS_TEXT = frozenset(str(status) for status in RULE_STATUSES)

# Fixed grammars of the file formats; nothing here is built from file contents.
_STATUS = re.compile(r"([0-9]+)(!?)")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PLACEHOLDER_SEGMENT = re.compile(":" + _NAME)
_PLACEHOLDER_IN_TARGET = re.compile(":(" + _NAME + ")")
_EXTERNAL = re.compile(r"https?://", re.IGNORECASE)
# RFC 9110 §5.6.2: field-name = token.
_TOKEN = TOKEN
# RFC 9110 §5.5 field-value, restricted to what we can send as ASCII: VCHAR, SP, HTAB.
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")
# Framing (RFC 9112 §6) and connection-specific fields (RFC 9110 §7.6.1) belong to the
# server: a rule setting them would corrupt the response.
_SERVER_OWNED = FRAMING_FIELDS
# What a Location may carry unescaped; everything else is percent-encoded (RFC 3986 §2.1).
_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))
_PRINTABLE_NO_HASH = _PRINTABLE.replace("#", "")
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
# Escapes that stay escaped in the canonical form: decoding them changes the path.
_KEEP_ESCAPED = {0x2F: b"%2F", 0x25: b"%25"}


class _Malformed(ValueError):
    """A line the rules files cannot use; the message says why."""


def _short(text: str, limit: int = 60) -> str:
    """``text`` cut for a warning: a warning stays one readable line."""
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """What a request turns into.

    ``target`` is a path (starting ``/``) or, for redirects only, an absolute URL, with
    placeholders substituted as the request spelled them (percent-encoding preserved) and
    anything outside printable ASCII percent-encoded. Redirect targets carry the query
    (the request's, unless the rule's target has its own); 200 and 404 targets are a path
    without a query: the file to serve.
    """

    status: int
    target: str
    force: bool
    line: int

    @property
    def is_redirect(self) -> bool:
        return self.status in REDIRECT_STATUSES


# --- Canonical form ----------------------------------------------------------------


def _canonical(text: str) -> str:
    """``text`` as bytes (one char per byte) with every %XX decoded except ``/`` and ``%``.

    Two spellings of one URL path (``%c3%a9``, ``%C3%A9``, ``é``; ``%7E`` and ``~``) get
    the same canonical form, and a ``/`` in it is a ``/`` of the original, so segments
    of the canonical and of the original line up. A stray ``%`` becomes ``%25``.
    """
    pieces = text.encode("utf-8", "surrogatepass").split(b"%")
    out = [pieces[0]]
    for piece in pieces[1:]:
        if len(piece) >= 2 and piece[0] in _HEX_DIGITS and piece[1] in _HEX_DIGITS:
            byte = int(piece[:2], 16)
            out.append(_KEEP_ESCAPED.get(byte) or bytes((byte,)))
            out.append(piece[2:])
        else:
            out.append(b"%25")
            out.append(piece)
    return b"".join(out).decode("latin-1")


def _strip_trailing_slash(path: str) -> str:
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


def _encode_unsafe(text: str, safe: str = _PRINTABLE) -> str:
    """Percent-encode (as UTF-8) what may not appear raw in a URL; keep existing escapes."""
    return quote(text, safe=safe, errors="surrogatepass")


def _local_target(path: str) -> str:
    # "//host" or "/\host" would send a browser to another host (CVE-2021-28861); a
    # splat or placeholder can produce it from a request like "/go//evil.example".
    if len(path) > 1 and path[1] in "/\\":
        path = "/" + path.lstrip("/\\")
    return _encode_unsafe(path)


# --- _redirects --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Param:
    """A placeholder: ``:name`` in a source segment, a query value or a target."""

    name: str


@dataclass(frozen=True, slots=True)
class _QueryCondition:
    key: str  # decoded
    value: str | None  # decoded value to equal; None: any value
    bind: str | None  # placeholder bound to the raw value


@dataclass(frozen=True, slots=True)
class _Request:
    """The request as every rule sees it, computed once per request."""

    path: str
    query: str
    segments: list[str]  # raw, trailing slash removed
    canonical_segments: list[str]
    trailing_slash: bool
    params: dict[str, str] = field(default_factory=dict)  # decoded key -> raw value

    @classmethod
    def parse(cls, path: str, query: str | None) -> _Request | None:
        if not path.startswith("/"):
            return None
        body = _strip_trailing_slash(path)[1:]
        segments = body.split("/") if body else []
        canonical = _canonical(body).split("/") if body else []
        params: dict[str, str] = {}
        for pair in (query or "").split("&"):
            if pair:
                key, _, value = pair.partition("=")
                params.setdefault(unquote_plus(key, errors="replace"), value)
        return cls(path, query or "", segments, canonical, body != path[1:], params)


@dataclass(frozen=True, slots=True)
class RedirectRule:
    """One parsed ``_redirects`` line."""

    line: int
    segments: tuple[str | _Param, ...]  # literal segments in canonical form
    splat: bool
    query: tuple[_QueryCondition, ...]
    target: tuple[str | _Param, ...]
    status: int
    force: bool

    @property
    def external(self) -> bool:
        first = self.target[0] if self.target else ""
        return isinstance(first, str) and _EXTERNAL.match(first) is not None

    def bind(self, request: _Request) -> dict[str, str] | None:
        """The placeholders' values if the rule matches ``request``, else None."""
        count = len(self.segments)
        if len(request.segments) < count or (not self.splat and len(request.segments) != count):
            return None
        bindings: dict[str, str] = {}
        pairs = zip(self.segments, request.segments, request.canonical_segments, strict=False)
        for pattern, raw, canonical in pairs:
            if isinstance(pattern, _Param):
                if not raw:
                    return None
                bindings[pattern.name] = raw
            elif pattern != canonical:
                return None
        if self.splat:
            rest = "/".join(request.segments[count:])
            bindings["splat"] = rest + "/" if rest and request.trailing_slash else rest
        for condition in self.query:
            raw_value = request.params.get(condition.key)
            if raw_value is None:
                return None
            if condition.value is not None and (
                unquote_plus(raw_value, errors="replace") != condition.value
            ):
                return None
            if condition.bind is not None:
                # "+" is a space in a query (HTML form encoding) but a plus in a path.
                bindings[condition.bind] = raw_value.replace("+", "%20")
        return bindings

    def apply(self, request: _Request, bindings: dict[str, str]) -> RuleMatch | None:
        """The match for ``request``; None for a redirect back to the request URL."""
        text = "".join(p if isinstance(p, str) else bindings[p.name] for p in self.target)
        base, hash_mark, fragment = text.partition("#")
        if self.status not in REDIRECT_STATUSES:
            served = _local_target(base.partition("?")[0])
            return RuleMatch(self.status, served, self.force, self.line)
        if request.query and "?" not in base:
            base += "?" + _encode_unsafe(request.query, _PRINTABLE_NO_HASH)
        location = base + hash_mark + fragment
        if self.external:
            return RuleMatch(self.status, _encode_unsafe(location), self.force, self.line)
        location = _local_target(location)
        url = request.path + ("?" + request.query if request.query else "")
        if _canonical(location) == _canonical(url):
            return None
        return RuleMatch(self.status, location, self.force, self.line)


def _parse_source(source: str) -> tuple[tuple[str | _Param, ...], bool, set[str]]:
    if _EXTERNAL.match(source):
        raise _Malformed("a source with a host (domain-level rule) is not supported")
    if not source.startswith("/"):
        raise _Malformed(f"the source {_short(source)!r} must start with /")
    if "?" in source:
        raise _Malformed("write query conditions after the source as key=:name, not with ?")
    body = _strip_trailing_slash(source)[1:]
    parts = body.split("/") if body else []
    segments: list[str | _Param] = []
    names: set[str] = set()
    splat = False
    for index, part in enumerate(parts):
        if "*" in part:
            if part != "*" or index != len(parts) - 1:
                raise _Malformed("'*' is supported only as the whole last segment of the source")
            splat = True
        elif _PLACEHOLDER_SEGMENT.fullmatch(part):
            segments.append(_Param(_bind_name(part[1:], names)))
        else:
            segments.append(_canonical(part))
    if splat:
        names.add("splat")
    return tuple(segments), splat, names


def _bind_name(name: str, names: set[str]) -> str:
    if name == "splat":
        raise _Malformed(":splat is reserved for the '*' at the end of the source")
    if name in names:
        raise _Malformed(f":{_short(name)} is bound twice")
    names.add(name)
    return name


def _parse_query_condition(token: str, names: set[str]) -> _QueryCondition:
    key, _, value = token.partition("=")
    if not key:
        raise _Malformed(f"query condition {_short(token)!r} has no parameter name")
    decoded_key = unquote_plus(key, errors="replace")
    if _PLACEHOLDER_SEGMENT.fullmatch(value):
        return _QueryCondition(decoded_key, None, _bind_name(value[1:], names))
    if not value:
        return _QueryCondition(decoded_key, None, None)
    return _QueryCondition(decoded_key, unquote_plus(value, errors="replace"), None)


def _parse_target(token: str, names: set[str], notes: list[str]) -> tuple[str | _Param, ...]:
    parts: list[str | _Param] = []
    start = 0
    for found in _PLACEHOLDER_IN_TARGET.finditer(token):
        name = found.group(1)
        if name not in names:
            notes.append(f":{_short(name)} in the target is not bound by the source; kept as text")
            continue
        if found.start() > start:
            parts.append(token[start : found.start()])
        parts.append(_Param(name))
        start = found.end()
    if start < len(token):
        parts.append(token[start:])
    return tuple(parts)


def _parse_status(tokens: list[str]) -> tuple[int, bool]:
    if not tokens:
        return DEFAULT_STATUS, False
    status = _STATUS.fullmatch(tokens[0])
    if status is None:
        raise _Malformed(f"expected a status code after the target, found {_short(tokens[0])!r}")
    # Compared as text: int() of a long digit string raises (CVE-2020-10735 limit).
    if status.group(1) not in _RULE_STATUS_TEXT:
        raise _Malformed(f"unknown status {_short(status.group(1))}")
    code = int(status.group(1))
    for condition in tokens[1:]:
        if "=" in condition:
            raise _Malformed(
                f"condition {_short(condition)!r} cannot be evaluated by a local preview"
            )
        raise _Malformed(f"unexpected {_short(condition)!r} after the status")
    return code, status.group(2) == "!"


def _is_target(token: str) -> bool:
    return token.startswith("/") or _EXTERNAL.match(token) is not None


def _parse_redirect_line(tokens: list[str], line: int, notes: list[str]) -> RedirectRule:
    source, *rest = tokens
    segments, splat, names = _parse_source(source)
    to_index = next((i for i, token in enumerate(rest) if _is_target(token)), None)
    if to_index is None or any(_STATUS.fullmatch(token) for token in rest[:to_index]):
        raise _Malformed("missing target (a path starting with / or an http(s):// URL)")
    query = tuple(_parse_query_condition(token, names) for token in rest[:to_index])
    status, force = _parse_status(rest[to_index + 1 :])
    target = _parse_target(rest[to_index], names, notes)
    rule = RedirectRule(line, segments, splat, query, target, status, force)
    if rule.external and status == 200:
        raise _Malformed("proxying (status 200 to an external URL) is not supported")
    if rule.external and status == 404:
        raise _Malformed("a 404 rule needs a local target path")
    return rule


def _lines(text: str) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        yield number, line.removesuffix("\r")


def parse_redirects(
    text: str, source: str = REDIRECTS_FILE
) -> tuple[tuple[RedirectRule, ...], tuple[str, ...]]:
    """The rules of a ``_redirects`` file in order, and a warning per unusable line."""
    rules: list[RedirectRule] = []
    warnings: list[str] = []
    for number, line in _lines(text):
        tokens = line.split()
        comment = next((i for i, token in enumerate(tokens) if token.startswith("#")), None)
        tokens = tokens[:comment]
        if not tokens:
            continue
        notes: list[str] = []
        try:
            rules.append(_parse_redirect_line(tokens, number, notes))
        except _Malformed as error:
            warnings.append(f"{source}:{number}: {error}; line skipped")
        else:
            warnings.extend(f"{source}:{number}: {note}" for note in notes)
    return tuple(rules), tuple(warnings)


# --- _headers ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Wildcard:
    """A ``_headers`` path pattern as a bit-parallel NFA (Shift-And with self-loops).

    The pattern becomes a list of tokens; bit i of the state is "token i is next".
    A literal character advances its bit on that character; ``*`` loops on any
    character and may be skipped; ``:name`` is one non-``/`` character that advances,
    then a non-``/`` loop that may be skipped. Each input character is a handful of
    integer operations on ``len(tokens) + 1`` bits: O(n x ceil(m / 64)) words for a path
    of n characters and m tokens, whatever the pattern (Baeza-Yates and Gonnet's
    Shift-And, extended with repeatable character classes; no backtracking).
    """

    advance: dict[str, int]  # character -> literal tokens of that character
    segment_advance: int  # first character of a placeholder: any but "/"
    any_loop: int  # "*"
    segment_loop: int  # rest of a placeholder: any but "/"
    skippable: int  # "*" and the rest of a placeholder may match nothing
    accept: int

    @classmethod
    def compile(cls, pattern: str) -> _Wildcard:
        advance: dict[str, int] = {}
        segment_advance = any_loop = segment_loop = skippable = 0
        bit = 1
        for index, segment in enumerate(pattern.split("/")):
            if index:
                advance["/"] = advance.get("/", 0) | bit
                bit <<= 1
            if _PLACEHOLDER_SEGMENT.fullmatch(segment):
                segment_advance |= bit
                segment_loop |= bit << 1
                skippable |= bit << 1
                bit <<= 2
                continue
            for number, piece in enumerate(segment.split("*")):
                if number and not any_loop & (bit >> 1):  # "**" is one "*"
                    any_loop |= bit
                    skippable |= bit
                    bit <<= 1
                for char in _canonical(piece):
                    advance[char] = advance.get(char, 0) | bit
                    bit <<= 1
        return cls(advance, segment_advance, any_loop, segment_loop, skippable, bit)

    def _skip(self, state: int) -> int:
        # One step suffices: two skippable tokens are never adjacent ("**" is merged, a
        # placeholder is a whole segment, so a "/" token follows it).
        return state | ((state & self.skippable) << 1)

    def matches(self, canonical_path: str) -> bool:
        state = self._skip(1)
        for char in canonical_path:
            advance = self.advance.get(char, 0)
            loop = self.any_loop
            if char != "/":
                advance |= self.segment_advance
                loop |= self.segment_loop
            state = self._skip(((state & advance) << 1) | (state & loop))
            if not state:
                return False
        return bool(state & self.accept)


@dataclass(frozen=True, slots=True)
class HeaderRule:
    """One ``_headers`` block: a path pattern and the header lines under it."""

    pattern: str
    line: int
    headers: tuple[tuple[str, str], ...]
    detach: frozenset[str]  # lower-case names removed by "! Name"
    matcher: _Wildcard = field(repr=False, compare=False)

    def matches(self, canonical_path: str) -> bool:
        if self.matcher.matches(canonical_path):
            return True
        bare = _strip_trailing_slash(canonical_path)
        return bare != canonical_path and self.matcher.matches(bare)


@dataclass(slots=True)
class _Block:
    pattern: str
    line: int
    matcher: _Wildcard
    headers: list[tuple[str, str]] = field(default_factory=list)
    detach: set[str] = field(default_factory=set)

    def rule(self) -> HeaderRule:
        return HeaderRule(
            self.pattern, self.line, tuple(self.headers), frozenset(self.detach), self.matcher
        )


def _parse_pattern_line(pattern: str, line: int) -> _Block:
    if _EXTERNAL.match(pattern):
        raise _Malformed("host-specific patterns (https://host/path) are not supported")
    if not pattern.startswith("/"):
        raise _Malformed(f"the path pattern {_short(pattern)!r} must start with /")
    if any(char.isspace() for char in pattern):
        raise _Malformed("the path pattern line must hold only the pattern (headers go below)")
    return _Block(pattern, line, _Wildcard.compile(_strip_trailing_slash(pattern)))


def _header_name(name: str) -> str:
    if not _TOKEN.fullmatch(name):
        raise _Malformed(f"invalid header name {_short(name)!r}")
    if name.lower() in _SERVER_OWNED:
        raise _Malformed(f"{name} is managed by the server")
    return name


def _parse_header_line(text: str, block: _Block) -> None:
    if text.startswith("!"):
        block.detach.add(_header_name(text[1:].strip()).lower())
        return
    name, colon, value = text.partition(":")
    if not colon:
        raise _Malformed("expected 'Name: value' (or '! Name' to remove a header)")
    value = value.strip()
    if not _FIELD_VALUE.fullmatch(value):
        raise _Malformed("the header value has a control or non-ASCII character")
    block.headers.append((_header_name(name.strip()), value))


def parse_headers(
    text: str, source: str = HEADERS_FILE
) -> tuple[tuple[HeaderRule, ...], tuple[str, ...]]:
    """The blocks of a ``_headers`` file in order, and a warning per unusable line."""
    rules: list[HeaderRule] = []
    warnings: list[str] = []
    block: _Block | None = None
    in_skipped_block = False
    for number, line in _lines(text):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not line[0].isspace():  # a pattern line starts a block
            if block is not None:
                rules.append(block.rule())
            try:
                block = _parse_pattern_line(stripped, number)
            except _Malformed as error:
                block = None
                warnings.append(f"{source}:{number}: {error}; block skipped")
            in_skipped_block = block is None
        elif block is not None:
            try:
                _parse_header_line(stripped, block)
            except _Malformed as error:
                warnings.append(f"{source}:{number}: {error}; line skipped")
        elif not in_skipped_block:  # the pattern's warning already covers its block
            warnings.append(f"{source}:{number}: header line before any path pattern; line skipped")
    if block is not None:
        rules.append(block.rule())
    return tuple(rules), tuple(warnings)


def _combine(rules: Iterable[HeaderRule]) -> list[tuple[str, str]]:
    matching = list(rules)
    detached: set[str] = set()
    for rule in matching:
        detached |= rule.detach
    return combine_fields(
        (name, value)
        for rule in matching
        for name, value in rule.headers
        if name.lower() not in detached
    )


# --- The rule set and its files ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Parsed ``_redirects`` and ``_headers``; immutable, so one per file version."""

    redirects: tuple[RedirectRule, ...] = ()
    headers: tuple[HeaderRule, ...] = ()
    warnings: tuple[str, ...] = ()

    @classmethod
    def parse(cls, redirects: str = "", headers: str = "") -> RuleSet:
        redirect_rules, redirect_warnings = parse_redirects(redirects)
        header_rules, header_warnings = parse_headers(headers)
        return cls(redirect_rules, header_rules, redirect_warnings + header_warnings)

    @property
    def shadows_files(self) -> bool:
        """Can a ``_redirects`` rule apply to a URL that names an existing file? Only a
        forced one can (``301!``); whether it matches may depend on the query."""
        return any(rule.force for rule in self.redirects)

    def matching_rules(self, path: str, query: str | None = None) -> Iterator[RuleMatch]:
        """Every ``_redirects`` rule that matches, in file order.

        ``path`` is the raw (percent-encoded) URL path, ``query`` the raw query without
        ``?``. Anything that is not a path starting with ``/`` matches nothing.
        """
        if not self.redirects:
            return
        request = _Request.parse(path, query)
        if request is None:
            return
        for rule in self.redirects:
            bindings = rule.bind(request)
            if bindings is not None:
                match = rule.apply(request, bindings)
                if match is not None:
                    yield match

    def match_redirect(
        self,
        path: str,
        query: str | None = None,
        *,
        file_exists: Callable[[], bool] | None = None,
    ) -> RuleMatch | None:
        """The rule that applies to this request, or None.

        Without ``file_exists`` this is the first matching rule. With it, a non-forced
        first match applies only when ``file_exists()`` (called at most once) is false;
        when a file exists only a forced rule applies: the first forced one that matches.
        """
        file_found: bool | None = None
        for match in self.matching_rules(path, query):
            if match.force or file_exists is None:
                return match
            if file_found is None:
                file_found = file_exists()
            if not file_found:
                return match
        return None

    def headers_for(self, path: str) -> list[tuple[str, str]]:
        """Headers the ``_headers`` blocks matching ``path`` (raw URL path) add."""
        if not self.headers or not path.startswith("/"):
            return []
        canonical = _canonical(path)
        return _combine(rule for rule in self.headers if rule.matches(canonical))


_Version = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Parsed:
    version: _Version | None  # None: no file
    text: str
    warnings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Loaded:
    redirects: _Parsed
    headers: _Parsed
    rules: RuleSet


_NO_FILE = _Parsed(None, "", ())


def _version(st: os.stat_result) -> _Version:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, stat.S_IFMT(st.st_mode))


def _stat_version(path: str) -> _Version | None:
    try:
        return _version(os.stat(path))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        return (-1, error.errno or 0)


def _read(path: str, name: str) -> _Parsed:
    """The file's text and version; problems become warnings, never exceptions."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)  # non-blocking: a FIFO named _redirects must not hang us
    except (FileNotFoundError, NotADirectoryError):
        return _NO_FILE
    except OSError as error:
        return _Parsed(_stat_version(path), "", (f"{name}: cannot open: {error.strerror}",))
    try:
        st = os.fstat(fd)
        version = _version(st)
        if not stat.S_ISREG(st.st_mode):
            return _Parsed(version, "", (f"{name}: not a regular file; ignored",))
        if st.st_size > MAX_FILE_BYTES:
            return _Parsed(version, "", (f"{name}: larger than {MAX_FILE_BYTES} bytes; ignored",))
        with os.fdopen(fd, "rb", closefd=False) as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        return _Parsed(_stat_version(path), "", (f"{name}: cannot read: {error.strerror}",))
    finally:
        os.close(fd)
    try:
        return _Parsed(version, data.decode("utf-8"), ())
    except UnicodeDecodeError as error:
        warning = f"{name}: not UTF-8 (byte {error.start}); undecodable bytes replaced"
        return _Parsed(version, data.decode("utf-8", "replace"), (warning,))


class RulesFile:
    """The rules of a site root, re-read when ``_redirects`` or ``_headers`` changes.

    :meth:`current` costs one ``os.stat`` of the root, plus one per file present; it
    returns the same :class:`RuleSet`
    object until a file's (device, inode, mtime_ns, size, type) changes, so a caller can
    print ``warnings`` once per version by comparing identities. Safe to call from
    several threads: the state is replaced in one assignment, and a race at worst
    parses a file twice.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = os.fspath(root)
        self._redirects_path = os.path.join(self._root, REDIRECTS_FILE)
        self._headers_path = os.path.join(self._root, HEADERS_FILE)
        self._loaded = _Loaded(_NO_FILE, _NO_FILE, RuleSet())
        self._root_version: tuple[int, int] | None = None

    def current(self) -> RuleSet:
        return self.current_with_root()[0]

    def current_with_root(self) -> tuple[RuleSet, tuple[int, int] | None]:
        """:meth:`current`, and the root directory's (mtime_ns, ctime_ns) it was
        checked against (None when the root could not be read)."""
        loaded = self._loaded
        # Most sites have neither file. A missing file stays missing while the root
        # directory is unchanged (creating or renaming an entry changes its mtime), so
        # one successful stat of the root replaces two failing ones per request.
        try:
            root_st = os.stat(self._root)
            root_version: tuple[int, int] | None = (root_st.st_mtime_ns, root_st.st_ctime_ns)
        except OSError:
            root_version = None
        unchanged_root = root_version is not None and root_version == self._root_version
        self._root_version = root_version
        if unchanged_root and loaded.redirects is _NO_FILE and loaded.headers is _NO_FILE:
            return loaded.rules, root_version
        redirects_version = (
            None
            if unchanged_root and loaded.redirects is _NO_FILE
            else _stat_version(self._redirects_path)
        )
        headers_version = (
            None
            if unchanged_root and loaded.headers is _NO_FILE
            else _stat_version(self._headers_path)
        )
        if (
            redirects_version == loaded.redirects.version
            and headers_version == loaded.headers.version
        ):
            return loaded.rules, root_version
        redirects = loaded.redirects
        if redirects_version != redirects.version:
            redirects = _read(self._redirects_path, REDIRECTS_FILE)
        headers = loaded.headers
        if headers_version != headers.version:
            headers = _read(self._headers_path, HEADERS_FILE)
        redirect_rules, redirect_warnings = parse_redirects(redirects.text)
        header_rules, header_warnings = parse_headers(headers.text)
        warnings = redirects.warnings + redirect_warnings + headers.warnings + header_warnings
        rules = RuleSet(redirect_rules, header_rules, warnings)
        self._loaded = _Loaded(redirects, headers, rules)
        return rules, root_version
