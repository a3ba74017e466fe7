"""What to answer, as data: the plans :meth:`sitepeek.site.Site.decide` returns.

Like h11's events, a plan is a small immutable value: deciding makes one, writing
(the handler) turns it into bytes on a connection. A plan never holds a socket, and
nothing here knows a worker model.

The plans are typed named tuples rather than frozen dataclasses: one is made for
every request, and on CPython 3.11 a frozen dataclass costs about 1 µs to build
(every field goes through ``object.__setattr__``), a named tuple a fifth of that.
Tell plans apart with ``isinstance``, never by comparing them to another type's plan.
"""

from __future__ import annotations

from typing import NamedTuple

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


class Error(NamedTuple):
    """One of sitepeek's own error pages; ``close``: the connection cannot be reused."""

    status: int
    detail: str
    headers: Fields = ()
    close: bool = False


class Redirect(NamedTuple):
    """A redirect to ``location`` (a URL path of this server, or an absolute URL)."""

    status: int
    location: str


class Page(NamedTuple):
    """A body made here (a directory listing; an empty 204 for OPTIONS)."""

    status: int
    headers: Fields
    body: bytes = b""


class SendFile(NamedTuple):
    """A file of the site: as the resource itself (``status`` 200: conditionals,
    ranges and codings apply), or as the body of another status (a custom 404 page).
    ``candidate``: the hot cache may remember the answer."""

    file: File
    status: int = 200
    candidate: Candidate | None = None


class SendEntity(NamedTuple):
    """A representation held in memory (the live-reload client script)."""

    entity: Entity


class Forward(NamedTuple):
    """Forward the request to a ``--proxy`` backend."""

    route: ProxyRoute


class Upgrade(NamedTuple):
    """Switch to the live-reload WebSocket (the handshake is checked when written).
    (No fields, so it is falsy: never test a plan for truth.)"""


Plan = Error | Redirect | Page | SendFile | SendEntity | Forward | Upgrade


# What Site.decide returns: a plan and the fields ``_headers`` adds to whatever
# answers it (a plain pair: it is made for every request).
Decision = tuple[Plan, Fields]
