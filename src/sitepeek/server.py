"""Lifecycle: bind the listening socket, print the banner, run the chosen worker model."""

from __future__ import annotations

import contextlib
import errno
import resource
import socket
import sys
from typing import TYPE_CHECKING, TextIO

from sitepeek import __version__, workers
from sitepeek.changes import ChangeFeed, Pending, Settled
from sitepeek.config import Config
from sitepeek.handler import Handler
from sitepeek.workers.base import ConnectionHandler, Io

if TYPE_CHECKING:
    from sitepeek.reload import ChangeBatch, Watcher

# A busy port moves on to the next one; this many are tried before giving up.
PORT_ATTEMPTS = 20
BACKLOG = 1024


class StartupError(Exception):
    """The server cannot start; the message is shown to the user as is."""


def serve(config: Config, out: TextIO = sys.stdout) -> None:
    """Bind, announce, and serve until SIGINT/SIGTERM."""
    _raise_fd_limit()
    listener = bind(config)
    port = listener.getsockname()[1]
    if config.port and port != config.port:
        print(f"Port {config.port} is in use, using {port} instead.", file=out)
    model_class = workers.load(config.workers)
    feed = ChangeFeed()

    def make_handler(io: Io) -> ConnectionHandler:
        return Handler(config, io, feed)

    model = model_class(config, make_handler, feed)
    watcher = _start_watcher(config, feed, out) if config.reload else None
    try:
        model.run(listener, ready=lambda: print_banner(config, port, out))
    finally:
        if watcher is not None:
            watcher.stop()


def _start_watcher(config: Config, feed: ChangeFeed, out: TextIO) -> Watcher:
    """Watch the root (and --watch paths); events go to every worker through ``feed``."""
    from sitepeek.reload import IgnoreFilter, Watcher, WatchError

    def settled(batch: ChangeBatch) -> None:
        print(f"reload · {batch.summary()}", file=out, flush=True)
        feed.emit(Settled(batch.paths))

    watcher = Watcher(
        str(config.root),
        extra_paths=[str(path) for path in config.watch],
        ignore=IgnoreFilter(extra=config.ignore),
        delay=config.reload_delay,
        poll=config.poll,
        on_start=lambda: feed.emit(Pending()),
        on_settle=settled,
    )
    try:
        watcher.start()
    except WatchError as exc:
        raise StartupError(str(exc)) from None
    return watcher


def _raise_fd_limit() -> None:
    """Every connection is a descriptor: allow as many as the hard limit permits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def bind(config: Config) -> socket.socket:
    """A listening socket on the configured host and port (or the next free port)."""
    family, address = _resolve_host(config.host)
    if config.port == 0 or config.strict_port:
        ports = [config.port]
    else:
        ports = list(range(config.port, min(config.port + PORT_ATTEMPTS, 65536)))
    for port in ports:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # Restarting on the same port must not fail on TIME_WAIT leftovers.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and address in ("::", ""):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((address, port))
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE and port != ports[-1]:
                continue
            raise StartupError(_bind_error(config, port, ports, exc)) from None
        return sock
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover


def _resolve_host(host: str) -> tuple[socket.AddressFamily, str]:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise StartupError(f"cannot use host {host!r}: {exc}") from None
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0])


def _bind_error(config: Config, port: int, ports: list[int], exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        if len(ports) == 1:
            hint = "" if config.strict_port is False else " (--strict-port is set)"
            return f"port {port} is already in use{hint}"
        return f"ports {ports[0]}-{ports[-1]} are all in use"
    if exc.errno == errno.EACCES:
        return f"permission denied to listen on port {port} (ports below 1024 need root)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {config.host}: no such address on this machine"
    return f"cannot listen on {config.host}:{port}: {exc.strerror}"


def url_for(host: str, port: int) -> str:
    """The URL a browser on this machine should open."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def print_banner(config: Config, port: int, out: TextIO) -> None:
    root = str(config.root).encode("utf-8", "backslashreplace").decode("utf-8")
    lines = [
        f"sitepeek {__version__} serving {root}",
        f"  Local:   {url_for(config.host, port)}",
        f"  Workers: {config.workers}"
        + (f" ({config.process_count})" if config.workers == "processes" else ""),
        "  Reload:  " + ("on, watching for changes" if config.reload else "off"),
        "  Press Ctrl-C to stop.",
    ]
    print("\n".join(lines), file=out, flush=True)
