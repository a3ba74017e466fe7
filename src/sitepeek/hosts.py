"""Which Host names a server bound to loopback answers (DNS rebinding protection).

A page on evil.example can make the browser resolve evil.example to 127.0.0.1 and
then read a local dev server as if it were same-origin: the browser sends
``Host: evil.example:8000``. A server that only listens on loopback therefore answers
only to loopback names (and names the user allows), like Vite and webpack-dev-server do.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

# Names any loopback-bound server answers to; "*.localhost" is loopback by RFC 6761 §6.3.
_LOOPBACK_NAMES = frozenset({"localhost"})


def is_loopback_address(host: str) -> bool:
    """Is ``host`` (an address or "localhost") on the loopback interface?"""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> str | None:
    """The host part of a Host header (no port, lowercase, no trailing dot), or None."""
    value = value.strip().lower()
    if not value:
        return None
    if value.startswith("["):  # IP-literal (RFC 3986 §3.2.2)
        end = value.find("]")
        rest = value[end + 1 :]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return value[: end + 1]
    name, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    return name.rstrip(".") or None


class HostPolicy:
    """Answers whether a request's Host header is one this server should serve."""

    def __init__(self, bound_host: str, allowed: Iterable[str] = ()) -> None:
        # Only a loopback-bound server restricts Host: on 0.0.0.0 the user has chosen
        # to be reachable by whatever name the network uses.
        self.enforced = is_loopback_address(bound_host)
        extra = {name.lower().rstrip(".") for name in allowed}
        self._allowed = _LOOPBACK_NAMES | extra | {bound_host.lower()}
        self._wildcards = tuple(name[1:] for name in extra if name.startswith("*."))
        self._seen: dict[str, bool] = {}

    def allows(self, host_header: str) -> bool:
        if not self.enforced:
            return True
        verdict = self._seen.get(host_header)
        if verdict is None:
            verdict = self._judge(host_header)
            if len(self._seen) < 1024:  # bounded: hostile clients send endless names
                self._seen[host_header] = verdict
        return verdict

    def _judge(self, host_header: str) -> bool:
        host = split_host(host_header)
        if host is None:
            return False
        if host in self._allowed or host.endswith(".localhost"):
            return True
        if any(host.endswith(suffix) for suffix in self._wildcards):
            return True
        return is_loopback_address(host)
