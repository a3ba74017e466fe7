"""What the terminal shows about a running server: its URLs, the start-up banner, the
phone instructions for the local CA, and the summary line when it stops."""

from __future__ import annotations

from typing import TextIO

from sitepeek import console
from sitepeek.config import Config
from sitepeek.version import __version__

__all__ = ["banner_modes", "print_banner", "print_summary", "url_for", "url_scheme"]


def url_for(host: str, port: int, scheme: str = "http") -> str:
    """The URL a browser on this machine should open."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}/"


def print_banner(config: Config, port: int, out: TextIO, phone_help: bool = False) -> None:
    """The start-up banner (and QR code), printed once the server is ready.

    ``phone_help``: say how a phone comes to trust the local CA (--https)."""
    root = str(config.root).encode("utf-8", "backslashreplace").decode("utf-8")
    wildcard = config.host in ("", "0.0.0.0", "::")
    scheme = url_scheme(config)
    base = config.base.lstrip("/")  # the site's URL, not a redirect to it
    if wildcard or console.is_loopback(config.host):
        local: str | None = url_for(config.host, port, scheme) + base
        addresses = console.network_addresses(config.host)
        network = tuple(url_for(a, port, scheme) + base for a in addresses)
    else:  # one address of this machine, reachable from the network
        local, network = None, (url_for(config.host, port, scheme) + base,)
    workers: str = config.workers
    if workers == "processes":
        workers += f" ({config.process_count})"
    elif workers == "threads":
        workers += f" ({config.thread_count} threads)"
    banner = console.Banner(
        version=__version__,
        root=root,
        local_url=local,
        network_urls=network,
        exposed=wildcard or local is None,
        workers=workers,
        reload="on, watching for changes" if config.reload else "off",
        modes=banner_modes(config),
    )
    text = banner.render(console.Style(console.color_enabled(out)))
    if phone_help and network:
        text += "\n" + _phone_help(network[0])
    if config.qr:
        text += "\n\n" + console.qr_block(network[0] if network else None, out)
    console.write_line(out, text)


def banner_modes(config: Config) -> tuple[tuple[str, str], ...]:
    """Banner lines for what makes URLs serve other than their file: SPA fallback, base
    path, the site's _redirects/_headers, proxies."""
    modes = []
    if config.spa is not None:
        modes.append(("SPA:", f"missing pages get /{config.spa} (status 200), assets 404"))
    if config.base != "/":
        modes.append(("Base:", f"the site is served under {config.base}"))
    if config.rules:
        found = [name for name in ("_redirects", "_headers") if (config.root / name).is_file()]
        if found:
            modes.append(("Rules:", ", ".join(found) + " (--no-rules to ignore)"))
    for route in config.proxy:
        prefix, _, url = route.partition("=")
        modes.append(("Proxy:", f"{prefix.strip()} -> {url.strip()}"))
    return tuple(modes)


def url_scheme(config: Config) -> str:
    return "https" if config.tls else "http"


def _phone_help(url: str) -> str:
    """How a phone comes to trust sitepeek's local CA (--https on the network)."""
    from sitepeek.site import CA_CERT_PATH

    download = url.replace("https://", "http://", 1).rstrip("/") + CA_CERT_PATH
    return "\n".join(
        (
            "  Phones: to trust this server, download sitepeek's CA from " + download,
            "  (plain HTTP on purpose: the phone does not trust the CA yet), then:",
            "    iOS: Settings > General > VPN & Device Management > install; then",
            "         Settings > General > About > Certificate Trust Settings > turn it on.",
            "    Android: Settings > Security > Encryption & credentials >",
            "         Install a certificate > CA certificate.",
            "",
        )
    )


def print_summary(out: TextIO, uptime_s: float, requests: int | None, reloads: int | None) -> None:
    """One line when the server stops; ``None`` counts are unknown and left out."""
    # On a terminal, write over the "^C" its driver echoed.
    start = "\r" if console.is_terminal(out) else ""
    console.write_line(out, start + console.summary(uptime_s, requests, reloads))
