"""What sitepeek shows in the terminal, besides the request log (:mod:`sitepeek.log`):
the start-up banner with every URL the site is reachable at, the QR code, opening the
browser, and the summary line at stop.

Colors only on a terminal and never with ``NO_COLOR`` set (https://no-color.org).
Standard library only; ``segno`` draws the QR code when the ``qr`` extra is installed.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import ipaddress
import os
import socket
import struct
import sys
import threading
import webbrowser
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TextIO

# SGR codes (ECMA-48)
BOLD, DIM, RED, GREEN, YELLOW, CYAN = "1", "2", "31", "32", "33", "36"

# Linux ioctls on a socket, from <linux/sockios.h>: interface address and flags.
_SIOCGIFADDR = 0x8915
_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1
# An address of TEST-NET-1 (RFC 5737): connecting a UDP socket to it sends nothing,
# but makes the kernel pick the source address it would route through.
_ROUTE_PROBE = ("192.0.2.1", 9)

QR_HINT = "--qr needs the qr extra: pip install 'sitepeek[qr]'"


_SIZE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def write_line(out: TextIO, text: str) -> None:
    """Write ``text`` and its newline in one call, and flush. print() writes them apart:
    with unbuffered output (PYTHONUNBUFFERED) another thread's line can land between
    the two, and two lines become one (the build runner and the reload lines print
    from different threads)."""
    out.write(text + "\n")
    out.flush()


def color_enabled(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Color only on a terminal, never with NO_COLOR set (to anything but "") or TERM=dumb."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    return is_terminal(stream)


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


@dataclass(frozen=True, slots=True)
class Style:
    """Wraps text in SGR codes when color is enabled; plain text otherwise."""

    enabled: bool

    def __call__(self, text: str, *codes: str) -> str:
        sgr = ";".join(code for code in codes if code)
        if not self.enabled or not sgr:
            return text
        return f"\x1b[{sgr}m{text}\x1b[0m"


# -- addresses --------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host in ("", "0.0.0.0", "::"):
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: loopback if every address it resolves to is
        try:
            infos = socket.getaddrinfo(host, None)
        except (OSError, UnicodeError):
            return False
        return bool(infos) and all(
            ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos
        )


def network_addresses(host: str) -> list[str]:
    """The addresses other machines can reach this one at, for a wildcard ``host``.

    IPv4 addresses of every interface that is up (loopback left out); for ``::`` also
    the global IPv6 ones. Nothing is sent and no process is started.
    """
    if host not in ("", "0.0.0.0", "::"):
        return []
    addresses = _interface_ipv4() or _routed_ipv4()
    if host == "::":
        addresses += _global_ipv6()
    return list(dict.fromkeys(addresses))


def _interface_ipv4() -> list[str]:
    """Linux: each interface's address through ioctl; empty elsewhere or on failure."""
    try:
        import fcntl

        names = [name for _, name in socket.if_nameindex()]
    except (ImportError, OSError):
        return []
    addresses = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for name in names:
            request = struct.pack("256s", name.encode()[:15])
            try:
                flags = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request)
                if not struct.unpack_from("H", flags, 16)[0] & _IFF_UP:
                    continue
                packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
            except OSError:  # no IPv4 address on this interface
                continue
            address = socket.inet_ntoa(packed[20:24])
            if not ipaddress.ip_address(address).is_loopback:
                addresses.append(address)
    return addresses


def _routed_ipv4() -> list[str]:
    """The source address of the default route (a UDP connect sends no packet)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(_ROUTE_PROBE)
            address = str(sock.getsockname()[0])
        except OSError:  # no route: not on any network
            return []
    ip = ipaddress.ip_address(address)
    return [] if ip.is_loopback or ip.is_unspecified else [address]


def _global_ipv6() -> list[str]:
    """Linux: global-scope IPv6 addresses from /proc/net/if_inet6."""
    addresses = []
    with contextlib.suppress(OSError), open("/proc/net/if_inet6") as table:
        for line in table:
            fields = line.split()
            if len(fields) >= 4 and fields[3] == "00":  # scope: global
                addresses.append(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    return addresses


# -- banner -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Banner:
    """What the start-up banner says."""

    version: str
    root: str
    local_url: str | None  # None when bound to one non-loopback address
    network_urls: tuple[str, ...]
    exposed: bool  # reachable from other machines
    workers: str
    reload: str
    # (label, text) lines for modes that change what URLs serve: SPA, base, rules, proxy.
    modes: tuple[tuple[str, str], ...] = ()

    def render(self, style: Style) -> str:
        label_width = 10
        lines = [
            f"{style('sitepeek', BOLD)} {self.version} serving {style(self.root, BOLD)}",
            "",
        ]
        if self.local_url:
            lines.append("  " + "Local:".ljust(label_width) + style(self.local_url, CYAN))
        lines += ["  " + "Network:".ljust(label_width) + style(u, CYAN) for u in self.network_urls]
        if self.exposed and not self.network_urls:
            lines.append("  " + "Network:".ljust(label_width) + "no network interface found")
        if self.exposed:
            warning = "this directory is now reachable from your network."
            lines.append("  " + style("Warning:".ljust(label_width) + warning, YELLOW))
        lines += [
            "  " + "Workers:".ljust(label_width) + self.workers,
            "  " + "Reload:".ljust(label_width) + self.reload,
            *("  " + label.ljust(label_width) + text for label, text in self.modes),
            "",
            style("  Press Ctrl-C to stop.", DIM),
            "",  # the request log starts below a blank line
        ]
        return "\n".join(lines)


def qr_block(url: str | None, stream: TextIO) -> str:
    """A QR code of ``url`` for a phone, or one line saying why there is none."""
    if url is None:
        return (
            "  --qr: the site is only reachable from this machine; "
            "add --host 0.0.0.0 to open it on a phone."
        )
    try:
        import segno
    except ImportError:
        return "  " + QR_HINT
    try:
        codecs.encode("\u2580\u2584\u2588", stream.encoding or "ascii")
    except (UnicodeError, LookupError, AttributeError):
        return "  --qr: this terminal cannot show the block characters of a QR code."
    drawing = io.StringIO()
    # Compact: two modules per character cell (half blocks), light on dark.
    segno.make(url, error="l").terminal(out=drawing, compact=True, border=2)
    return f"  Scan to open {url}\n" + drawing.getvalue().rstrip("\n")


# -- browser ----------------------------------------------------------------------------
def open_browser(url: str, err: TextIO = sys.stderr) -> threading.Thread | None:
    """Open ``url`` in the default browser from a daemon thread, so serving never waits.

    Without a graphical session (and no ``$BROWSER``), Python would start a console
    browser in this very terminal: say so instead. A failure is one line on ``err``.
    """
    if not _graphical_browser_likely():
        write_line(err, f"sitepeek: no graphical browser here; open {url} yourself")
        return None
    thread = threading.Thread(target=_open, args=(url, err), name="sitepeek-open", daemon=True)
    thread.start()
    return thread


def _graphical_browser_likely() -> bool:
    if os.environ.get("BROWSER") or sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _open(url: str, err: TextIO) -> None:
    try:
        opened = webbrowser.open(url)
    except Exception:  # webbrowser raises whatever its launcher raised
        opened = False
    if not opened:
        write_line(err, f"sitepeek: could not open a browser; open {url} yourself")


# -- summary ----------------------------------------------------------------------------
def summary(uptime: float, requests: int | None, reloads: int | None) -> str:
    """The line printed at stop; unknown counts are left out."""
    parts = []
    if requests is not None:
        parts.append(_count(requests, "request") + " served")
    if reloads is not None:
        parts.append(_count(reloads, "reload"))
    detail = ": " + ", ".join(parts) if parts else ""
    return f"Stopped after {duration(uptime)}{detail}."


def human_size(size: int) -> str:
    """Bytes for people, in binary units (the request log and listings alike):
    532 B, 1.2 KiB, 3.4 MiB. Rounded first, so 1_048_525 bytes reads "1.0 MiB",
    never "1024.0 KiB"."""
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in _SIZE_UNITS[:-1]:
        if round(value, 1) < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} {_SIZE_UNITS[-1]}"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"
