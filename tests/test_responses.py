"""Tests for :mod:`sitepeek.responses`: the one header-override rule.

Fields added by ``_headers``, ``--header`` and ``--cors`` replace the response's own
fields of the same name. sitepeek's own answers, the hot cache's and the proxy's all
apply it through :func:`without_overridden`; these tables check the rule itself, on
heads built the way sitepeek builds them (the added block right after Date and
Server). ``test_production.py`` checks it end to end in every worker model, and
``test_proxy.py`` on proxied responses.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sitepeek.http11 import FRAMING_FIELDS, combine_fields
from sitepeek.responses import SERVER, header_bytes, overridable, without_overridden

Fields = tuple[tuple[str, str], ...]
DATE = ("Date", "Thu, 03 Dec 2026 12:00:00 GMT")
OURS_FIRST = (DATE, ("Server", SERVER))


def answer(added: Fields, ours: Fields, body: bytes = b"") -> bytes:
    """A head as sitepeek writes its own answers: Date, Server, the added block, ours."""
    block = combine_fields(added)
    head = b"HTTP/1.1 200 OK\r\n" + header_bytes(OURS_FIRST) + header_bytes(block)
    head += header_bytes(ours) + b"\r\n"
    return without_overridden(head + body, overridable(block))


def fields_of(data: bytes) -> Fields:
    head = data[: data.index(b"\r\n\r\n")].decode("latin-1")
    pairs = [line.split(": ", 1) for line in head.split("\r\n")[1:]]
    return tuple((name, value) for name, value in pairs)


class Case(NamedTuple):
    id: str
    added: Fields
    ours: Fields
    expected: Fields  # after Date and Server


CT = ("Content-Type", "text/html; charset=utf-8")
NO_CACHE = ("Cache-Control", "no-cache")
CASES = [
    Case("nothing-added", (), (CT, NO_CACHE), (CT, NO_CACHE)),
    Case(
        "replaces-ours",
        (("Cache-Control", "max-age=60"),),
        (CT, NO_CACHE),
        (("Cache-Control", "max-age=60"), CT),
    ),
    Case(
        "names-are-case-insensitive",
        (("content-type", "text/plain"),),
        (CT, NO_CACHE),
        (("content-type", "text/plain"), NO_CACHE),
    ),
    Case(
        "every-line-of-ours-of-that-name",
        (("Vary", "Cookie"),),
        (("Vary", "Accept-Encoding"), CT, ("vary", "Origin")),
        (("Vary", "Cookie"), CT),
    ),
    Case(
        "other-names-untouched-even-repeated",
        (("X-Added", "1"),),
        (("X-Ours", "a"), ("X-Ours", "b")),
        (("X-Added", "1"), ("X-Ours", "a"), ("X-Ours", "b")),
    ),
    Case(
        # RFC 6265 §3: a cookie of ours and an added one are both set.
        "set-cookie-adds",
        (("Set-Cookie", "theme=dark"),),
        (("Set-Cookie", "session=1"), CT),
        (("Set-Cookie", "theme=dark"), ("Set-Cookie", "session=1"), CT),
    ),
    Case(
        # Two --header lines of one name: both values go out (RFC 9110 §5.3).
        "repeated-added-names-are-combined",
        (("Link", "</a.css>; rel=preload"), ("link", "</b.js>; rel=preload")),
        (CT,),
        (("Link", "</a.css>; rel=preload, </b.js>; rel=preload"), CT),
    ),
    Case(
        "repeated-added-set-cookie-stays-separate",
        (("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")),
        (),
        (("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")),
    ),
    Case(
        # Date and Server come before the added block: sitepeek's own stay.
        "date-and-server-stay-ours",
        (("Server", "mine"), ("Date", "yesterday"), ("X-A", "1")),
        (CT,),
        (("X-A", "1"), CT),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_override_rule(case: Case) -> None:
    assert fields_of(answer(case.added, case.ours)) == OURS_FIRST + case.expected


def test_the_body_is_left_alone() -> None:
    body = b"Cache-Control: no-cache\r\n\r\nCache-Control: no-cache\r\n"
    data = answer((("Cache-Control", "max-age=1"),), (NO_CACHE,), body)
    assert data.endswith(b"\r\n\r\n" + body)
    assert fields_of(data) == (*OURS_FIRST, ("Cache-Control", "max-age=1"))


def test_a_proxied_head_has_the_block_first() -> None:
    """The proxy writes the added block right after the status line: it replaces any
    backend field, the backend's Date and Server included."""
    block = combine_fields([("Server", "mine"), ("Cache-Control", "no-store")])
    backend = (("Date", "then"), ("Server", "nginx"), ("Cache-Control", "max-age=9"), CT)
    head = b"HTTP/1.1 200 OK\r\n" + header_bytes(block) + header_bytes(backend) + b"\r\n"
    data = without_overridden(head, overridable(block))
    expected = (("Server", "mine"), ("Cache-Control", "no-store"), ("Date", "then"), CT)
    assert fields_of(data) == expected


def test_overridable_names() -> None:
    added = [("X-A", "1"), ("Cache-Control", "x"), ("Set-Cookie", "a=1")]
    assert overridable(added) == {"x-a", "cache-control"}
    assert not overridable([(name, "x") for name in FRAMING_FIELDS])


@pytest.mark.parametrize(
    "data",
    [b"", b"HTTP/1.1 200 OK\r\n", b"no head at all", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n"],
)
def test_an_incomplete_head_is_unchanged(data: bytes) -> None:
    assert without_overridden(data, frozenset({"x-a"})) == data


# -- properties ---------------------------------------------------------------------
# A few names, so that added and own fields often share one.
NAMES = st.sampled_from(["X-A", "x-a", "Vary", "Link", "Set-Cookie", "set-cookie", "ETag"])
VALUES = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=8)
FIELD_LISTS = st.lists(st.tuples(NAMES, VALUES), max_size=8).map(tuple)


@given(added=FIELD_LISTS, ours=FIELD_LISTS)
def test_added_fields_replace_ours_of_the_same_name(added: Fields, ours: Fields) -> None:
    """The rule as a statement: the added fields (one line per name, Set-Cookie
    excepted) go out, then every field of ours that they do not name."""
    block = tuple(combine_fields(added))
    names = overridable(block)
    kept = tuple(field for field in ours if field[0].lower() not in names)
    assert fields_of(answer(added, ours)) == OURS_FIRST + block + kept


@given(data=st.binary(max_size=200), names=st.frozensets(st.sampled_from(["x-a", "b", ""])))
def test_never_raises_and_keeps_a_prefix_shape(data: bytes, names: frozenset[str]) -> None:
    result = without_overridden(data, names)
    assert len(result) <= len(data)
    end = data.find(b"\r\n\r\n")
    if end < 0 or not names:
        assert result == data
    else:
        assert result.endswith(data[end:])  # the body, untouched
