"""Response heads: the pieces every answer shares, and the one header-override rule.

Pure (no sockets): the Date line cached per second, the Server field, error pages,
and how fields added by ``_headers``, ``--header`` and ``--cors`` replace the
response's own (:func:`without_overridden`, the one place that rule lives: sitepeek's
own answers, the hot cache's and the proxy's all go through it).
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence

from sitepeek.http11 import FRAMING_FIELDS, reason_phrase
from sitepeek.representation import http_date
from sitepeek.version import __version__

__all__ = [
    "ALLOW",
    "SERVER",
    "DateCache",
    "error_page",
    "header_bytes",
    "overridable",
    "without_overridden",
]

SERVER = f"sitepeek/{__version__}"
ALLOW = "GET, HEAD, OPTIONS"


class DateCache:
    """The Date header, formatted at most once per second, with the fields that follow."""

    __slots__ = ("_prefixes", "_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = ""
        self._prefixes: dict[tuple[bool, str], bytes] = {}

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._value = http_date(second)
            self._prefixes = {}
            self._second = second
        return self._value

    def prefix(self, keep_alive: bool, version: str) -> bytes:
        """Date, Server and Connection header lines, ready to send."""
        value = self.now()
        prefix = self._prefixes.get((keep_alive, version))
        if prefix is None:
            lines = f"Date: {value}\r\nServer: {SERVER}\r\n"
            if not keep_alive:
                lines += "Connection: close\r\n"
            elif version == "1.0":
                lines += "Connection: keep-alive\r\n"
            prefix = self._prefixes[(keep_alive, version)] = lines.encode("latin-1")
        return prefix


def without_overridden(data: bytes, names: frozenset[str]) -> bytes:
    """The header-override rule: keep only the first field of each name in ``names``
    in the head that ``data`` begins with (the body, if any, is left alone).

    ``names`` are the added fields' (:func:`overridable`). The added fields are
    written as one block, one line per name (:func:`~sitepeek.http11.combine_fields`),
    before the fields they replace: so an added field replaces every field of the
    same name the response would otherwise carry (as on Cloudflare Pages and
    Netlify), Set-Cookie adds to them, and two added lines of one name (``--header``
    and ``_headers``) keep the first. sitepeek's own answers write the block right
    after Date, Server and Connection, which therefore stay sitepeek's; a proxied
    response has it right after the status line, so it replaces any backend field.
    """
    end = data.find(b"\r\n\r\n") if names else -1
    if end < 0:
        return data
    lines = data[:end].split(b"\r\n")
    seen: set[str] = set()
    kept = [lines[0]]
    for line in lines[1:]:
        name = line.partition(b":")[0].decode("latin-1").lower()
        if name in names:
            if name in seen:
                continue
            seen.add(name)
        kept.append(line)
    return b"\r\n".join(kept) + data[end:]


def overridable(headers: Sequence[tuple[str, str]]) -> frozenset[str]:
    """Names of added fields that replace the response's own; Set-Cookie may repeat
    (RFC 6265 §3), and framing fields are never added (config refuses them)."""
    return frozenset(name.lower() for name, _ in headers) - {"set-cookie"} - FRAMING_FIELDS


def header_bytes(headers: Sequence[tuple[str, str]]) -> bytes:
    return "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")


def error_page(status: int, detail: str) -> bytes:
    title = f"{status} {reason_phrase(status)}"
    text = html.escape(detail if detail != reason_phrase(status) else "")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{title}</title><meta name="viewport" content="width=device-width">'
        "<style>body{font:16px/1.5 system-ui,sans-serif;margin:15vh auto;max-width:34rem;"
        "padding:0 1rem;color:#222}h1{font-size:1.6rem;margin:0 0 .5rem}"
        "p{color:#666}@media(prefers-color-scheme:dark){body{background:#111;color:#eee}}"
        "</style></head>\n"
        f"<body><h1>{title}</h1><p>{text}</p><p><small>{SERVER}</small></p></body></html>\n"
    ).encode()
