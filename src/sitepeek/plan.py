"""What to answer, as data: the plans :meth:`sitepeek.site.Site.decide` returns.

Like h11's events, a plan is a small frozen value: deciding makes one, writing (the
handler) turns it into bytes on a connection. A plan never holds a socket, and
nothing here knows a worker model.
"""

from __future__ import annotations

from dataclasses import dataclass

from sitepeek.entities import Entity
from sitepeek.hotcache import Candidate
from sitepeek.resolver import File
from sitepeek.routes import ProxyRoute

__all__ = [
    "Decision",
    "Error",
    "Fields",
    "Forward",
    "Page",
    "Plan",
    "Redirect",
    "SendEntity",
    "SendFile",
    "Upgrade",
]

Fields = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Error:
    """One of sitepeek's own error pages; ``close``: the connection cannot be reused."""

    status: int
    detail: str
    headers: Fields = ()
    close: bool = False


@dataclass(frozen=True, slots=True)
class Redirect:
    """A redirect to ``location`` (a URL path of this server, or an absolute URL)."""

    status: int
    location: str


@dataclass(frozen=True, slots=True)
class Page:
    """A body made here (a directory listing; an empty 204 for OPTIONS)."""

    status: int
    headers: Fields
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class SendFile:
    """A file of the site: as the resource itself (``status`` 200: conditionals,
    ranges and codings apply), or as the body of another status (a custom 404 page).
    ``candidate``: the hot cache may remember the answer."""

    file: File
    status: int = 200
    candidate: Candidate | None = None


@dataclass(frozen=True, slots=True)
class SendEntity:
    """A representation held in memory (the live-reload client script)."""

    entity: Entity


@dataclass(frozen=True, slots=True)
class Forward:
    """Forward the request to a ``--proxy`` backend."""

    route: ProxyRoute


@dataclass(frozen=True, slots=True)
class Upgrade:
    """Switch to the live-reload WebSocket (the handshake is checked when written)."""


Plan = Error | Redirect | Page | SendFile | SendEntity | Forward | Upgrade


@dataclass(frozen=True, slots=True)
class Decision:
    """A plan and the fields ``_headers`` adds to whatever answers it."""

    plan: Plan
    headers: Fields = ()
