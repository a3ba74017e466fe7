"""What a file looks like on the wire: media types, validators, conditionals and ranges.

Pure functions over plain values (standard library only, no I/O), so every rule of
RFC 9110 that decides a status code can be tested without a socket or a file:

* media types from our own extension table (:func:`content_type`, :func:`is_compressible`);
* validators (:func:`strong_etag`, :func:`http_date`, :func:`parse_http_date`);
* conditional requests, RFC 9110 §13 (:func:`evaluate_preconditions`);
* range requests, RFC 9110 §14 (:func:`evaluate_range`).

Request headers arrive as a ``Mapping[str, str]`` with lowercase names and repeated
fields already combined with ", ". Nothing here raises on what a client sends.

Why one module of this size: these are the pure RFC 9110 functions about one
representation, each small, tested together as a table in test_representation.py.
"""

from __future__ import annotations

import datetime
import enum
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "UNSATISFIABLE",
    "ByteRange",
    "Precondition",
    "Unsatisfiable",
    "content_type",
    "evaluate_preconditions",
    "evaluate_range",
    "http_date",
    "is_compressible",
    "parse_http_date",
    "strong_etag",
]

# --------------------------------------------------------------------------- media types

OCTET_STREAM = "application/octet-stream"

# Our own table, not `mimetypes`: that module reads the host's /etc/mime.types, so the
# same file would be served differently on two machines (and old tables send .js as
# application/javascript, .wasm as nothing at all, which breaks WebAssembly streaming).
_MEDIA_TYPES: dict[str, str] = {
    # documents and text
    "html": "text/html",
    "htm": "text/html",
    "xhtml": "application/xhtml+xml",
    "css": "text/css",
    # RFC 9239 §6: text/javascript is the one JavaScript media type, modules included.
    "js": "text/javascript",
    "mjs": "text/javascript",
    "cjs": "text/javascript",
    "json": "application/json",
    "map": "application/json",  # source maps are JSON (ECMA-426)
    "jsonld": "application/ld+json",
    "geojson": "application/geo+json",
    "webmanifest": "application/manifest+json",
    "xml": "application/xml",  # RFC 7303 §4: application/xml over text/xml
    "xsl": "application/xml",
    "rss": "application/rss+xml",
    "atom": "application/atom+xml",
    "svg": "image/svg+xml",
    "txt": "text/plain",
    "log": "text/plain",
    "md": "text/markdown",  # RFC 7763
    "markdown": "text/markdown",
    "csv": "text/csv",  # RFC 4180
    "crt": "application/x-x509-ca-cert",  # (nginx mime.types too): phones install it
    "tsv": "text/tab-separated-values",
    "ics": "text/calendar",
    "vcf": "text/vcard",
    "vtt": "text/vtt",
    "srt": "application/x-subrip",
    "yaml": "application/yaml",  # RFC 9512
    "yml": "application/yaml",
    "toml": "application/toml",
    "wgsl": "text/wgsl",
    "wasm": "application/wasm",  # required by WebAssembly.instantiateStreaming
    # images
    "png": "image/png",
    "apng": "image/apng",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "avif": "image/avif",
    "jxl": "image/jxl",
    "heic": "image/heic",
    "heif": "image/heif",
    "ico": "image/vnd.microsoft.icon",
    "bmp": "image/bmp",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    # audio
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "m4a": "audio/mp4",
    "aac": "audio/aac",
    "oga": "audio/ogg",
    "ogg": "audio/ogg",  # RFC 5334 §10.3: .ogg is Vorbis audio by convention
    "opus": "audio/ogg",  # Opus files are Ogg-encapsulated (RFC 7845)
    "weba": "audio/webm",
    "mid": "audio/midi",
    "midi": "audio/midi",
    # video
    "mp4": "video/mp4",
    "m4v": "video/mp4",
    "webm": "video/webm",
    "ogv": "video/ogg",
    "mov": "video/quicktime",
    "mkv": "video/x-matroska",
    "avi": "video/x-msvideo",
    "mpeg": "video/mpeg",
    "mpg": "video/mpeg",
    "3gp": "video/3gpp",
    # fonts (RFC 8081)
    "woff": "font/woff",
    "woff2": "font/woff2",
    "ttf": "font/ttf",
    "otf": "font/otf",
    "ttc": "font/collection",
    "eot": "application/vnd.ms-fontobject",
    # 3D
    "gltf": "model/gltf+json",
    "glb": "model/gltf-binary",
    # documents and archives, served as themselves (no Content-Encoding: a .gz file is
    # the gzip file, not a compressed transfer of something else)
    "pdf": "application/pdf",
    "epub": "application/epub+zip",
    "zip": "application/zip",
    "jar": "application/java-archive",
    "gz": "application/gzip",  # RFC 6713
    "tgz": "application/gzip",
    "br": "application/x-brotli",
    "zst": "application/zstd",  # RFC 8878
    "tar": "application/x-tar",
    "7z": "application/x-7z-compressed",
    "rar": "application/vnd.rar",
    "xz": "application/x-xz",
    "bz2": "application/x-bzip2",
}

# application/* types that are text, so they carry a charset and compress well.
_TEXTUAL_APPLICATION_TYPES = frozenset(
    {
        "application/json",
        "application/xml",
        "application/javascript",  # legacy names a caller may still pass in
        "application/x-javascript",
        "application/ecmascript",
        "application/yaml",
        "application/toml",
        "application/x-subrip",
        "application/x-ndjson",
    }
)

# Binary types that still shrink a lot under gzip: WebAssembly and unwrapped sfnt fonts.
# (woff/woff2 are already compressed inside; so are every image but SVG, audio and video.)
_COMPRESSIBLE_BINARY_TYPES = frozenset(
    {
        "application/wasm",
        "font/ttf",
        "font/otf",
        "font/collection",
        "application/vnd.ms-fontobject",
    }
)


def _media_type(content_type_value: str) -> str:
    """The bare, lowercase ``type/subtype`` of a Content-Type value (RFC 9110 §8.3.1)."""
    return content_type_value.partition(";")[0].strip(" \t").lower()


def _is_textual(media_type: str) -> bool:
    """Is this bare media type text (for which a charset parameter means something)?"""
    top, _, subtype = media_type.partition("/")
    return (
        top == "text"
        # RFC 6839: structured syntax suffixes say the body is JSON or XML.
        or subtype.endswith(("+json", "+xml"))
        or media_type in _TEXTUAL_APPLICATION_TYPES
    )


# Full header values, computed once so content_type() is one dict lookup.
_CONTENT_TYPES: dict[str, str] = {
    ext: f"{media}; charset=utf-8" if _is_textual(media) else media
    for ext, media in _MEDIA_TYPES.items()
}


def is_asset_name(name: str) -> bool:
    """Does ``name`` end in the extension of a known type other than an HTML page
    (``app.js``, ``logo.svg``, ``data.json``; not ``john.doe``, ``v1.2`` or ``a.html``)?
    The SPA fallback leaves a missing asset its 404 and gives any other path the app."""
    ctype = content_type(name)
    return ctype != OCTET_STREAM and not ctype.startswith("text/html")


def content_type(name: str) -> str:
    """The Content-Type header value for a file ``name`` (a bare name or a path).

    Looks up the lowercased extension after the last dot of the final path segment in
    our own table; text types get ``; charset=utf-8`` (a static site is UTF-8 text, and
    without it browsers guess from the locale). A dotfile name like ``.htaccess`` has no
    extension, the same as :attr:`pathlib.PurePath.suffix`. Unknown or no extension gives
    ``application/octet-stream`` (RFC 9110 §8.3), which browsers will not sniff into HTML.
    """
    segment = name[max(name.rfind("/"), name.rfind("\\")) + 1 :]
    dot = segment.rfind(".")
    if dot <= 0:
        return OCTET_STREAM
    return _CONTENT_TYPES.get(segment[dot + 1 :].lower(), OCTET_STREAM)


def is_compressible(content_type: str) -> bool:
    """Is a body of this Content-Type worth gzipping on the fly?

    True for text (text/*, JavaScript, JSON and ``+json``, XML and ``+xml`` such as SVG,
    RSS and Atom), WebAssembly and uncompressed fonts (ttf, otf, eot). False for images
    other than SVG, audio, video, woff/woff2, archives and anything unknown: their bytes
    are already compressed, so gzip costs CPU and saves nothing.
    """
    media = _media_type(content_type)
    return _is_textual(media) or media in _COMPRESSIBLE_BINARY_TYPES


# --------------------------------------------------------------------------- validators


# Below this, a compressed body saves too little to be worth a cache entry and the
# CPU (and gzip's 18-byte wrapper can make a tiny body larger).
MIN_COMPRESS_SIZE = 256


def should_compress(content_type: str, size: int) -> bool:
    """Is a body of this Content-Type and size worth compressing on the fly?"""
    return size >= MIN_COMPRESS_SIZE and is_compressible(content_type)


def strong_etag(size: int, mtime_ns: int, ino: int, ctime_ns: int = 0) -> str:
    """A strong entity-tag (RFC 9110 §8.8.3) for a file's stat result.

    ``"<ino>-<mtime_ns>-<size>"`` in hex: it changes whenever any of the three does
    (mtime in nanoseconds, so two saves within one second still differ; the inode, so
    an atomic save by rename that keeps the size and mtime still differs). Strong is
    honest here because we serve the file's bytes unchanged: a compressed variant must
    get its own tag (RFC 9110 §8.8.3.3), which is the caller's job.
    """
    # Hex digits and "-" are all etagc (%x21 / %x23-7E); only mtime can be negative, and
    # since it sits between the other two fields the string still decodes uniquely.
    # ``ctime_ns`` (when given) catches a same-size rewrite whose mtime was restored
    # (cp -p, rsync -t, touch -r): the kernel always moves ctime.
    tag = f"{ino:x}-{mtime_ns:x}-{size:x}"
    if ctime_ns:
        tag += f"-{ctime_ns:x}"
    return f'"{tag}"'


_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # date.weekday() order
_DAY_NAMES_LONG = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBERS = {name: number for number, name in enumerate(_MONTH_NAMES, start=1)}

_SECONDS_PER_DAY = 86_400
_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
# IMF-fixdate has a 4DIGIT year: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
_EARLIEST = (datetime.date(1, 1, 1).toordinal() - _EPOCH_ORDINAL) * _SECONDS_PER_DAY
_LATEST = (datetime.date(9999, 12, 31).toordinal() - _EPOCH_ORDINAL + 1) * _SECONDS_PER_DAY - 1


def http_date(timestamp: float) -> str:
    """Format POSIX seconds as an IMF-fixdate (RFC 9110 §5.6.7).

    E.g. ``"Sun, 06 Nov 1994 08:49:37 GMT"``. Fractions of a second are dropped (floor),
    as HTTP dates have one-second resolution. Day and month names come from our own
    tables, never ``strftime``, whose names follow the process locale. A timestamp
    outside years 1..9999 (a file touched with a silly mtime) is clamped to the nearest
    representable date rather than producing a 5-digit year; NaN raises ValueError.
    """
    if math.isnan(timestamp):
        raise ValueError("http_date() needs a timestamp, got NaN")
    # Clamp before floor(): floor(inf) raises.
    seconds = math.floor(min(max(timestamp, _EARLIEST), _LATEST))
    # Computed from the proleptic Gregorian calendar rather than time.gmtime(), which
    # rejects negative or large values on some platforms.
    days, second_of_day = divmod(seconds, _SECONDS_PER_DAY)
    date = datetime.date.fromordinal(_EPOCH_ORDINAL + days)
    hour, rest = divmod(second_of_day, 3600)
    minute, second = divmod(rest, 60)
    return (
        f"{_DAY_NAMES[date.weekday()]}, {date.day:02d} {_MONTH_NAMES[date.month - 1]} "
        f"{date.year:04d} {hour:02d}:{minute:02d}:{second:02d} GMT"
    )


# RFC 9110 §5.6.7 grammar. [0-9], never \d: \d also matches non-ASCII digits.
_DAY_NAME = "|".join(_DAY_NAMES)
_DAY_NAME_L = "|".join(_DAY_NAMES_LONG)
_MONTH = "|".join(_MONTH_NAMES)
_TIME_OF_DAY = "([0-9]{2}):([0-9]{2}):([0-9]{2})"
# IMF-fixdate = day-name "," SP date1 SP time-of-day SP GMT; date1 = day SP month SP year
_IMF_FIXDATE = re.compile(
    rf"(?:{_DAY_NAME}), ([0-9]{{2}}) ({_MONTH}) ([0-9]{{4}}) {_TIME_OF_DAY} GMT"
)
# rfc850-date = day-name-l "," SP date2 SP time-of-day SP GMT; date2 = day "-" month "-" 2DIGIT
_RFC850_DATE = re.compile(
    rf"(?:{_DAY_NAME_L}), ([0-9]{{2}})-({_MONTH})-([0-9]{{2}}) {_TIME_OF_DAY} GMT"
)
# asctime-date = day-name SP date3 SP time-of-day SP year; date3 = month SP (2DIGIT / (SP DIGIT))
_ASCTIME_DATE = re.compile(
    rf"(?:{_DAY_NAME}) ({_MONTH}) ([0-9]{{2}}| [0-9]) {_TIME_OF_DAY} ([0-9]{{4}})"
)


def parse_http_date(value: str, *, now: float | None = None) -> int | None:
    """Parse an HTTP-date (RFC 9110 §5.6.7) into POSIX seconds, or None if invalid.

    Accepts IMF-fixdate and the two obsolete forms recipients MUST accept, rfc850-date
    and asctime-date. Follows the grammar exactly (names are case-sensitive, GMT is
    required) but does not check that the day name agrees with the date, as it carries
    no information. Impossible dates (Feb 30, hour 24) are invalid. Second 60 (a leap
    second) is allowed by the grammar and rolls into the next minute, as POSIX time has
    no leap seconds. An rfc850-date year that would be more than 50 years after ``now``
    (default: the current time) means the century before (RFC 9110 §5.6.7). Never raises.
    """
    value = value.strip(" \t")
    if match := _IMF_FIXDATE.fullmatch(value):
        day, month, year, hour, minute, second = match.groups()
        full_year = int(year)
    elif match := _ASCTIME_DATE.fullmatch(value):
        month, day, hour, minute, second, year = match.groups()
        full_year = int(year)
    elif match := _RFC850_DATE.fullmatch(value):
        day, month, year, hour, minute, second = match.groups()
        full_year = _rfc850_year(int(year), time.time() if now is None else now)
    else:
        return None
    return _posix_seconds(
        full_year,
        _MONTH_NUMBERS[month],
        int(day),
        hour=int(hour),
        minute=int(minute),
        second=int(second),
    )


def _rfc850_year(two_digits: int, now: float) -> int:
    """The full year of an rfc850-date's 2-digit year, as seen at ``now``.

    RFC 9110 §5.6.7: a year that appears more than 50 years in the future is the most
    recent past year with those digits. The rule reads as a sliding window, so near the
    end of a century a small year is the coming one ("00" in 2099 is 2100).
    """
    clamped = min(max(now, _EARLIEST), _LATEST)
    this_year = datetime.date.fromordinal(
        _EPOCH_ORDINAL + math.floor(clamped) // _SECONDS_PER_DAY
    ).year
    year = this_year - this_year % 100 + two_digits
    if year > this_year + 50:
        return year - 100
    return year + 100 if year < this_year - 50 else year


def _posix_seconds(
    year: int, month: int, day: int, *, hour: int, minute: int, second: int
) -> int | None:
    if hour > 23 or minute > 59 or second > 60:
        return None
    try:
        date = datetime.date(year, month, day)
    except ValueError:  # day 31 of a 30-day month, Feb 29 of a common year, year 0000
        return None
    days = date.toordinal() - _EPOCH_ORDINAL
    return days * _SECONDS_PER_DAY + hour * 3600 + minute * 60 + second


# --------------------------------------------------------------------------- entity-tags


class _EntityTag(NamedTuple):
    weak: bool
    opaque: str  # the characters between the quotes


# entity-tag = [ weak ] opaque-tag; weak = %s"W/"; opaque-tag = DQUOTE *etagc DQUOTE;
# etagc = %x21 / %x23-7E / obs-text (RFC 9110 §8.8.3); obs-text = %x80-FF.
_ENTITY_TAG = re.compile('(W/)?"([\x21\x23-\x7e\x80-\xff]*)"')


def _entity_tag_at(text: str, start: int) -> tuple[_EntityTag, int] | None:
    """Parse ``entity-tag = [ weak ] opaque-tag`` at ``start``; return it and the end."""
    match = _ENTITY_TAG.match(text, start)
    if match is None:
        return None
    return _EntityTag(match.group(1) is not None, match.group(2)), match.end()


def _entity_tag(text: str) -> _EntityTag | None:
    """Exactly one entity-tag (surrounding whitespace allowed), or None."""
    text = text.strip(" \t")
    parsed = _entity_tag_at(text, 0)
    if parsed is None or parsed[1] != len(text):
        return None
    return parsed[0]


def _entity_tag_list(text: str) -> list[_EntityTag] | None:
    """Parse ``#entity-tag`` (RFC 9110 §5.6.1), or None if malformed.

    Tags are scanned rather than split on commas, because a comma is a legal character
    inside the quotes (``"a,b"`` is one tag). Empty list elements are skipped, as §5.6.1
    requires recipients to accept them.
    """
    tags: list[_EntityTag] = []
    position, length = 0, len(text)
    while True:
        while position < length and text[position] in " \t,":
            position += 1
        if position == length:
            return tags
        parsed = _entity_tag_at(text, position)
        if parsed is None:
            return None
        tag, position = parsed
        tags.append(tag)
        while position < length and text[position] in " \t":
            position += 1
        if position < length and text[position] != ",":
            return None  # two tags must be separated by a comma


def _strong_match(a: _EntityTag, b: _EntityTag) -> bool:
    # RFC 9110 §8.8.3.2: both strong and character-for-character equal.
    return not a.weak and not b.weak and a.opaque == b.opaque


def _weak_match(a: _EntityTag, b: _EntityTag) -> bool:
    # RFC 9110 §8.8.3.2: opaque-tags equal, whatever the W/ prefixes.
    return a.opaque == b.opaque


def _list_matches(field_value: str, etag: str, *, weak: bool) -> bool:
    """Does an If-Match / If-None-Match value (``"*"`` or a tag list) match ``etag``?"""
    if field_value.strip(" \t") == "*":
        return True  # "*" matches any current representation, and ours exists
    tags = _entity_tag_list(field_value)
    current = _entity_tag(etag)
    if tags is None or current is None:
        return False  # a malformed list matches nothing
    compare = _weak_match if weak else _strong_match
    return any(compare(tag, current) for tag in tags)


# --------------------------------------------------------------------------- preconditions


class Precondition(enum.IntEnum):
    """Outcome of :func:`evaluate_preconditions`; the value is the status to answer with."""

    PROCEED = 0
    NOT_MODIFIED = 304
    FAILED = 412


_SAFE_READS = frozenset({"GET", "HEAD"})
# RFC 9110 §13.2.1: conditionals MUST be ignored for methods that do not select or
# modify a representation.
_UNCONDITIONAL_METHODS = frozenset({"CONNECT", "OPTIONS", "TRACE"})


def evaluate_preconditions(
    method: str, headers: Mapping[str, str], etag: str, last_modified: int
) -> Precondition:
    """Evaluate the conditional request headers in RFC 9110 §13.2.2 order.

    ``etag`` is the representation's current entity-tag, ``last_modified`` its
    Last-Modified time in whole POSIX seconds. The caller applies this only when the
    unconditional response would be 2xx (§13.2.1), i.e. once the file is found.

    1. If-Match present and false (strong comparison, "*" true) -> FAILED;
    2. else If-Unmodified-Since a valid date earlier than last_modified -> FAILED;
    3. If-None-Match present and matching (weak comparison, "*" true) ->
       NOT_MODIFIED for GET/HEAD, FAILED otherwise;
    4. else for GET/HEAD, If-Modified-Since a valid date not earlier than
       last_modified -> NOT_MODIFIED.

    Invalid dates are ignored (§13.1.3, §13.1.4) and a malformed tag list matches
    nothing. Method names are case-sensitive (§9.1). Range and If-Range (step 5) are
    :func:`evaluate_range`'s job.
    """
    if method in _UNCONDITIONAL_METHODS:
        return Precondition.PROCEED
    if_match = headers.get("if-match")
    if if_match is not None:
        if not _list_matches(if_match, etag, weak=False):  # §13.1.1
            return Precondition.FAILED
    else:
        since = _date_header(headers, "if-unmodified-since")  # §13.1.4
        if since is not None and last_modified > since:
            return Precondition.FAILED
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if _list_matches(if_none_match, etag, weak=True):  # §13.1.2
            return Precondition.NOT_MODIFIED if method in _SAFE_READS else Precondition.FAILED
    elif method in _SAFE_READS:
        since = _date_header(headers, "if-modified-since")  # §13.1.3
        if since is not None and last_modified <= since:
            return Precondition.NOT_MODIFIED
    return Precondition.PROCEED


def _date_header(headers: Mapping[str, str], name: str) -> int | None:
    # A list of dates ("d1, d2", from repeated fields) does not parse, so it is ignored
    # as §13.1.3 and §13.1.4 require.
    value = headers.get(name)
    return None if value is None else parse_http_date(value)


# --------------------------------------------------------------------------- ranges


@dataclass(frozen=True, slots=True)
class ByteRange:
    """One satisfiable byte range, both ends inclusive as in RFC 9110 §14.1.2."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"invalid byte range {self.start}-{self.end}")

    @property
    def length(self) -> int:
        """How many bytes the range covers: the 206 response's Content-Length."""
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        """The Content-Range value of a 206 (RFC 9110 §14.4), e.g. ``bytes 0-99/1234``."""
        return f"bytes {self.start}-{self.end}/{size}"


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """No range in the request overlaps the representation: answer 416 (RFC 9110 §15.5.17)."""

    def content_range(self, size: int) -> str:
        """The Content-Range value a 416 carries (RFC 9110 §14.4): ``bytes */size``."""
        return f"bytes */{size}"


UNSATISFIABLE = Unsatisfiable()

# More range specs than this and we ignore the header (RFC 9110 §14.2 allows ignoring
# Range at will; §17.15 warns of many small or overlapping ranges as a DoS vector).
MAX_RANGE_SPECS = 100

# A position past any possible file size (off_t is signed 64-bit). Digit strings longer
# than this saturate here instead of going through int(), which is quadratic in length
# and refuses more than 4300 digits (sys.int_info.default_max_str_digits).
_BEYOND_ANY_SIZE = 1 << 63
_MAX_POSITION_DIGITS = len(str(_BEYOND_ANY_SIZE))


def _is_digits(text: str) -> bool:
    # 1*DIGIT, ASCII only: str.isdigit() alone accepts "²" and "٣".
    return text.isascii() and text.isdigit()


def _position(digits: str) -> int:
    """Value of a ``1*DIGIT`` string, saturating at a bound no file size reaches."""
    significant = digits.lstrip("0")
    if len(significant) > _MAX_POSITION_DIGITS:
        return _BEYOND_ANY_SIZE
    return min(int(significant or "0"), _BEYOND_ANY_SIZE)


def _digits_greater(a: str, b: str) -> bool:
    """Exact ``int(a) > int(b)`` for digit strings of any length, without int()."""
    a, b = a.lstrip("0"), b.lstrip("0")
    return (len(a), a) > (len(b), b)


class _InvalidRange(Exception):
    """The Range field value does not follow RFC 9110 §14.1 grammar."""


def _satisfiable_range(spec: str, size: int) -> ByteRange | None:
    """Parse one non-empty range-spec; None when valid but unsatisfiable (§14.1.1).

    Raises _InvalidRange when the spec is not int-range or suffix-range, or when
    last-pos < first-pos.
    """
    first, dash, last = spec.partition("-")
    if not dash:
        raise _InvalidRange(spec)
    if not first:  # suffix-range = "-" suffix-length
        if not _is_digits(last):
            raise _InvalidRange(spec)
        suffix_length = _position(last)
        if suffix_length == 0 or size == 0:
            return None
        # A suffix longer than the representation means all of it (§14.1.2).
        return ByteRange(max(0, size - suffix_length), size - 1)
    # int-range = first-pos "-" [ last-pos ]
    if not _is_digits(first) or (last and not _is_digits(last)):
        raise _InvalidRange(spec)
    if last and _digits_greater(first, last):
        raise _InvalidRange(spec)  # §14.1.1: last-pos < first-pos makes it invalid
    start = _position(first)
    if start >= size:
        return None
    # A last-pos at or past the end means "to the end" (§14.1.2).
    end = size - 1 if not last else min(_position(last), size - 1)
    return ByteRange(start, end)


def _coalesce(ranges: list[ByteRange]) -> list[ByteRange]:
    """Sort and merge overlapping or adjacent ranges (what §14.2 permits a server to do)."""
    merged: list[ByteRange] = []
    for byte_range in sorted(ranges, key=lambda r: (r.start, r.end)):
        if merged and byte_range.start <= merged[-1].end + 1:
            previous = merged.pop()
            merged.append(ByteRange(previous.start, max(previous.end, byte_range.end)))
        else:
            merged.append(byte_range)
    return merged


def _if_range_allows(if_range: str, etag: str, last_modified: int) -> bool:
    """Is the If-Range condition true (RFC 9110 §13.1.5)?"""
    value = if_range.strip(" \t")
    # §13.1.5: an entity-tag is told from an HTTP-date by its leading DQUOTE (or W/).
    if value.startswith(('"', "W/")):
        tag, current = _entity_tag(value), _entity_tag(etag)
        # Strong comparison, so a weak tag (which clients MUST NOT send) never matches.
        return tag is not None and current is not None and _strong_match(tag, current)
    # A date must equal Last-Modified exactly; anything else is false.
    date = parse_http_date(value)
    return date is not None and date == last_modified


def evaluate_range(
    method: str, headers: Mapping[str, str], size: int, etag: str, last_modified: int
) -> ByteRange | Unsatisfiable | None:
    """Decide how to answer a Range request (RFC 9110 §14) for a ``size``-byte file.

    Returns:

    * ``None``: ignore Range and send the whole representation as a 200. That is the
      answer when the method is not GET (§14.2: range handling is defined only for GET),
      there is no Range field, its unit is not ``bytes`` (compared case-insensitively,
      §14.1), it is syntactically invalid or holds an invalid range-spec (last-pos <
      first-pos), it holds more than :data:`MAX_RANGE_SPECS` specs, or If-Range is
      present and false (§13.1.5). It is also the answer when the satisfiable ranges
      do not coalesce into one: rather than a multipart/byteranges body we send the
      full 200, which §14.2 permits (a server MAY ignore Range), so ``bytes=0-,0-,...``
      can never amplify a response. And for a non-zero suffix-range on an empty file:
      §14.1.1 calls that satisfiable, but no 206 can express zero bytes, so the empty
      200 is the only honest answer.
    * :data:`UNSATISFIABLE`: the range-set is valid but no spec is satisfiable, i.e.
      every first-pos is at or past the end and every suffix-length is 0; answer 416
      with ``Content-Range: bytes */size`` (§15.5.17).
    * a :class:`ByteRange`: the satisfiable specs (last-pos clamped to ``size - 1``,
      suffixes longer than the file meaning all of it) merge into this one range;
      answer 206 with its Content-Range.

    Never raises on any field value.
    """
    if method != "GET":
        return None
    field = headers.get("range")
    if field is None:
        return None
    if_range = headers.get("if-range")
    if if_range is not None and not _if_range_allows(if_range, etag, last_modified):
        return None
    # ranges-specifier = range-unit "=" range-set (§14.1.1): no whitespace around "=",
    # since a token cannot end in one and a list cannot start with one (§5.6.1).
    unit, equals, range_set = field.strip(" \t").partition("=")
    if not equals or unit.lower() != "bytes" or range_set.startswith((" ", "\t")):
        return None
    satisfiable: list[ByteRange] = []
    spec_count = 0
    empty_suffix_of_empty_file = False
    for element in range_set.split(","):  # a range-spec never contains a comma
        spec = element.strip(" \t")  # range-set = 1#range-spec, so OWS around commas
        if not spec:
            continue  # empty list elements are allowed (§5.6.1)
        spec_count += 1
        if spec_count > MAX_RANGE_SPECS:
            return None
        try:
            byte_range = _satisfiable_range(spec, size)
        except _InvalidRange:
            return None
        if byte_range is not None:
            satisfiable.append(byte_range)
        elif size == 0 and spec.startswith("-") and _position(spec[1:]) > 0:
            empty_suffix_of_empty_file = True
    if spec_count == 0:
        return None  # 1#range-spec needs at least one
    if empty_suffix_of_empty_file:
        return None
    if not satisfiable:
        return UNSATISFIABLE
    merged = _coalesce(satisfiable)
    return merged[0] if len(merged) == 1 else None
