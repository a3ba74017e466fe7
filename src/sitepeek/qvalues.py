"""Weights in list fields: one parser of RFC 9110 §12.4.2 qvalues for every field.

``Accept`` (:func:`sitepeek.resolver.media_type_weight`) and ``Accept-Encoding``
(:func:`sitepeek.compression.negotiate`) are comma-separated lists of elements, each
``value *( OWS ";" OWS parameter )`` with an optional ``weight = OWS ";" OWS "q="
qvalue`` (§12.4.2; the name ``q`` in any case). :func:`weighted_elements` splits a
field into its elements and reads each weight as an exact integer in thousandths
(0..1000): ``q=0`` is "not acceptable", no weight is 1000, and an element whose
weight is malformed (``q=2``, ``q=0.1234``, ``q=abc``, ``q = 1``) is dropped, as if
the client had not sent it. What the value and its parameters must look like is the
caller's grammar, checked by the caller.

Standard library only; never raises, whatever the field holds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

__all__ = ["QVALUE", "Weighted", "qvalue", "weighted_element", "weighted_elements"]

# RFC 9110 §12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
QVALUE = r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?"
_QVALUE = re.compile(QVALUE)
_OWS = " \t"  # RFC 9110 §5.6.3


class Weighted(NamedTuple):
    """One element of a list field with weights, its parts stripped of OWS."""

    value: str  # the coding, the media range, ...
    parameters: tuple[str, ...]  # those before the weight ("level=1")
    weight: int  # thousandths: 0 (not acceptable) .. 1000 (the default)
    after: tuple[str, ...]  # what follows the weight, which few grammars allow


def qvalue(text: str) -> int | None:
    """``text`` as a qvalue in thousandths (exact: no float), or None if it is not one."""
    if not _QVALUE.fullmatch(text):
        return None
    whole, _, fraction = text.partition(".")
    return int(whole) * 1000 + int((fraction + "000")[:3])


def weighted_element(element: str) -> Weighted | None:
    """Parse one element; None when its weight is malformed."""
    value, *parameters = (part.strip(_OWS) for part in element.split(";"))
    for index, parameter in enumerate(parameters):
        name, _, text = parameter.partition("=")
        if name.lower() == "q":  # the first q is the weight (§12.4.2)
            weight = qvalue(text)
            if weight is None:
                return None
            before, after = parameters[:index], parameters[index + 1 :]
            return Weighted(value, tuple(before), weight, tuple(after))
    return Weighted(value, tuple(parameters), 1000, ())


def weighted_elements(field_value: str) -> Iterator[Weighted]:
    """The elements of ``field_value`` whose weights parse, in order; empty elements
    (``a, , b``) do not count (RFC 9110 §5.6.1). A comma inside a quoted parameter
    value splits its element and so spoils only that one."""
    for element in field_value.split(","):
        parsed = weighted_element(element)
        if parsed is not None and (parsed.value or parsed.parameters):
            yield parsed
