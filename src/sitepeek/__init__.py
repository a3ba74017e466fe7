"""sitepeek: preview a static site over HTTP/1.1 with live reload.

Importing this package starts nothing and patches nothing; :class:`Server` (in
:mod:`sitepeek.api`) is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sitepeek.version import __version__

__all__ = ["OptionError", "Server", "ServerError", "__version__"]

if TYPE_CHECKING:
    from sitepeek.api import OptionError, Server, ServerError

_API = frozenset({"OptionError", "Server", "ServerError"})


def __getattr__(name: str) -> object:
    if name in _API:
        from sitepeek import api

        return getattr(api, name)
    raise AttributeError(f"module 'sitepeek' has no attribute {name!r}")
