"""``--proxy`` routes: parse ``PREFIX=URL`` and match a request path to a route.

Pure (standard library only), so :mod:`sitepeek.config` validates routes with it and
:mod:`sitepeek.proxy` forwards along them without either importing the other's
dependencies. The rules (nginx's ``proxy_pass`` prefix rewrite, segment-wise prefix
match, longest prefix wins) are explained in :mod:`sitepeek.proxy`.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["ProxyRoute", "match", "parse_route"]


@dataclass(frozen=True, slots=True)
class ProxyRoute:
    """Requests whose path is ``prefix`` or starts with ``prefix + "/"`` go to a backend.

    ``base_path`` replaces the prefix in the forwarded path; it equals ``prefix`` when
    the backend URL had no path (no rewrite) and is ``""`` for a URL ending in ``/``
    (the prefix is stripped). See the module docstring.
    """

    prefix: str  # "/api": no trailing slash; "" (from "/") matches every path
    host: str  # "127.0.0.1", "localhost", "::1" (no brackets)
    port: int
    base_path: str  # no trailing slash

    def __post_init__(self) -> None:
        for path in (self.prefix, self.base_path):
            if path and (not path.startswith("/") or path.endswith("/")):
                raise ValueError(f"{path!r}: expected '' or a path like /api (no final '/')")
        if not 0 < self.port < 65536:
            raise ValueError(f"invalid port {self.port}")

    @property
    def origin(self) -> str:
        """The backend as a URL origin, for messages: ``http://127.0.0.1:8000``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def matches(self, path: str) -> bool:
        """Is ``path`` (raw, as sent) under this route's prefix (segment-wise)?"""
        prefix = self.prefix
        if not path.startswith(prefix):
            return False
        rest = path[len(prefix) :]
        return rest.startswith("/") or (not rest and bool(prefix))

    def rewrite(self, path: str) -> str:
        """The path to request from the backend for a matching ``path``."""
        return (self.base_path + path[len(self.prefix) :]) or "/"


def parse_route(spec: str) -> ProxyRoute:
    """``"/api=http://127.0.0.1:8000"`` -> ProxyRoute; ValueError says what is wrong."""
    prefix, sep, url = spec.partition("=")
    prefix, url = prefix.strip(), url.strip()
    if not sep or not prefix or not url:
        raise ValueError(f"{spec!r}: expected PREFIX=URL, for example /api=http://127.0.0.1:8000")
    if not prefix.startswith("/"):
        raise ValueError(f"{spec!r}: the prefix must start with '/', for example /api")
    if not _is_plain_path(prefix):
        raise ValueError(f"{spec!r}: the prefix must be a plain URL path (no spaces, '?' or '#')")
    prefix = prefix.rstrip("/")
    if "://" not in url:
        raise ValueError(f"{spec!r}: {url!r} is not a URL; did you mean http://{url} ?")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        raise ValueError(
            f"{spec!r}: https:// backends are not supported; sitepeek forwards plain "
            "HTTP to a local backend, so give its http:// address"
        )
    if scheme != "http":
        raise ValueError(f"{spec!r}: only http:// backends are supported, not {scheme}://")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{spec!r}: user names and passwords in the URL are not supported")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{spec!r}: invalid port in {url!r}") from None
    host = parts.hostname or ""
    if not _is_valid_host(host):
        raise ValueError(f"{spec!r}: invalid or missing host in {url!r}")
    if port == 0:
        raise ValueError(f"{spec!r}: invalid port 0 in {url!r}")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"{spec!r}: the backend URL cannot have a query or fragment")
    path = parts.path
    if path and not _is_plain_path(path):
        raise ValueError(f"{spec!r}: the backend path must be a plain URL path")
    # nginx's proxy_pass rule: no path keeps the request path, a path replaces the prefix.
    base_path = prefix if not path else path.rstrip("/")
    return ProxyRoute(prefix=prefix, host=host, port=port or 80, base_path=base_path)


def match(routes: Sequence[ProxyRoute], path: str) -> ProxyRoute | None:
    """The route for ``path``: the longest matching prefix wins (the first on a tie)."""
    best: ProxyRoute | None = None
    for route in routes:
        if route.matches(path) and (best is None or len(route.prefix) > len(best.prefix)):
            best = route
    return best


def _is_plain_path(path: str) -> bool:
    return path.isascii() and all(0x21 <= ord(c) <= 0x7E and c not in "?#" for c in path)


def _is_valid_host(host: str) -> bool:
    if not host:
        return False
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return True
    labels = host.rstrip(".").split(".")
    return all(
        label and len(label) < 64 and all(c.isascii() and (c.isalnum() or c in "-_") for c in label)
        for label in labels
    )
