"""Lifecycle: bind the listening socket, print the banner, run the chosen worker model."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, TextIO

from sitepeek import __version__, console, workers
from sitepeek.changes import ChangeEvent, ChangeFeed, Outcome, Pending, Settled, wall_ms
from sitepeek.config import Config
from sitepeek.handler import Handler
from sitepeek.workers.base import ConnectionHandler, Io

if TYPE_CHECKING:
    from sitepeek.reload import ChangeBatch, Watcher

# A busy port moves on to the next one; this many are tried before giving up.
PORT_ATTEMPTS = 20
# How long a build's reload line waits for the worker processes to say what their tabs did.
LINE_WAIT = 0.2
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
    # For the summary: the handlers of this process (none here with --workers processes:
    # they live in the workers) and the reloads the watcher announced.
    handlers: list[Handler] = []
    reloads = 0

    def claim(key: str) -> bool:
        """First across every process of this server (O_EXCL is atomic)?"""
        try:
            os.close(os.open(os.path.join(notices, key), os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return False
        except OSError:
            return True  # better a repeated notice than a lost one
        return True

    def make_handler(io: Io) -> ConnectionHandler:
        handler = Handler(config, io, feed, claim)
        handlers.append(handler)
        return handler

    def count_reload(event: ChangeEvent) -> None:
        nonlocal reloads
        if isinstance(event, Settled) and event.paths:
            reloads += 1

    feed.subscribe(count_reload)
    model = model_class(config, make_handler, feed)
    reporters = config.process_count if config.workers == "processes" else 1
    watcher = _start_watcher(config, feed, out, reporters) if config.reload else None
    started = time.monotonic()

    def ready() -> None:
        nonlocal started
        started = time.monotonic()
        print_banner(config, port, out)
        if config.open is not None:
            path = urllib.parse.quote(config.open.lstrip("/"), safe="/?#&=%:@!$'()*+,;~")
            console.open_browser(url_for(config.host, port) + path)

    # Where worker processes agree on what was already reported (see ``claim``).
    notices = tempfile.mkdtemp(prefix="sitepeek-notices-")
    try:
        model.run(listener, ready=ready)
    finally:
        # Stopping is under way: a second Ctrl-C or SIGTERM must not turn a clean
        # exit into a kill (Python restores default handlers while it finalizes).
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        if watcher is not None:
            watcher.stop()
        shutil.rmtree(notices, ignore_errors=True)
    requests = sum(handler.requests for handler in handlers) if handlers else None
    print_summary(out, time.monotonic() - started, requests, reloads if config.reload else None)


class ReloadLines:
    """One terminal line per build: the files it changed and what the tabs did.

    Every process's broadcaster reports what its tabs did (``add``); the line is printed
    once all ``reporters`` have, or ``wait`` seconds after the build ended, whichever
    comes first. Thread-safe: reports come from the workers' contexts.
    """

    def __init__(self, out: TextIO, reporters: int, wait: float = LINE_WAIT) -> None:
        self._out = out
        self._reporters = reporters
        self._wait = wait
        self._lock = threading.Lock()
        # version -> (files summary, outcome so far, reports so far)
        self._open: dict[int, tuple[str, Outcome, int]] = {}

    def build(self, version: int, summary: str) -> None:
        with self._lock:
            self._open[version] = (summary, Outcome(version), 0)
        timer = threading.Timer(self._wait, self._flush, (version,))
        timer.daemon = True
        timer.start()

    def add(self, outcome: Outcome) -> None:
        with self._lock:
            entry = self._open.get(outcome.version)
            if entry is None:
                return  # already printed
            summary, total, reports = entry
            self._open[outcome.version] = (summary, total + outcome, reports + 1)
            complete = reports + 1 >= self._reporters
        if complete:
            self._flush(outcome.version)

    def _flush(self, version: int) -> None:
        with self._lock:
            entry = self._open.pop(version, None)
        if entry is not None:
            summary, total, _ = entry
            print(f"reload · {summary} · {total.summary()}", file=self._out, flush=True)


def _start_watcher(config: Config, feed: ChangeFeed, out: TextIO, reporters: int) -> Watcher:
    """Watch the root (and --watch paths); events go to every worker through ``feed``."""
    from sitepeek.reload import IgnoreFilter, Watcher, WatchError

    lines = ReloadLines(out, reporters)
    feed.on_outcome(lines.add)

    # Both callbacks run in the watcher's debounce thread, one after the other.
    version = 0
    began = 0.0

    def started() -> None:
        nonlocal began
        began = wall_ms()
        feed.emit(Pending(began))

    def settled(batch: ChangeBatch) -> None:
        # A build of identical rewrites (or of nothing that is served) still ends: the
        # gate opens; only a real change is a new version of the site, and a reload.
        nonlocal version
        if batch.paths:
            version += 1
            lines.build(version, batch.summary())
        feed.emit(Settled(batch.paths, version, began, wall_ms()))

    watcher = Watcher(
        str(config.root),
        extra_paths=[str(path) for path in config.watch],
        ignore=IgnoreFilter(extra=config.ignore),
        delay=config.reload_delay,
        poll=config.poll,
        on_start=started,
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
    """The start-up banner (and QR code), printed once the server is ready."""
    root = str(config.root).encode("utf-8", "backslashreplace").decode("utf-8")
    wildcard = config.host in ("", "0.0.0.0", "::")
    if wildcard or console.is_loopback(config.host):
        local: str | None = url_for(config.host, port)
        network = tuple(url_for(a, port) for a in console.network_addresses(config.host))
    else:  # one address of this machine, reachable from the network
        local, network = None, (url_for(config.host, port),)
    workers: str = config.workers
    if workers == "processes":
        workers += f" ({config.process_count})"
    banner = console.Banner(
        version=__version__,
        root=root,
        local_url=local,
        network_urls=network,
        exposed=wildcard or local is None,
        workers=workers,
        reload="on, watching for changes" if config.reload else "off",
    )
    text = banner.render(console.Style(console.color_enabled(out)))
    if config.qr:
        text += "\n\n" + console.qr_block(network[0] if network else None, out)
    print(text, file=out, flush=True)


def print_summary(out: TextIO, uptime_s: float, requests: int | None, reloads: int | None) -> None:
    """One line when the server stops; ``None`` counts are unknown and left out."""
    # On a terminal, write over the "^C" its driver echoed.
    start = "\r" if console.is_terminal(out) else ""
    print(start + console.summary(uptime_s, requests, reloads), file=out, flush=True)
