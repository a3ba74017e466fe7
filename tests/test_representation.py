"""Tests for sitepeek.representation: media types, validators, RFC 9110 §13 and §14."""

from __future__ import annotations

import calendar
import email.utils

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sitepeek.representation import (
    MAX_RANGE_SPECS,
    UNSATISFIABLE,
    ByteRange,
    Precondition,
    Unsatisfiable,
    content_type,
    evaluate_preconditions,
    evaluate_range,
    http_date,
    is_compressible,
    parse_http_date,
    strong_etag,
)

# RFC 9110 §5.6.7's example instant, in each of the three formats.
LM = 784_111_777
LM_IMF = "Sun, 06 Nov 1994 08:49:37 GMT"
LM_RFC850 = "Sunday, 06-Nov-94 08:49:37 GMT"
LM_ASCTIME = "Sun Nov  6 08:49:37 1994"
EARLIER = http_date(LM - 1)
LATER = http_date(LM + 1)
ETAG = '"abc"'
OTHER = '"xyz"'
NOW_2025 = calendar.timegm((2025, 6, 1, 0, 0, 0))

FIRST_DATE = -62_135_596_800  # 0001-01-01T00:00:00Z
LAST_DATE = 253_402_300_799  # 9999-12-31T23:59:59Z

# --------------------------------------------------------------------------- content_type

UTF8 = "; charset=utf-8"

CONTENT_TYPES = {
    "index.html": "text/html" + UTF8,
    "index.htm": "text/html" + UTF8,
    "style.css": "text/css" + UTF8,
    "app.js": "text/javascript" + UTF8,
    "app.mjs": "text/javascript" + UTF8,
    "app.cjs": "text/javascript" + UTF8,
    "data.json": "application/json" + UTF8,
    "app.js.map": "application/json" + UTF8,
    "data.jsonld": "application/ld+json" + UTF8,
    "site.webmanifest": "application/manifest+json" + UTF8,
    "feed.xml": "application/xml" + UTF8,
    "logo.svg": "image/svg+xml" + UTF8,
    "robots.txt": "text/plain" + UTF8,
    "README.md": "text/markdown" + UTF8,
    "table.csv": "text/csv" + UTF8,
    "module.wasm": "application/wasm",
    "a.png": "image/png",
    "a.jpg": "image/jpeg",
    "a.jpeg": "image/jpeg",
    "a.gif": "image/gif",
    "a.webp": "image/webp",
    "a.avif": "image/avif",
    "favicon.ico": "image/vnd.microsoft.icon",
    "a.bmp": "image/bmp",
    "a.tif": "image/tiff",
    "a.tiff": "image/tiff",
    "a.apng": "image/apng",
    "a.jxl": "image/jxl",
    "v.mp4": "video/mp4",
    "v.webm": "video/webm",
    "a.ogg": "audio/ogg",
    "v.ogv": "video/ogg",
    "a.oga": "audio/ogg",
    "a.mp3": "audio/mpeg",
    "a.wav": "audio/wav",
    "a.flac": "audio/flac",
    "a.m4a": "audio/mp4",
    "a.aac": "audio/aac",
    "a.opus": "audio/ogg",
    "v.mov": "video/quicktime",
    "f.woff": "font/woff",
    "f.woff2": "font/woff2",
    "f.ttf": "font/ttf",
    "f.otf": "font/otf",
    "f.eot": "application/vnd.ms-fontobject",
    "doc.pdf": "application/pdf",
    "x.zip": "application/zip",
    "x.tar.gz": "application/gzip",
    "x.br": "application/x-brotli",
    "x.zst": "application/zstd",
    "x.tar": "application/x-tar",
    "x.7z": "application/x-7z-compressed",
    "x.rar": "application/vnd.rar",
    "x.xz": "application/x-xz",
    "x.bz2": "application/x-bzip2",
    "cal.ics": "text/calendar" + UTF8,
    "subs.vtt": "text/vtt" + UTF8,
    "subs.srt": "application/x-subrip" + UTF8,
    "conf.yaml": "application/yaml" + UTF8,
    "conf.yml": "application/yaml" + UTF8,
    "pyproject.toml": "application/toml" + UTF8,
    "book.epub": "application/epub+zip",
}


@pytest.mark.parametrize(("name", "expected"), CONTENT_TYPES.items())
def test_content_type_table(name: str, expected: str) -> None:
    assert content_type(name) == expected


@pytest.mark.parametrize(("name", "expected"), CONTENT_TYPES.items())
def test_content_type_ignores_extension_case(name: str, expected: str) -> None:
    assert content_type(name.upper()) == expected
    stem, _, extension = name.rpartition(".")
    assert content_type(f"{stem}.{extension.title()}") == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Makefile", "application/octet-stream"),  # no extension
        ("archive.unknownext", "application/octet-stream"),
        ("trailing.", "application/octet-stream"),
        (".htaccess", "application/octet-stream"),  # a dotfile name is not an extension
        ("", "application/octet-stream"),
        ("docs/v1.2/README", "application/octet-stream"),  # dots in a directory don't count
        ("docs.d/page", "application/octet-stream"),
        ("docs/v1.2/index.HTML", "text/html; charset=utf-8"),
        ("/srv/site/assets/app.min.js", "text/javascript; charset=utf-8"),
        (r"C:\site\app.css", "text/css; charset=utf-8"),
        (".well-known/security.txt", "text/plain; charset=utf-8"),
        ("..html", "text/html; charset=utf-8"),
        ("page.html~", "application/octet-stream"),
    ],
)
def test_content_type_edge_names(name: str, expected: str) -> None:
    assert content_type(name) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text/html; charset=utf-8", True),
        ("text/plain", True),
        ("TEXT/CSS; charset=UTF-8", True),
        ("text/javascript; charset=utf-8", True),
        ("application/javascript", True),
        ("application/json", True),
        ("application/manifest+json; charset=utf-8", True),
        ("application/ld+json", True),
        ("application/xml", True),
        ("image/svg+xml; charset=utf-8", True),
        ("application/rss+xml", True),
        ("application/atom+xml", True),
        ("application/wasm", True),
        ("application/yaml", True),
        ("font/ttf", True),
        ("font/otf", True),
        ("application/vnd.ms-fontobject", True),
        ("image/png", False),
        ("image/jpeg", False),
        ("image/webp", False),
        ("image/avif", False),
        ("image/vnd.microsoft.icon", False),
        ("audio/mpeg", False),
        ("video/mp4", False),
        ("font/woff", False),
        ("font/woff2", False),
        ("application/zip", False),
        ("application/gzip", False),
        ("application/zstd", False),
        ("application/x-brotli", False),
        ("application/epub+zip", False),
        ("application/pdf", False),
        ("application/octet-stream", False),
        ("", False),
        ("garbage", False),
    ],
)
def test_is_compressible(value: str, expected: bool) -> None:
    assert is_compressible(value) is expected


@pytest.mark.parametrize("name", CONTENT_TYPES)
def test_charset_means_compressible(name: str) -> None:
    # Everything we label as text is also worth compressing.
    value = content_type(name)
    if "charset" in value:
        assert is_compressible(value)


# --------------------------------------------------------------------------- validators


def test_strong_etag_shape() -> None:
    assert strong_etag(size=255, mtime_ns=16, ino=1) == '"1-10-ff"'


def test_strong_etag_changes_with_each_input() -> None:
    base = strong_etag(100, 1_700_000_000_000_000_000, 42)
    assert base.startswith('"') and base.endswith('"') and not base.startswith("W/")
    assert strong_etag(101, 1_700_000_000_000_000_000, 42) != base
    assert strong_etag(100, 1_700_000_000_000_000_001, 42) != base
    assert strong_etag(100, 1_700_000_000_000_000_000, 43) != base


@given(
    st.tuples(st.integers(0, 2**63), st.integers(-(2**63), 2**63), st.integers(0, 2**64)),
    st.tuples(st.integers(0, 2**63), st.integers(-(2**63), 2**63), st.integers(0, 2**64)),
)
def test_strong_etag_is_injective(a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    assert (strong_etag(*a) == strong_etag(*b)) == (a == b)


@given(st.integers(0, 2**63), st.integers(-(2**63), 2**63), st.integers(0, 2**64))
def test_strong_etag_matches_itself(size: int, mtime_ns: int, ino: int) -> None:
    etag = strong_etag(size, mtime_ns, ino)
    headers = {"if-none-match": etag, "if-match": etag}
    assert evaluate_preconditions("GET", headers, etag, LM) is Precondition.NOT_MODIFIED


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (LM, LM_IMF),
        (LM + 0.999, LM_IMF),  # whole seconds, floored
        (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
        (-1, "Wed, 31 Dec 1969 23:59:59 GMT"),
        (-0.5, "Wed, 31 Dec 1969 23:59:59 GMT"),
        (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
        (LAST_DATE, "Fri, 31 Dec 9999 23:59:59 GMT"),
        (FIRST_DATE, "Mon, 01 Jan 0001 00:00:00 GMT"),
        (1e300, "Fri, 31 Dec 9999 23:59:59 GMT"),  # clamped, never a 5-digit year
        (float("inf"), "Fri, 31 Dec 9999 23:59:59 GMT"),
        (-1e300, "Mon, 01 Jan 0001 00:00:00 GMT"),
    ],
)
def test_http_date(timestamp: float, expected: str) -> None:
    assert http_date(timestamp) == expected


def test_http_date_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        http_date(float("nan"))


@given(st.integers(0, LAST_DATE))
def test_http_date_agrees_with_email_utils(timestamp: int) -> None:
    assert http_date(timestamp) == email.utils.formatdate(timestamp, usegmt=True)


@given(st.floats(min_value=0, max_value=LAST_DATE))
@example(0.0)
@example(LM + 0.5)
@example(float(LAST_DATE))
def test_http_date_round_trip(timestamp: float) -> None:
    assert parse_http_date(http_date(timestamp)) == int(timestamp)


@given(st.integers(FIRST_DATE, LAST_DATE))
def test_http_date_round_trip_whole_range(timestamp: int) -> None:
    assert parse_http_date(http_date(timestamp)) == timestamp


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (LM_IMF, LM),
        (LM_RFC850, LM),
        (LM_ASCTIME, LM),
        ("Sun Nov 06 08:49:37 1994", LM),  # asctime with a 2-digit day
        (f"  {LM_IMF}\t", LM),  # surrounding OWS
        ("Mon, 06 Nov 1994 08:49:37 GMT", LM),  # wrong day name: ignored
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0),
        ("Wed, 31 Dec 1969 23:59:59 GMT", -1),
        ("Tue, 29 Feb 2000 00:00:00 GMT", 951_782_400),
        ("Sat, 31 Dec 2016 23:59:60 GMT", 1_483_228_800),  # leap second rolls over
        ("Fri, 31 Dec 9999 23:59:59 GMT", LAST_DATE),
        # invalid: None, never an exception
        ("", None),
        ("yesterday", None),
        ("0", None),
        ("784111777", None),
        ("Sun, 06 Nov 1994 08:49:37 UTC", None),
        ("Sun, 06 Nov 1994 08:49:37 +0000", None),
        ("Sun, 06 Nov 1994 08:49:37", None),
        ("sun, 06 nov 1994 08:49:37 gmt", None),  # names are case-sensitive (%s)
        ("Sun, 6 Nov 1994 08:49:37 GMT", None),  # day is 2DIGIT
        ("Sun, 06 Nov 94 08:49:37 GMT", None),
        ("Sun,  06 Nov 1994 08:49:37 GMT", None),
        ("Sun, 06 Nov 1994 8:49:37 GMT", None),
        ("Sun, 06 Foo 1994 08:49:37 GMT", None),
        ("Sun, 30 Feb 1994 08:49:37 GMT", None),
        ("Sun, 29 Feb 1900 08:49:37 GMT", None),
        ("Sun, 31 Apr 1994 08:49:37 GMT", None),
        ("Sun, 00 Nov 1994 08:49:37 GMT", None),
        ("Sun, 06 Nov 0000 08:49:37 GMT", None),
        ("Sun, 06 Nov 1994 24:00:00 GMT", None),
        ("Sun, 06 Nov 1994 08:60:00 GMT", None),
        ("Sun, 06 Nov 1994 08:49:61 GMT", None),
        ("Sun, 06 Nov 1994 \u06608:49:37 GMT", None),  # non-ASCII digit
        (f"{LM_IMF}, {LM_IMF}", None),  # a list of dates
        (f"{LM_IMF}x", None),
        ("Sun, 06-Nov-94 08:49:37 GMT", None),  # rfc850 needs the long day name
        ("Sunday, 06 Nov 1994 08:49:37 GMT", None),
        ("Sun Nov 6 08:49:37 1994", None),  # asctime pads a 1-digit day with a space
        ("Sun Nov  6 08:49:37 1994 GMT", None),
    ],
)
def test_parse_http_date(value: str, expected: int | None) -> None:
    assert parse_http_date(value, now=NOW_2025) == expected


@pytest.mark.parametrize(
    ("value", "now_year", "expected_year"),
    [
        # RFC 9110 §5.6.7: a 2-digit year more than 50 years ahead is the last century's.
        ("Sunday, 06-Nov-94 08:49:37 GMT", 2025, 1994),
        ("Monday, 06-Nov-23 08:49:37 GMT", 2025, 2023),
        ("Tuesday, 06-Nov-75 08:49:37 GMT", 2025, 2075),
        ("Monday, 06-Nov-76 08:49:37 GMT", 2025, 1976),
        ("Sunday, 06-Nov-94 08:49:37 GMT", 2090, 2094),
        ("Sunday, 06-Nov-00 08:49:37 GMT", 2099, 2100),  # a sliding window
        ("Saturday, 06-Nov-49 08:49:37 GMT", 2099, 2049),  # 50 years back: not moved
        ("Friday, 06-Nov-48 08:49:37 GMT", 2099, 2148),
    ],
)
def test_parse_rfc850_two_digit_year(value: str, now_year: int, expected_year: int) -> None:
    now = calendar.timegm((now_year, 6, 1, 0, 0, 0))
    parsed = parse_http_date(value, now=now)
    assert parsed == calendar.timegm((expected_year, 11, 6, 8, 49, 37))


def test_parse_rfc850_uses_current_time_by_default() -> None:
    assert parse_http_date(LM_RFC850) == LM


@given(st.text())
@example("Sun, 06 Nov 1994 08:49:37 GMT\x00")
def test_parse_http_date_never_raises(value: str) -> None:
    result = parse_http_date(value)
    assert result is None or FIRST_DATE <= result <= LAST_DATE + 1


# --------------------------------------------------------------------------- preconditions

PROCEED, NOT_MODIFIED, FAILED = Precondition.PROCEED, Precondition.NOT_MODIFIED, Precondition.FAILED

PRECONDITION_CASES: list[tuple[str, str, dict[str, str], Precondition]] = [
    ("no conditionals", "GET", {}, PROCEED),
    # 1. If-Match: strong comparison, "*", lists
    ("if-match equal", "GET", {"if-match": ETAG}, PROCEED),
    ("if-match other", "GET", {"if-match": OTHER}, FAILED),
    ("if-match star", "GET", {"if-match": "*"}, PROCEED),
    ("if-match star ows", "GET", {"if-match": " * "}, PROCEED),
    ("if-match in list", "GET", {"if-match": f"{OTHER}, {ETAG}"}, PROCEED),
    ("if-match list no ows", "GET", {"if-match": f"{OTHER},{ETAG}"}, PROCEED),
    ("if-match empty elements", "GET", {"if-match": f" , ,{ETAG} ,"}, PROCEED),
    ("if-match weak is strong-compared", "GET", {"if-match": f"W/{ETAG}"}, FAILED),
    ("if-match empty", "GET", {"if-match": ""}, FAILED),
    ("if-match unquoted", "GET", {"if-match": "abc"}, FAILED),
    ("if-match malformed list", "GET", {"if-match": f"{ETAG} {OTHER}"}, FAILED),
    ("if-match unterminated", "GET", {"if-match": '"abc'}, FAILED),
    ("if-match star in a list", "GET", {"if-match": f"*, {ETAG}"}, FAILED),
    ("if-match lowercase w", "GET", {"if-match": f"w/{ETAG}"}, FAILED),
    ("if-match on PUT", "PUT", {"if-match": ETAG}, PROCEED),
    ("if-match fails PUT", "PUT", {"if-match": OTHER}, FAILED),
    # If-Match false beats a matching If-None-Match (step 1 before step 3)
    ("if-match first", "GET", {"if-match": OTHER, "if-none-match": ETAG}, FAILED),
    ("if-match then inm", "GET", {"if-match": ETAG, "if-none-match": ETAG}, NOT_MODIFIED),
    # 2. If-Unmodified-Since, only without If-Match
    ("ius before lm", "GET", {"if-unmodified-since": EARLIER}, FAILED),
    ("ius equal lm", "GET", {"if-unmodified-since": LM_IMF}, PROCEED),
    ("ius after lm", "GET", {"if-unmodified-since": LATER}, PROCEED),
    ("ius rfc850", "GET", {"if-unmodified-since": "Sunday, 06-Nov-94 08:49:36 GMT"}, FAILED),
    ("ius asctime", "GET", {"if-unmodified-since": "Sun Nov  6 08:49:36 1994"}, FAILED),
    ("ius invalid ignored", "GET", {"if-unmodified-since": "not a date"}, PROCEED),
    ("ius list ignored", "GET", {"if-unmodified-since": f"{EARLIER}, {EARLIER}"}, PROCEED),
    (
        "ius ignored with if-match",
        "GET",
        {"if-match": ETAG, "if-unmodified-since": EARLIER},
        PROCEED,
    ),
    (
        "ius ignored with if-match star",
        "GET",
        {"if-match": "*", "if-unmodified-since": EARLIER},
        PROCEED,
    ),
    ("ius beats inm", "GET", {"if-unmodified-since": EARLIER, "if-none-match": ETAG}, FAILED),
    # 3. If-None-Match: weak comparison, "*", lists, GET/HEAD vs others
    ("inm equal", "GET", {"if-none-match": ETAG}, NOT_MODIFIED),
    ("inm equal head", "HEAD", {"if-none-match": ETAG}, NOT_MODIFIED),
    ("inm weak matches", "GET", {"if-none-match": f"W/{ETAG}"}, NOT_MODIFIED),
    ("inm other", "GET", {"if-none-match": OTHER}, PROCEED),
    ("inm star", "GET", {"if-none-match": "*"}, NOT_MODIFIED),
    ("inm in list", "GET", {"if-none-match": f'{OTHER}, W/"q", {ETAG}'}, NOT_MODIFIED),
    ("inm list tabs", "GET", {"if-none-match": f"{OTHER}\t,\t{ETAG}"}, NOT_MODIFIED),
    ("inm not in list", "GET", {"if-none-match": f'{OTHER}, W/"q"'}, PROCEED),
    ("inm malformed", "GET", {"if-none-match": "abc"}, PROCEED),
    ("inm malformed list", "GET", {"if-none-match": f"{ETAG} garbage"}, PROCEED),
    ("inm empty", "GET", {"if-none-match": ""}, PROCEED),
    ("inm case-sensitive", "GET", {"if-none-match": '"ABC"'}, PROCEED),
    ("inm on POST", "POST", {"if-none-match": ETAG}, FAILED),
    ("inm star on PUT", "PUT", {"if-none-match": "*"}, FAILED),
    ("inm miss on DELETE", "DELETE", {"if-none-match": OTHER}, PROCEED),
    ("methods are case-sensitive", "get", {"if-none-match": ETAG}, FAILED),
    # 4. If-Modified-Since, only for GET/HEAD and only without If-None-Match
    ("ims equal lm", "GET", {"if-modified-since": LM_IMF}, NOT_MODIFIED),
    ("ims after lm", "GET", {"if-modified-since": LATER}, NOT_MODIFIED),
    ("ims before lm", "GET", {"if-modified-since": EARLIER}, PROCEED),
    ("ims head", "HEAD", {"if-modified-since": LM_IMF}, NOT_MODIFIED),
    ("ims rfc850", "GET", {"if-modified-since": LM_RFC850}, NOT_MODIFIED),
    ("ims asctime", "GET", {"if-modified-since": LM_ASCTIME}, NOT_MODIFIED),
    ("ims ignored on POST", "POST", {"if-modified-since": LATER}, PROCEED),
    ("ims invalid ignored", "GET", {"if-modified-since": "garbage"}, PROCEED),
    ("ims impossible date", "GET", {"if-modified-since": "Sun, 31 Nov 2094 08:49:37 GMT"}, PROCEED),
    ("ims list ignored", "GET", {"if-modified-since": f"{LATER}, {LATER}"}, PROCEED),
    (
        "inm miss overrides ims",
        "GET",
        {"if-none-match": OTHER, "if-modified-since": LATER},
        PROCEED,
    ),
    (
        "inm hit with stale ims",
        "GET",
        {"if-none-match": ETAG, "if-modified-since": EARLIER},
        NOT_MODIFIED,
    ),
    (
        "ims after a passing ius",
        "GET",
        {"if-unmodified-since": LATER, "if-modified-since": LATER},
        NOT_MODIFIED,
    ),
    # §13.2.1: ignored for methods that do not select a representation
    ("options ignores all", "OPTIONS", {"if-match": OTHER}, PROCEED),
    ("trace ignores all", "TRACE", {"if-none-match": "*"}, PROCEED),
]


@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [case[1:] for case in PRECONDITION_CASES],
    ids=[case[0] for case in PRECONDITION_CASES],
)
def test_evaluate_preconditions(
    method: str, headers: dict[str, str], expected: Precondition
) -> None:
    assert evaluate_preconditions(method, headers, ETAG, LM) is expected


@pytest.mark.parametrize(
    ("etag", "field", "if_match_passes", "if_none_match_hits"),
    [
        # a comma inside the quotes is part of the tag, not a list separator
        ('"a,b"', '"a,b"', True, True),
        ('"a,b"', '"a", "b"', False, False),
        ('"a"', '"a,b"', False, False),
        ('"b"', '"a,b"', False, False),
        ('"a,b"', '"x", "a,b"', True, True),
        ('"a,b"', 'W/"a,b"', False, True),
        ('"a, b"', '"a, b"', False, False),  # SP is not etagc
        # the current tag is weak: strong comparison never matches it, weak does
        ('W/"a"', '"a"', False, True),
        ('W/"a"', 'W/"a"', False, True),
        ('W/"a"', "*", True, True),
        # empty opaque tag is legal
        ('""', '""', True, True),
        ('""', '"", "x"', True, True),
        # obs-text inside the quotes
        ('"caf\xe9"', '"caf\xe9"', True, True),
        # characters etagc excludes: the list is malformed and matches nothing
        ('"a b"', '"a b"', False, False),
        ('"a"', '"a" "a"', False, False),
        ('"a"', '"a"x', False, False),
        ('"a"', 'W/ "a"', False, False),
        ('"a"', 'W/"a', False, False),
        ('"a"', '"a\x7f"', False, False),
        ('"a"', '"\u20ac", "a"', False, False),
        ('"a"', '"', False, False),
        ('"a"', ",", False, False),
    ],
)
def test_entity_tag_lists(
    etag: str, field: str, if_match_passes: bool, if_none_match_hits: bool
) -> None:
    if_match = evaluate_preconditions("GET", {"if-match": field}, etag, LM)
    assert if_match is (PROCEED if if_match_passes else FAILED)
    if_none_match = evaluate_preconditions("GET", {"if-none-match": field}, etag, LM)
    assert if_none_match is (NOT_MODIFIED if if_none_match_hits else PROCEED)


_etagc = st.characters(codec="latin-1", exclude_characters='"', exclude_categories=("Cc", "Zs"))
_opaque = st.text(_etagc, max_size=8).map(lambda opaque: f'"{opaque}"')
_entity_tags = st.tuples(st.booleans(), _opaque).map(lambda t: f"W/{t[1]}" if t[0] else t[1])


@given(
    st.lists(_entity_tags, max_size=5),
    _opaque,
    st.integers(0, 5),
    st.sampled_from([",", ", ", " ,", "\t,\t", " , , "]),
)
def test_entity_tag_list_membership(
    others: list[str], etag: str, position: int, separator: str
) -> None:
    tags = [*others]
    tags.insert(min(position, len(tags)), etag)
    field = separator.join(tags)
    assert evaluate_preconditions("GET", {"if-none-match": field}, etag, LM) is NOT_MODIFIED
    assert evaluate_preconditions("GET", {"if-match": field}, etag, LM) is PROCEED
    weak_only = separator.join(f"W/{tag}" if not tag.startswith("W/") else tag for tag in tags)
    assert evaluate_preconditions("GET", {"if-match": weak_only}, etag, LM) is FAILED


_header_names = st.sampled_from(
    ["if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "range", "if-range"]
)
_header_values = st.one_of(
    st.text(),
    st.text(alphabet='W/",* \tabc-0123456789'),
    st.sampled_from([ETAG, f"W/{ETAG}", "*", LM_IMF, EARLIER, LATER, LM_ASCTIME, LM_RFC850]),
)


@given(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "get", ""]),
    st.dictionaries(_header_names, _header_values),
    st.one_of(st.text(), _entity_tags),
    st.integers(-(2**40), 2**40),
)
def test_evaluate_preconditions_never_raises(
    method: str, headers: dict[str, str], etag: str, last_modified: int
) -> None:
    result = evaluate_preconditions(method, headers, etag, last_modified)
    assert result in set(Precondition)
    if result is NOT_MODIFIED:
        assert method in {"GET", "HEAD"}


# --------------------------------------------------------------------------- ranges

SIZE = 1000


def test_byte_range_value() -> None:
    byte_range = ByteRange(10, 19)
    assert byte_range.length == 10
    assert byte_range.content_range(1234) == "bytes 10-19/1234"
    assert ByteRange(0, 0).length == 1
    with pytest.raises(ValueError, match="invalid byte range"):
        ByteRange(5, 4)
    with pytest.raises(ValueError, match="invalid byte range"):
        ByteRange(-1, 4)


def test_unsatisfiable_value() -> None:
    assert isinstance(UNSATISFIABLE, Unsatisfiable)
    assert Unsatisfiable() == UNSATISFIABLE
    assert UNSATISFIABLE.content_range(1234) == "bytes */1234"


RANGE_CASES: list[tuple[str, int, str, ByteRange | Unsatisfiable | None]] = [
    # single int-range and its clamping
    ("first-last", SIZE, "bytes=0-99", ByteRange(0, 99)),
    ("single byte", SIZE, "bytes=5-5", ByteRange(5, 5)),
    ("last byte", SIZE, "bytes=999-999", ByteRange(999, 999)),
    ("open", SIZE, "bytes=100-", ByteRange(100, 999)),
    ("open from zero", SIZE, "bytes=0-", ByteRange(0, 999)),
    ("last clamped", SIZE, "bytes=900-5000", ByteRange(900, 999)),
    ("last at size", SIZE, "bytes=0-1000", ByteRange(0, 999)),
    ("huge last", SIZE, "bytes=10-" + "9" * 5000, ByteRange(10, 999)),
    ("leading zeros", SIZE, "bytes=0010-0019", ByteRange(10, 19)),
    # suffix-range
    ("suffix", SIZE, "bytes=-100", ByteRange(900, 999)),
    ("suffix of one", SIZE, "bytes=-1", ByteRange(999, 999)),
    ("suffix whole", SIZE, "bytes=-1000", ByteRange(0, 999)),
    ("suffix longer than file", SIZE, "bytes=-5000", ByteRange(0, 999)),
    ("huge suffix", SIZE, "bytes=-" + "9" * 5000, ByteRange(0, 999)),
    ("suffix zero", SIZE, "bytes=-0", UNSATISFIABLE),
    # unsatisfiable
    ("first at size", SIZE, "bytes=1000-", UNSATISFIABLE),
    ("first past size", SIZE, "bytes=1000-2000", UNSATISFIABLE),
    ("huge first", SIZE, "bytes=" + "9" * 5000 + "-", UNSATISFIABLE),
    ("all unsatisfiable", SIZE, "bytes=1000-1001, 2000-, -0", UNSATISFIABLE),
    # coalescing
    ("overlap", SIZE, "bytes=0-50, 40-99", ByteRange(0, 99)),
    ("adjacent", SIZE, "bytes=0-49,50-99", ByteRange(0, 99)),
    ("out of order adjacent", SIZE, "bytes=50-99, 0-49", ByteRange(0, 99)),
    ("contained", SIZE, "bytes=0-99, 10-20", ByteRange(0, 99)),
    ("duplicate", SIZE, "bytes=0-0,0-0", ByteRange(0, 0)),
    ("open repeated", SIZE, "bytes=" + ",".join(["0-"] * MAX_RANGE_SPECS), ByteRange(0, 999)),
    ("suffix and open", SIZE, "bytes=-100, 900-", ByteRange(900, 999)),
    ("unsatisfiable dropped", SIZE, "bytes=2000-, 0-9", ByteRange(0, 9)),
    ("zero suffix dropped", SIZE, "bytes=-0, 0-9", ByteRange(0, 9)),
    ("gap: two ranges -> 200", SIZE, "bytes=0-9, 20-29", None),
    ("gap of one byte -> 200", SIZE, "bytes=0-9,11-20", None),
    ("head and tail -> 200", SIZE, "bytes=0-0,-1", None),
    # limits
    ("100 specs", SIZE, "bytes=" + ",".join(["0-0"] * MAX_RANGE_SPECS), ByteRange(0, 0)),
    ("101 specs", SIZE, "bytes=" + ",".join(["0-0"] * (MAX_RANGE_SPECS + 1)), None),
    ("101 unsatisfiable", SIZE, "bytes=" + ",".join(["5000-"] * (MAX_RANGE_SPECS + 1)), None),
    (
        "empty elements don't count",
        SIZE,
        "bytes=" + ",".join(["0-0"] * MAX_RANGE_SPECS) + ",,,,",
        ByteRange(0, 0),
    ),
    # whitespace: OWS around commas and around the field value only
    ("ows after comma", SIZE, "bytes=0-1, 2-3", ByteRange(0, 3)),
    ("ows around comma", SIZE, "bytes=0-1 ,\t2-3", ByteRange(0, 3)),
    ("empty elements", SIZE, "bytes=,0-1,, ,", ByteRange(0, 1)),
    ("surrounding ows", SIZE, " bytes=0-1 ", ByteRange(0, 1)),
    ("space around =", SIZE, "bytes = 0-1", None),
    ("space before =", SIZE, "bytes =0-1", None),
    ("space after =", SIZE, "bytes= 0-1", None),
    ("tab after =", SIZE, "bytes=\t0-1", None),
    ("space inside spec", SIZE, "bytes=0 -1", None),
    ("space after dash", SIZE, "bytes=0- 1", None),
    # the unit
    ("unit uppercase", SIZE, "BYTES=0-1", ByteRange(0, 1)),
    ("unit titlecase", SIZE, "Bytes=0-1", ByteRange(0, 1)),
    ("other unit", SIZE, "items=0-1", None),
    ("no unit", SIZE, "=0-1", None),
    ("no equals", SIZE, "bytes 0-1", None),
    ("bytes prefix only", SIZE, "bytesx=0-1", None),
    # syntax errors invalidate the whole field
    ("empty set", SIZE, "bytes=", None),
    ("only commas", SIZE, "bytes=,,", None),
    ("dash only", SIZE, "bytes=-", None),
    ("no dash", SIZE, "bytes=5", None),
    ("two dashes", SIZE, "bytes=1-2-3", None),
    ("negative last", SIZE, "bytes=1--2", None),
    ("first > last", SIZE, "bytes=10-5", None),
    ("first > last among valid", SIZE, "bytes=0-1, 10-5", None),
    ("huge first > huge last", SIZE, "bytes=0-1," + "9" * 30 + "-" + "9" * 29, None),
    ("letters", SIZE, "bytes=a-b", None),
    ("hex", SIZE, "bytes=0x1-2", None),
    ("plus sign", SIZE, "bytes=+1-2", None),
    ("underscore digits", SIZE, "bytes=1_0-20", None),
    ("non-ascii digits", SIZE, "bytes=\u0661-\u0662", None),
    ("superscript digit", SIZE, "bytes=\u00b2-3", None),
    ("other-range", SIZE, "bytes=foo", None),
    ("trailing junk", SIZE, "bytes=0-1;x", None),
    ("multipart spec list", SIZE, "bytes=0-1 2-3", None),
    # zero-length representation: only a non-zero suffix is satisfiable (§14.1.1), and a
    # 206 cannot express zero bytes, so that is a full (empty) 200; the rest is a 416
    ("empty file open", 0, "bytes=0-", UNSATISFIABLE),
    ("empty file first-last", 0, "bytes=0-0", UNSATISFIABLE),
    ("empty file suffix", 0, "bytes=-1", None),
    ("empty file zero suffix", 0, "bytes=-0", UNSATISFIABLE),
    ("empty file suffix among", 0, "bytes=0-0, -5", None),
    ("empty file invalid", 0, "bytes=5-1", None),
    # one-byte file
    ("one byte", 1, "bytes=0-0", ByteRange(0, 0)),
    ("one byte suffix", 1, "bytes=-5", ByteRange(0, 0)),
    ("one byte past", 1, "bytes=1-", UNSATISFIABLE),
]


@pytest.mark.parametrize(
    ("size", "field", "expected"),
    [case[1:] for case in RANGE_CASES],
    ids=[case[0] for case in RANGE_CASES],
)
def test_evaluate_range(size: int, field: str, expected: ByteRange | Unsatisfiable | None) -> None:
    assert evaluate_range("GET", {"range": field}, size, ETAG, LM) == expected


@pytest.mark.parametrize("method", ["HEAD", "POST", "PUT", "DELETE", "OPTIONS", "get"])
def test_range_only_for_get(method: str) -> None:
    assert evaluate_range(method, {"range": "bytes=0-1"}, SIZE, ETAG, LM) is None


def test_no_range_header() -> None:
    assert evaluate_range("GET", {}, SIZE, ETAG, LM) is None
    assert evaluate_range("GET", {"if-range": ETAG}, SIZE, ETAG, LM) is None


IF_RANGE_CASES: list[tuple[str, str, str, bool]] = [
    # (id, our etag, If-Range value, honoured?)
    ("etag equal", ETAG, ETAG, True),
    ("etag equal ows", ETAG, f" {ETAG} ", True),
    ("etag other", ETAG, OTHER, False),
    ("weak tag never matches", ETAG, f"W/{ETAG}", False),
    ("our weak tag never matches", f"W/{ETAG}", f"W/{ETAG}", False),
    ("our weak tag vs strong", f"W/{ETAG}", ETAG, False),
    ("tag list is not an If-Range", ETAG, f"{ETAG}, {OTHER}", False),
    ("star is not an If-Range", ETAG, "*", False),
    ("unquoted", ETAG, "abc", False),
    ("malformed tag", ETAG, '"abc', False),
    ("comma inside tag", '"a,b"', '"a,b"', True),
    ("date equal", ETAG, LM_IMF, True),
    ("date equal rfc850", ETAG, LM_RFC850, True),
    ("date equal asctime", ETAG, LM_ASCTIME, True),
    ("date earlier", ETAG, EARLIER, False),
    ("date later", ETAG, LATER, False),  # exact match only
    ("invalid date", ETAG, "Sun, 06 Nov 1994 08:49:37", False),
    ("empty", ETAG, "", False),
    ("garbage", ETAG, "\x00\xff", False),
]


@pytest.mark.parametrize(
    ("etag", "if_range", "honoured"),
    [case[1:] for case in IF_RANGE_CASES],
    ids=[case[0] for case in IF_RANGE_CASES],
)
def test_if_range(etag: str, if_range: str, honoured: bool) -> None:
    headers = {"range": "bytes=0-9", "if-range": if_range}
    expected = ByteRange(0, 9) if honoured else None
    assert evaluate_range("GET", headers, SIZE, etag, LM) == expected
    # A false If-Range means "send it all", even when the range could not be satisfied.
    unsatisfiable = {"range": "bytes=5000-", "if-range": if_range}
    expected_416 = UNSATISFIABLE if honoured else None
    assert evaluate_range("GET", unsatisfiable, SIZE, etag, LM) == expected_416


_range_specs = st.one_of(
    st.builds(lambda a, b: f"{a}-{b}", st.integers(0, 60), st.integers(0, 60)),
    st.builds(lambda a: f"{a}-", st.integers(0, 60)),
    st.builds(lambda n: f"-{n}", st.integers(0, 60)),
)


@given(
    st.one_of(
        st.text(),
        st.text(alphabet="bytesBYTES=-,0123456789 \t"),
        st.lists(_range_specs, min_size=1, max_size=8).map(lambda s: "bytes=" + ", ".join(s)),
    ),
    st.one_of(st.none(), st.text(), st.sampled_from([ETAG, LM_IMF, f"W/{ETAG}"])),
    st.integers(0, 2**63 - 1) | st.integers(0, 50),
)
@example("bytes=0-" + "9" * 5000, None, 10)
@example("bytes=-" + "9" * 5000, None, 10)
def test_evaluate_range_never_raises(field: str, if_range: str | None, size: int) -> None:
    headers = {"range": field}
    if if_range is not None:
        headers["if-range"] = if_range
    result = evaluate_range("GET", headers, size, ETAG, LM)
    assert result is None or result is UNSATISFIABLE or isinstance(result, ByteRange)
    if isinstance(result, ByteRange):
        assert 0 <= result.start <= result.end < size


def _selected_bytes(spec: str, size: int) -> set[int]:
    """Reference model of RFC 9110 §14.1.2 for one valid spec, on a small file."""
    first, _, last = spec.partition("-")
    if not first:
        return set(range(max(0, size - int(last)), size))
    return set(range(int(first), min(int(last) + 1, size) if last else size))


@given(st.lists(_range_specs, min_size=1, max_size=8), st.integers(0, 50))
def test_evaluate_range_agrees_with_model(specs: list[str], size: int) -> None:
    field = "bytes=" + ",".join(specs)
    result = evaluate_range("GET", {"range": field}, size, ETAG, LM)
    invalid = any(
        a and b and int(a) > int(b) for a, _, b in (spec.partition("-") for spec in specs)
    )
    if invalid:
        assert result is None
        return
    wanted: set[int] = set().union(*(_selected_bytes(spec, size) for spec in specs))
    runs = sum(1 for i in wanted if i - 1 not in wanted)
    expected: ByteRange | Unsatisfiable | None
    if size == 0 and any(spec.startswith("-") and spec != "-0" for spec in specs):
        expected = None  # satisfiable per §14.1.1, but no 206 can say "zero bytes"
    elif runs == 0:
        expected = UNSATISFIABLE
    elif runs == 1:
        expected = ByteRange(min(wanted), max(wanted))
    else:
        expected = None  # several disjoint ranges: the full 200
    assert result == expected
