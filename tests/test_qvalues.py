"""Tests for :mod:`sitepeek.qvalues`: the one parser of weights (RFC 9110 §12.4.2).

``Accept`` and ``Accept-Encoding`` both read their weights here; their own tables
(``test_resolver.py``'s media_type_weight, ``test_compression.py``'s negotiate) check
what each field does with them.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sitepeek.qvalues import Weighted, qvalue, weighted_element, weighted_elements


@pytest.mark.parametrize(
    ("text", "thousandths"),
    [
        ("0", 0),
        ("0.", 0),
        ("0.000", 0),
        ("0.001", 1),
        ("0.5", 500),
        ("0.25", 250),
        ("0.125", 125),
        ("0.999", 999),
        ("1", 1000),
        ("1.", 1000),
        ("1.0", 1000),
        ("1.000", 1000),
        # Not qvalues (§12.4.2): more than three decimals, above 1, signs, spaces, ...
        ("", None),
        (".5", None),
        ("0.1234", None),
        ("1.001", None),
        ("1.0000", None),
        ("2", None),
        ("00.5", None),
        ("-0", None),
        ("+1", None),
        (" 0.5", None),
        ("0.5 ", None),
        ("0,5", None),
        ("1e0", None),
        ("abc", None),
        ("\u0660", None),  # ARABIC-INDIC DIGIT ZERO: ASCII digits only
        ("0.\u0665", None),
    ],
)
def test_qvalue(text: str, thousandths: int | None) -> None:
    assert qvalue(text) == thousandths


@pytest.mark.parametrize(
    ("element", "parsed"),
    [
        ("gzip", Weighted("gzip", (), 1000, ())),
        ("gzip;q=0", Weighted("gzip", (), 0, ())),
        ("\tgzip ; Q=0.5 ", Weighted("gzip", (), 500, ())),
        ("text/html;level=1;q=0.3;ext=1", Weighted("text/html", ("level=1",), 300, ("ext=1",))),
        ("text/html;level=1", Weighted("text/html", ("level=1",), 1000, ())),
        ("a;q=0.5;q=0.1", Weighted("a", (), 500, ("q=0.1",))),  # the first q is the weight
        ("a;", Weighted("a", ("",), 1000, ())),
        ("a;q = 0.5", Weighted("a", ("q = 0.5",), 1000, ())),  # not a weight (no OWS at =)
        ("", Weighted("", (), 1000, ())),
        # A malformed weight drops the element.
        ("gzip;q=2", None),
        ("gzip;q=", None),
        ("gzip;Q=abc", None),
        ("gzip;q=0.5 junk", None),
    ],
)
def test_weighted_element(element: str, parsed: Weighted | None) -> None:
    assert weighted_element(element) == parsed


def test_weighted_elements_skip_empty_and_malformed_ones() -> None:
    field = " , gzip;q=0.5,,br;q=9, *;q=0 ,"
    assert list(weighted_elements(field)) == [
        Weighted("gzip", (), 500, ()),
        Weighted("*", (), 0, ()),
    ]


# -- properties ---------------------------------------------------------------------
def rfc_qvalue(text: str) -> int | None:
    """RFC 9110 §12.4.2 read another way: one digit 0 or 1, then at most three
    decimals, worth no more than 1; the value in thousandths by decimal arithmetic."""
    whole, _, fraction = text.partition(".")
    if whole not in ("0", "1") or len(fraction) > 3:
        return None
    if not all(c in "0123456789" for c in fraction):
        return None
    number = Decimal(whole + "." + fraction) if fraction else Decimal(whole)
    if number > 1:
        return None
    return int(number * 1000)


QVALUE_TEXT = st.text(alphabet="0123456789.-+e ", max_size=7)


@given(st.one_of(QVALUE_TEXT, st.text(max_size=8)))
@example("1.000")
@example("0.")
@example("1.")
def test_qvalue_agrees_with_the_rfc(text: str) -> None:
    assert qvalue(text) == rfc_qvalue(text)


TOKENS = st.text(alphabet="abcxyz-*/", min_size=1, max_size=6)
OWS = st.sampled_from(["", " ", "\t", " \t "])
WEIGHTS = st.one_of(
    st.none(),  # no weight: 1000
    st.sampled_from(["0", "0.", "0.5", "0.001", "1", "1.000", "0.25"]),  # valid
    st.sampled_from(["2", "1.5", "0.1234", "x", "", "-0"]),  # malformed: dropped
)


@st.composite
def elements(draw: st.DrawFn) -> tuple[str, str, tuple[str, ...], str | None]:
    value = draw(TOKENS)
    parameters = tuple(draw(st.lists(TOKENS.map(lambda t: "p" + t + "=v"), max_size=2)))
    weight = draw(WEIGHTS)
    text = draw(OWS) + value
    for parameter in parameters:
        text += draw(OWS) + ";" + draw(OWS) + parameter
    if weight is not None:
        q = draw(st.sampled_from(["q", "Q"]))
        text += draw(OWS) + ";" + draw(OWS) + q + "=" + weight
    return text + draw(OWS), value, parameters, weight


@given(st.lists(elements(), max_size=6))
def test_weighted_elements_read_back_what_was_written(
    written: list[tuple[str, str, tuple[str, ...], str | None]],
) -> None:
    field = ",".join(text for text, *_ in written)
    expected = []
    for _, value, parameters, weight in written:
        thousandths = 1000 if weight is None else rfc_qvalue(weight)
        if thousandths is not None:  # a malformed weight drops its element, only it
            expected.append(Weighted(value, parameters, thousandths, ()))
    assert list(weighted_elements(field)) == expected


@given(st.text())
@example("," * 10_000)
@example("a;q=" + "0" * 10_000)
@example(";" * 10_000)
def test_weighted_elements_never_raise(field: str) -> None:
    for element in weighted_elements(field):
        assert 0 <= element.weight <= 1000
        assert "," not in element.value
