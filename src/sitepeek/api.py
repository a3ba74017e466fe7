"""sitepeek from Python: serve a site in the background, for tests and scripts.

    import sitepeek

    with sitepeek.Server("dist", spa="index.html") as server:
        urllib.request.urlopen(server.url + "about")

:class:`Server` takes the options of the command line as keyword arguments (the names
of :data:`sitepeek.config.OPTIONS`, validated by the same parsers, failing with the same
one-line messages), and runs ``python -m sitepeek serve ROOT --port 0`` as a
subprocess. Why a subprocess, not a thread:

- it behaves the same whether the caller imported gevent or not, monkey-patched or not:
  the server's worker model (greenlets by default, as on the command line; ``workers=``
  picks another) lives in its own process, and nothing in the caller is patched;
- it is the very program the command line runs, so tests exercise what users run;
- stopping is clean and bounded: SIGTERM, the server's own graceful shutdown, and a kill
  of its process group if that ever took longer than ``stop_timeout``;
- a server that cannot start says so with the command line's own error line.

The caller's process gets one daemon thread per server, which reads the server's output
(the start-up banner gives the URL; the log is kept for :attr:`Server.log` and attached
to every :class:`ServerError`); it ends when the server does.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Collection, Mapping
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO, Any

from sitepeek import config as config_module
from sitepeek.config import (
    ENV_PREFIX,
    LIFELINE_ENV,
    WORKDIR_ENV,
    Config,
    ConfigError,
    Settings,
    from_python,
    resolve,
    serve_arguments,
)
from sitepeek.reloadclient import ReloadWaiter

__all__ = ["OptionError", "Server", "ServerError"]

START_TIMEOUT = 20.0  # seconds for the server to print its URL
STOP_TIMEOUT = 10.0  # seconds for a graceful stop before the kill
RELOAD_TIMEOUT = 10.0  # seconds for a reload message to arrive
LOG_LINES = 10_000  # lines of the server's output kept
# The first URL of the start-up banner ("Local:" or, bound to one address, "Network:").
_URL = re.compile(r"\b(https?://(\[[^\]]+\]|[^\s/:]+):(\d+))/")
_USAGE_STATUS = 2  # the command line's exit status for a bad option or config file


class ServerError(Exception):
    """The server could not start, or stopped badly.

    ``str(error)`` is the one line the command line prints after ``Error:``; ``log`` is
    everything the server wrote, also attached as a note (tracebacks show it).
    """

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log
        if log.strip():
            self.add_note("sitepeek's output:\n" + log.rstrip("\n"))


class OptionError(ServerError, config_module.OptionError):
    """A bad option, root or config file: what the command line answers with a usage
    error (exit status 2). Also a ValueError."""


class Server:
    """A sitepeek server serving ``root`` in a subprocess, started on construction.

    ``options`` are the command line's options by their Python names (``spa``,
    ``clean_urls``, ``header``, ``workers``, ...; see ``sitepeek --help``), taking the
    values a config file takes, plus paths as ``os.PathLike`` and headers as
    ``(name, value)`` pairs. Two differ from the command line: ``port`` is 0 (a free
    port) and ``open`` is off unless given. Nothing else is read unless asked for, so a
    test's server does not change with the directory or shell it runs from:
    ``config_dir`` names a directory whose ``sitepeek.toml`` or ``[tool.sitepeek]`` in
    ``pyproject.toml`` applies, and ``environ`` a mapping whose ``SITEPEEK_*`` variables
    do (pass ``os.environ``), with the command line's precedence: keywords, then
    variables, then the file.

    Raises :class:`OptionError` for a bad option, root or config file, and
    :class:`ServerError` if the server exits or does not print its URL within
    ``start_timeout`` seconds (it is then killed). Use it as a context manager, or call
    :meth:`stop`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        config_dir: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        start_timeout: float = START_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
        **options: Any,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.stop_timeout = stop_timeout
        try:
            given = {name: from_python(name, value) for name, value in options.items()}
        except config_module.OptionError as exc:
            raise OptionError(str(exc)) from None
        given.setdefault("port", 0)
        given.setdefault("open", None)
        self._workdir: str | None = None
        if config_dir is None:
            # A directory with no config file, for the server to start in.
            self._workdir = tempfile.mkdtemp(prefix="sitepeek-server-")
        cwd = Path(self._workdir or config_dir or ".").resolve()
        try:
            variables = {k: v for k, v in (environ or {}).items() if k.startswith(ENV_PREFIX)}
            settings = _settings(given, variables, cwd)
            # A root that is not a directory is left for the server to report.
            config = _config(settings, self.root) if self.root.is_dir() else None
            self._proc = self._spawn(given, variables, cwd)
        except BaseException:
            self._remove_workdir()
            raise
        self._lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self._started = threading.Event()
        self._found: list[re.Match[str]] = []
        assert self._proc.stdout is not None
        self._pump = threading.Thread(
            target=_pump,
            args=(self._proc.stdout, self._lines, self._found, self._started),
            name=f"sitepeek-log-{self._proc.pid}",
            daemon=True,
        )
        self._pump.start()
        self._stopped: int | None = None
        self._stop_lock = threading.Lock()
        # A server nobody stopped ends with the caller's process, or when collected.
        self._finalizer = weakref.finalize(self, _abandon, self._proc, self._workdir)
        self._await_url(start_timeout)
        #: The configuration the server runs with (options, config file, defaults).
        self.config: Config = config or _config(settings, self.root)
        match = self._found[0]
        self.port = int(match.group(3))
        self.url = match.group(1) + self.config.base

    @property
    def pid(self) -> int:
        """The server's process id (with ``workers="processes"``, its supervisor's)."""
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._stopped is None and self._proc.poll() is None

    @property
    def log(self) -> str:
        """What the server wrote so far (banner, request log, errors): its last lines."""
        return "".join(list(self._lines))

    def stop(self, timeout: float | None = None) -> int:
        """Stop the server (SIGTERM, a graceful stop) and return its exit status.

        Idempotent. Raises :class:`ServerError` if the server had to be killed after
        ``timeout`` seconds (default ``stop_timeout``), had exited by itself before, or
        left a process of its group behind.
        """
        with self._stop_lock:
            if self._stopped is not None:
                return self._stopped
            problem = self._terminate(self.stop_timeout if timeout is None else timeout)
            self._stopped = self._proc.returncode
        if problem:
            raise ServerError(problem, self.log)
        return self._stopped

    def wait_for_reload(
        self, timeout: float = RELOAD_TIMEOUT, paths: Collection[str] = ()
    ) -> ReloadWaiter:
        """Connect to the reload socket as a browser tab does, ready to wait for the next
        reload message; connect before the change, so none can slip by unseen::

            with server.wait_for_reload() as reload:
                (root / "index.html").write_text("...")
            assert reload.paths == ("index.html",)

        Leaving the block waits (up to ``timeout`` seconds; TimeoutError after that);
        ``waiter.wait()`` waits explicitly and returns the paths. With ``paths`` (relative
        to the root), only a reload that reports all of them counts.
        """
        if not self.config.reload:
            raise ServerError("live reload is off (reload=False): no reload will come")
        match = self._found[0]
        return ReloadWaiter(match.group(2), self.port, timeout, paths)

    def reload(self, *paths: str, timeout: float = RELOAD_TIMEOUT) -> tuple[str, ...]:
        """Have the server count ``paths`` (relative to the root; default ``index.html``)
        as changed, as an edit would, and return once it has told its tabs to reload: the
        paths it reported. Open pages showing them reload (a stylesheet is swapped in
        place, as on a save). The files themselves are left as they are: the server
        reloads only for real changes of bytes, so it is asked over its reload socket.
        """
        names = [PurePosixPath(path).as_posix() for path in paths or ("index.html",)]
        files = [self.root / name for name in names]
        for file in files:
            if not file.resolve().is_relative_to(self.root):
                raise ValueError(f"{file} is outside the served root")
            if not file.is_file():
                raise FileNotFoundError(f"{file} is not a file to reload")
        with self.wait_for_reload(timeout, names) as waiter:
            waiter.touch(names)
        assert waiter.paths is not None
        return waiter.paths

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<sitepeek.Server {self.url} serving {self.root} ({state})>"

    # -- start and stop ------------------------------------------------------------
    def _spawn(
        self, given: Mapping[str, Any], variables: Mapping[str, str], cwd: Path
    ) -> subprocess.Popen[str]:
        args, overrides = serve_arguments(given)
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.update(variables)
        env.update(overrides, PYTHONUNBUFFERED="1", PYTHONPATH=_python_path(env))
        # Its standard input is a pipe only this process writes to (never, in fact):
        # when this process ends, however it ends, the server sees end of file and
        # stops, so no server outlives a test run that was killed.
        env[LIFELINE_ENV] = "stdin"
        if self._workdir is not None:
            env[WORKDIR_ENV] = self._workdir
        return subprocess.Popen(
            [sys.executable, "-m", "sitepeek", "serve", str(self.root), *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,  # its own process group: stopped as one
        )

    def _await_url(self, timeout: float) -> None:
        started = self._started.wait(timeout)
        if started and self._found:
            return
        if not started:
            self._terminate(0)
            self._finalizer.detach()
            raise ServerError(f"sitepeek did not start within {timeout:g} s", self.log)
        status = self._proc.wait()
        self._terminate(0)
        self._finalizer.detach()
        errors = [line[7:].strip() for line in self._lines if line.startswith("Error: ")]
        message = errors[-1] if errors else f"sitepeek exited with status {status}"
        error = OptionError if status == _USAGE_STATUS else ServerError
        raise error(message, self.log)

    def _terminate(self, timeout: float) -> str | None:
        """SIGTERM, wait, kill the group if need be; what went wrong, or None."""
        problem = None
        status = self._proc.poll()
        if status is not None:
            problem = f"sitepeek had exited by itself with status {status}"
        else:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(self._proc.pid)
                self._proc.wait()
                problem = f"sitepeek did not stop within {timeout:g} s of SIGTERM: killed"
        if _kill_group(self._proc.pid) and problem is None:
            problem = "sitepeek left a process of its group running: killed"
        if self._proc.stdin is not None:
            self._proc.stdin.close()  # (the lifeline: the server has ended anyway)
        self._pump.join(self.stop_timeout)
        if not self._pump.is_alive():  # else closing would wait for its read to end
            assert self._proc.stdout is not None
            self._proc.stdout.close()
        self._finalizer.detach()
        self._remove_workdir()
        return problem

    def _remove_workdir(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)


# Shown as sitepeek.Server, as users import them (sitepeek.api is where they live).
for _public in (Server, ServerError, OptionError):
    _public.__module__ = "sitepeek"


def _settings(given: Mapping[str, Any], variables: Mapping[str, str], cwd: Path) -> Settings:
    """Every option's value, resolved as the command line does when started in ``cwd``."""
    try:
        return resolve(given, environ=variables, directory=cwd)
    except ConfigError as exc:
        raise OptionError(str(exc)) from None


def _config(settings: Settings, root: Path) -> Config:
    try:
        return settings.config(root)
    except ValueError as exc:
        raise OptionError(str(exc)) from None


def _python_path(env: Mapping[str, str]) -> str:
    """PYTHONPATH for the server: this very sitepeek first, unless it is installed."""
    here = Path(__file__).resolve().parent.parent
    entries = [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry]
    if here.name not in ("site-packages", "dist-packages") and str(here) not in entries:
        entries.insert(0, str(here))
    return os.pathsep.join(entries)


def _pump(
    stream: IO[str],
    lines: collections.deque[str],
    found: list[re.Match[str]],
    started: threading.Event,
) -> None:
    """Read the server's output to its end; signal once the URL (or the end) is seen."""
    with contextlib.suppress(OSError, ValueError):  # the pipe closed under us
        for line in stream:
            lines.append(line)
            if not found and (match := _URL.search(line)):
                found.append(match)
                started.set()
    started.set()


def _kill_group(pid: int) -> bool:
    """SIGKILL what still runs of the process group ``pid`` leads; whether anything did.

    Zombies are not counted: one whose parent has gone waits for init to reap it (and
    some containers' init never does), but it runs no more.
    """
    members = _group_members(pid)
    if members is not None and not members:
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _group_members(pgid: int) -> list[int] | None:
    """The processes of group ``pgid`` that are not zombies (Linux /proc; else None)."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _abandon(proc: subprocess.Popen[str], workdir: str | None) -> None:
    """A Server that was never stopped: stop its process (group) without ceremony."""
    if proc.stdin is not None:
        proc.stdin.close()  # (its lifeline ends: it stops by itself too)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT)
    _kill_group(proc.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(1)
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)
