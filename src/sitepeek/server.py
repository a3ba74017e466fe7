"""Lifecycle: bind the listening socket, print the banner, run the chosen worker model."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import glob
import os
import resource
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from sitepeek import console, workers
from sitepeek.banner import print_banner, print_summary, url_for, url_scheme
from sitepeek.changes import (
    BuildStarted,
    ChangeEvent,
    ChangeFeed,
    Outcome,
    Pending,
    Settled,
    wall_ms,
)
from sitepeek.concurrency import Io
from sitepeek.config import LIFELINE_ENV, WORKDIR_ENV, Config
from sitepeek.handler import Handler
from sitepeek.workers.base import ConnectionHandler, stop_signals

if TYPE_CHECKING:
    from sitepeek.build import BuildRunner
    from sitepeek.commands import Companions
    from sitepeek.reload import ChangeBatch, Watcher

# A busy port moves on to the next one; this many are tried before giving up.
PORT_ATTEMPTS = 20
# How long a build's reload line waits for the worker processes to say what their tabs did
# (it is printed as soon as all have): a worker slowed down by a busy machine is waited
# for, one that died or dropped its report is not waited for long.
LINE_WAIT = 2.0
BACKLOG = 1024


class StartupError(Exception):
    """The server cannot start; the message is shown to the user as is."""


def serve(config: Config, out: TextIO | None = None) -> None:
    """Bind, announce, and serve until SIGINT/SIGTERM.

    The banner, notices, reload lines and the summary go to ``out``: by default standard
    output, but standard error with ``--log-format json``, so that standard output holds
    nothing but the request log's JSON lines (``sitepeek --log-format json | jq``).
    """
    out = console_stream(config) if out is None else out
    if os.environ.pop(LIFELINE_ENV, "") == "stdin":
        _stop_when_stdin_ends()
    workdir = os.environ.pop(WORKDIR_ENV, "")
    _raise_fd_limit()
    config, ca_cert = _local_certificate(config, out)
    listener = bind(config)
    port = listener.getsockname()[1]
    if config.port and port != config.port:
        print(f"Port {config.port} is in use, using {port} instead.", file=out)
    model_class = workers.load(config.workers)
    feed = ChangeFeed()
    # For the summary: the handlers of this process (none here with --workers processes:
    # they live in the workers, which report their counts to the model).
    handlers: list[Handler] = []

    notices = Notices()

    def make_handler(io: Io) -> ConnectionHandler:
        handler = Handler(config, io, feed, notices.claim, ca_cert)
        handlers.append(handler)
        return handler

    model = model_class(config, make_handler, feed)
    reporters = config.process_count if config.workers == "processes" else 1
    versions = SiteVersions(feed, out, reporters)
    feed.on_touched(lambda event: versions.settle(event.paths))  # (sitepeek.Server.reload)
    runner, companions = _commands(config, feed, out, versions)
    watchers = _start_watchers(config, feed, out, runner, versions)
    started = time.monotonic()

    def ready() -> None:
        nonlocal started
        started = time.monotonic()
        print_banner(config, port, out, phone_help=ca_cert is not None)
        for commands in (companions, runner):
            if commands is not None:
                commands.start()
        if config.open is not None:
            _open_browser(config, config.open, port)

    try:
        model.run(listener, ready=ready)
    finally:
        # Stopping is under way: a second Ctrl-C or SIGTERM must not turn a clean
        # exit into a kill (Python restores default handlers while it finalizes).
        for signum in stop_signals():
            signal.signal(signum, signal.SIG_IGN)
        _stop_commands(runner, companions)
        for watcher in watchers:
            watcher.stop()
        notices.close()
        if workdir:
            with contextlib.suppress(OSError):
                os.rmdir(workdir)  # (only ever empty: sitepeek.Server made it so)
    requests = _requests_served(handlers, model)
    reloads = versions.count if config.reload else None
    print_summary(out, time.monotonic() - started, requests, reloads)


class Notices:
    """Which notices were reported, agreed by every process of this server.

    The keys are lines of an unlinked temporary file, which worker processes share by
    inheriting it; a POSIX record lock orders the processes, a lock the threads of one.
    Nothing is left on disk, however sitepeek ends (a directory of marker files was
    left behind by every sitepeek killed with SIGKILL or SIGHUP).
    """

    def __init__(self) -> None:
        with tempfile.TemporaryFile() as unlinked:  # (O_TMPFILE where there is one)
            self._fd = os.dup(unlinked.fileno())
        self._lock = threading.Lock()

    def claim(self, key: str) -> bool:
        """Whether this is the first claim of ``key`` (a line) by any process."""
        line = key.encode("utf-8", "surrogateescape").replace(b"\n", b" ")
        fd = self._fd
        with self._lock:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX)
                try:
                    size = os.fstat(fd).st_size
                    if line in os.pread(fd, size, 0).split(b"\n"):
                        return False
                    os.pwrite(fd, line + b"\n", size)
                finally:
                    fcntl.lockf(fd, fcntl.LOCK_UN)
            except OSError:
                pass  # better a repeated notice than a lost one
        return True

    def close(self) -> None:
        os.close(self._fd)


def _stop_when_stdin_ends() -> None:
    """Stop gracefully (as on SIGTERM) once standard input reaches end of file; the
    commands and workers started later get /dev/null as their standard input."""
    lifeline = os.dup(0)  # (close-on-exec: no child inherits the parent's pipe)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)

    def watch() -> None:
        try:
            while os.read(lifeline, 4096):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="sitepeek-lifeline", daemon=True).start()


def _open_browser(config: Config, where: str, port: int) -> None:
    """Open ``where`` (a bare --open means the site's URL, under --base) in a browser."""
    where = config.base if where == "/" else where
    path = urllib.parse.quote(where.lstrip("/"), safe="/?#&=%:@!$'()*+,;~")
    console.open_browser(url_for(config.host, port, url_scheme(config)) + path)


def _requests_served(handlers: list[Handler], model: object) -> int | None:
    """Requests answered: by this process's handlers, or with --workers processes (the
    handlers live in the workers) as the model added up the workers' reports."""
    if handlers:
        return sum(handler.requests for handler in handlers)
    served = getattr(model, "requests_served", None)
    return served if isinstance(served, int) else None


def console_stream(config: Config) -> TextIO:
    """Where the messages for people go: stdout, or stderr when stdout is for tools."""
    return sys.stderr if config.log_format == "json" else sys.stdout


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
            console.write_line(self._out, f"reload · {summary} · {total.summary()}")


class SiteVersions:
    """Every real change of the site becomes its next version: one Settled event for the
    tabs and one terminal line (:class:`ReloadLines`), whether the watcher saw a burst
    of edits or a ``--build`` ended. Thread-safe: the watcher's debounce thread and the
    build runner's thread both publish."""

    def __init__(self, feed: ChangeFeed, out: TextIO, reporters: int) -> None:
        self._feed = feed
        self._lines = ReloadLines(out, reporters)
        feed.on_outcome(self._lines.add)
        self._lock = threading.Lock()
        self._version = 0
        self._began = 0.0

    @property
    def count(self) -> int:
        """Site versions published so far: the reloads the tabs were sent."""
        return self._version

    def begin(self) -> float:
        """A build (a burst of changes, or a --build) began; its start in wall ms."""
        with self._lock:
            self._began = wall_ms()
            return self._began

    def settle(self, paths: tuple[str, ...]) -> None:
        """The build is over and ``paths`` really changed (none: only open the gate)."""
        from sitepeek.reload import ChangeBatch

        with self._lock:
            if paths:
                self._version += 1  # (also the number of reloads, for the summary)
                self._lines.build(self._version, ChangeBatch(paths).summary())
            event = Settled(paths, self._version, self._began, wall_ms())
        self._feed.emit(event)


def _start_watchers(
    config: Config,
    feed: ChangeFeed,
    out: TextIO,
    runner: BuildRunner | None,
    versions: SiteVersions,
) -> list[Watcher]:
    """The site's watcher (with --reload) and the build's sources watcher (with --build)."""
    watchers: list[Watcher] = []
    try:
        if config.reload:
            watchers.append(_start_watcher(config, feed, runner, versions))
        if runner is not None:
            watchers.append(_start_sources_watcher(config, runner))
    except BaseException:
        for watcher in watchers:
            watcher.stop()
        raise
    return watchers


def _start_watcher(
    config: Config, feed: ChangeFeed, runner: BuildRunner | None, versions: SiteVersions
) -> Watcher:
    """Watch the root (and --watch paths); events go to every worker through ``feed``.

    With --build the runner sees each burst first: what a build writes becomes one
    site version when the build ends, and the --watch paths are the build's sources,
    not the site.
    """
    from sitepeek.reload import IgnoreFilter, Watcher

    # Both callbacks run in the watcher's debounce thread, one after the other.
    def started() -> None:
        if runner is None or not runner.absorb_start():
            feed.emit(Pending(versions.begin()))

    def settled(batch: ChangeBatch) -> None:
        paths = batch.paths if runner is None else runner.absorb_settled(batch.paths)
        if paths is None:
            return  # part of a build: the runner publishes it when the build ends
        # A build of identical rewrites (or of nothing that is served) still ends: the
        # gate opens; only a real change is a new version of the site, and a reload.
        versions.settle(paths)

    watcher = Watcher(
        str(config.root),
        extra_paths=[] if runner is not None else [str(path) for path in config.watch],
        ignore=IgnoreFilter(extra=config.ignore),
        delay=config.reload_delay,
        poll=config.poll,
        on_start=started,
        on_settle=settled,
    )
    _start(watcher)
    if runner is not None:
        runner.set_polling(watcher.polling)
    return watcher


def _start(watcher: Watcher) -> None:
    from sitepeek.reload import WatchError

    try:
        watcher.start()
    except WatchError as exc:
        raise StartupError(str(exc)) from None


def _commands(
    config: Config, feed: ChangeFeed, out: TextIO, versions: SiteVersions
) -> tuple[BuildRunner | None, Companions | None]:
    """The --build runner and the --run companions, not started yet (lazy import: a
    server without them starts without loading any of it)."""
    if config.build is None and not config.run:
        return None, None
    from sitepeek.build import BuildRunner
    from sitepeek.commands import Companions, Terminal

    terminal = Terminal(out)
    cwd = Path.cwd()
    runner = companions = None
    if config.build is not None:

        def emit(event: ChangeEvent) -> None:
            if isinstance(event, BuildStarted):
                versions.begin()  # (the build's start is its site version's start)
            feed.emit(event)

        from sitepeek.reload import FENCE_PREFIX
        from sitepeek.snapshot import Snapshot

        fence_dir = config.root if config.reload else None
        snapshot = Snapshot(config.root, skip=lambda name: name.startswith(FENCE_PREFIX))
        runner = BuildRunner(
            config.build, terminal, emit, cwd, fence_dir, versions.settle, snapshot
        )
    if config.run:
        companions = Companions(config.run, terminal, feed.emit, cwd)
    return runner, companions


def _start_sources_watcher(config: Config, runner: BuildRunner) -> Watcher:
    """Watch the build's sources: the --watch paths, else the current directory minus
    the served one (a build writing there must not trigger itself), .git/,
    node_modules/ and the --ignore globs."""
    from sitepeek.reload import IgnoreFilter, Watcher

    cwd = Path.cwd().resolve()
    ignore = list(config.ignore)
    if not config.watch:
        root = config.root.resolve()
        if root == cwd or root in cwd.parents:
            raise StartupError(
                "--build: the served directory holds the current directory, so the build "
                "would trigger itself; name its sources with --watch"
            )
        if cwd in root.parents:
            ignore.append("/" + glob.escape(root.relative_to(cwd).as_posix()) + "/")
    watcher = Watcher(
        str(cwd),
        extra_paths=[str(path) for path in config.watch],
        watch_root=not config.watch,
        ignore=IgnoreFilter(extra=ignore),
        delay=config.reload_delay,
        poll=config.poll,
        on_start=lambda: None,
        on_settle=lambda batch: runner.request(batch.paths),
    )
    _start(watcher)
    return watcher


def _stop_commands(runner: BuildRunner | None, companions: Companions | None) -> None:
    """Stop a running build and the companions together (each may take its grace)."""
    stoppers = [part.stop for part in (runner, companions) if part is not None]
    threads = [threading.Thread(target=stop, daemon=True) for stop in stoppers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _local_certificate(config: Config, out: TextIO) -> tuple[Config, bytes | None]:
    """--https without --cert: a leaf from the local CA for every name the server is
    reached by, and the CA's certificate; otherwise ``config`` as it is and None."""
    if not config.https or config.cert is not None:
        return config, None
    from sitepeek import certs

    extra = list(console.network_addresses(config.host))
    if config.host not in ("", "0.0.0.0", "::"):
        extra.append(config.host)
    extra += config.allowed_host  # ("*.dev.test" is a wildcard name in a certificate too)
    try:
        leaf = certs.issue_leaf(certs.local_names(extra))
    except certs.CertError as exc:
        raise StartupError(str(exc)) from None
    if leaf.authority.created:
        print(
            f"Created sitepeek's local CA in {leaf.authority.directory}; "
            "run `sitepeek https trust` once to make this machine's browsers trust it.",
            file=out,
        )
    replaced = dataclasses.replace(config, cert=leaf.cert_path, key=leaf.key_path)
    return replaced, leaf.authority.pem


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
