"""The one configuration object that flows from the CLI through the server, and the
table of options it is built from.

Every option is declared once, in :data:`OPTIONS`: its name, the kind of value it takes
(which parses and validates it), its default and its help. ``cli`` turns the table into
click options; this module reads the same names from ``SITEPEEK_*`` environment
variables and from ``sitepeek.toml`` or ``[tool.sitepeek]`` in ``pyproject.toml``, and
says where each effective value came from. Precedence: command line > environment >
config file > default.

Standard library only. Why one module of this size: the options table is the point
(one declaration per option); splitting it would spell options in two places again.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from sitepeek.http11 import FRAMING_FIELDS, TOKEN
from sitepeek.resolver import normalise_base
from sitepeek.routes import parse_route

WorkerName = Literal["greenlets", "threads", "processes"]
WORKER_NAMES: tuple[str, ...] = get_args(WorkerName)
LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)

ENV_PREFIX = "SITEPEEK_"
# Set by sitepeek.Server to "stdin": the parent holds the write end of the server's
# standard input, so its end of file means the parent is gone (SIGKILL included) and
# the server must stop too. Not a SITEPEEK_ variable: those are options.
LIFELINE_ENV = "_SITEPEEK_LIFELINE"
# Set by sitepeek.Server to the empty directory it made for the server to start in (so
# that no config file applies): the server removes it when it stops, also when its
# caller was killed and could not.
WORKDIR_ENV = "_SITEPEEK_WORKDIR"
PROJECT_FILE = "sitepeek.toml"
PYPROJECT_FILE = "pyproject.toml"
PYPROJECT_LABEL = "pyproject.toml [tool.sitepeek]"
DEFAULT_SOURCE = "default"
COMMAND_LINE_SOURCE = "command line"
# The default pool of the threads model: a thread is busy only while it reads a
# request or writes an answer (idle connections wait in the selector), so a few per
# core keep the CPUs fed while some block on slow clients or large files.
THREADS_PER_CPU = 8


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the server needs to know; validated on construction."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 8000
    strict_port: bool = False
    workers: WorkerName = "greenlets"
    processes: int = 0  # 0: one per CPU
    threads: int = 0  # worker threads of the threads model; 0: THREADS_PER_CPU per CPU
    max_connections: int = 1000
    # Seconds an idle keep-alive connection is kept open.
    keepalive_timeout: float = 5.0
    # Seconds a client has to send a complete request head once it started one.
    header_timeout: float = 10.0
    # Seconds a blocked write may wait for the client to read.
    send_timeout: float = 30.0
    # Seconds in-flight responses get to finish on shutdown.
    shutdown_grace: float = 0.5
    # Negotiated gzip (brotli, zstd with the extras) for text types.
    compress: bool = True
    # Live reload: watch the root (and ``watch``), inject the client into HTML.
    reload: bool = True
    reload_delay: float = 0.03  # quiet period that ends a burst of changes
    watch: tuple[Path, ...] = ()
    ignore: tuple[str, ...] = ()
    poll: bool = False
    # --build: a command run at start and on source changes; --run: companion commands.
    build: str | None = None
    run: tuple[str, ...] = ()
    # Production-like behaviour (issue "preview what production will serve").
    spa: str | None = None  # the SPA fallback file, relative to the root
    clean_urls: bool = True
    listing: bool = True
    rules: bool = True  # _redirects and _headers
    base: str = "/"
    cors: bool = False
    header: tuple[tuple[str, str], ...] = ()
    proxy: tuple[str, ...] = ()
    allowed_host: tuple[str, ...] = ()
    # URL path to open in the default browser once serving; None: don't.
    open: str | None = None
    # Print a QR code of the network URL under the banner.
    qr: bool = False
    # HTTPS: with a certificate from sitepeek's local CA (``https``), or the given
    # certificate chain and key (``cert``, ``key``; they imply HTTPS).
    https: bool = False
    cert: Path | None = None
    key: Path | None = None
    # Request log: errors (status >= 500) only, and the line format.
    quiet: bool = False
    log_format: LogFormat = "text"

    def __post_init__(self) -> None:
        if not self.root.is_dir():
            raise ValueError(f"{self.root} is not a directory")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is out of range 0-65535")
        if self.workers not in WORKER_NAMES:
            raise ValueError(f"unknown worker model {self.workers!r}")
        if self.processes < 0:
            raise ValueError("processes must be 0 (one per CPU) or more")
        if self.threads < 0:
            raise ValueError(f"threads must be 0 ({THREADS_PER_CPU} per CPU) or more")
        if self.reload_delay < 0:
            raise ValueError("reload delay must not be negative")
        for path in self.watch:
            if not path.exists():
                raise ValueError(f"watched path {path} does not exist")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.open is not None and not self.open.startswith("/"):
            raise ValueError(f"--open path {self.open!r} must start with /")
        if self.build is not None and not self.build.strip():
            raise ValueError("the --build command is empty")
        if any(not command.strip() for command in self.run):
            raise ValueError("a --run command is empty")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"unknown log format {self.log_format!r}")
        if self.spa is not None:
            _check_spa_fallback(self.root, self.spa)
        if (self.cert is None) != (self.key is None):
            raise ValueError("--cert and --key go together: give both, or use --https")

    @property
    def tls(self) -> bool:
        """Served over TLS (https:// URLs)."""
        return self.https or self.cert is not None

    @property
    def process_count(self) -> int:
        return self.processes or os.cpu_count() or 1

    @property
    def thread_count(self) -> int:
        return self.threads or THREADS_PER_CPU * (os.cpu_count() or 1)


def _check_spa_fallback(root: Path, name: str) -> None:
    """The --spa fallback must be a file of the site. ``sitepeek serve --spa dist`` (the
    ``serve -s dist`` habit) takes ``dist`` as the fallback FILE: say so, not serve the
    current directory with a fallback that can never be found."""
    path = root / name
    if path.is_file():
        return
    if path.is_dir():
        raise ValueError(
            f"--spa {name}: {path} is a directory, but --spa takes the fallback FILE "
            f"(default index.html); to serve {name} as a single-page app, run: "
            f"sitepeek serve {name} --spa"
        )
    raise ValueError(f"--spa {name}: the fallback file {path} does not exist")


# -- kinds of values: parse text (command line, environment) and TOML values -----------
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class Kind:
    """How the values of one option are parsed, validated and written back.

    ``parse`` takes text (a command-line argument or an environment variable) and
    ``from_toml`` a value from a config file; both raise ValueError with a message that
    reads well after "Invalid value for '--port': ", "sitepeek.toml: key 'port': " or
    "environment variable SITEPEEK_PORT: ".
    """

    metavar = "TEXT"
    expected = "a string"

    def parse(self, text: str) -> Any:
        raise NotImplementedError

    def from_env(self, text: str) -> Any:
        return self.parse(text)

    def from_toml(self, value: object) -> Any:
        if isinstance(value, str):
            return self.parse(value)
        raise ValueError(f"expected {self.expected}, got {_toml_type(value)}")

    def to_toml(self, value: Any) -> str:
        return json.dumps(str(value), ensure_ascii=False)

    def to_text(self, value: Any) -> str:
        """A parsed value as command-line text: ``parse(to_text(v)) == v``."""
        return str(value)


@dataclass(frozen=True)
class Text(Kind):
    metavar: str = "TEXT"

    def parse(self, text: str) -> str:
        return text


@dataclass(frozen=True)
class Integer(Kind):
    minimum: int | None = None
    maximum: int | None = None
    metavar: str = "N"
    expected = "an integer"

    def parse(self, text: str) -> int:
        try:
            number = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        return self._check(number)

    def from_toml(self, value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return self._check(value)
        return int(super().from_toml(value))

    def to_toml(self, value: Any) -> str:
        return str(value)

    def _check(self, number: int) -> int:
        if self.minimum is not None and self.maximum is not None:
            if not self.minimum <= number <= self.maximum:
                raise ValueError(f"{number} is not in the range {self.minimum}-{self.maximum}")
        elif self.minimum is not None and number < self.minimum:
            raise ValueError(f"{number} is less than the minimum of {self.minimum}")
        return number


@dataclass(frozen=True)
class Number(Kind):
    minimum: float = 0.0
    metavar: str = "SECONDS"
    expected = "a number"

    def parse(self, text: str) -> float:
        try:
            number = float(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        return self._check(number)

    def from_toml(self, value: object) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return self._check(float(value))
        return float(super().from_toml(value))

    def to_toml(self, value: Any) -> str:
        return repr(float(value))

    def to_text(self, value: Any) -> str:
        return repr(float(value))

    def _check(self, number: float) -> float:
        if not math.isfinite(number):
            raise ValueError(f"{number} is not a finite number")
        if number < self.minimum:
            raise ValueError(f"{number:g} is less than the minimum of {self.minimum:g}")
        return number


@dataclass(frozen=True)
class Choice(Kind):
    choices: tuple[str, ...] = ()
    metavar: str = "NAME"

    def parse(self, text: str) -> str:
        if text not in self.choices:
            raise ValueError(f"{text!r} is not one of {', '.join(self.choices)}")
        return text


@dataclass(frozen=True)
class Switch(Kind):
    """On or off: a flag on the command line, 1/0 true/false yes/no on/off elsewhere."""

    metavar: str = "BOOLEAN"
    expected = "true or false"

    def parse(self, text: str) -> bool:
        word = text.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError(f"{text!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")

    def from_toml(self, value: object) -> bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {_toml_type(value)}")

    def to_toml(self, value: Any) -> str:
        return "true" if value else "false"

    def to_text(self, value: Any) -> str:
        return self.to_toml(value)


@dataclass(frozen=True)
class ShellCommand(Kind):
    """A command line for the user's shell; never blank."""

    metavar: str = "CMD"

    def parse(self, text: str) -> str:
        if not text.strip():
            raise ValueError("the command is empty")
        return text


@dataclass(frozen=True)
class ExistingPath(Kind):
    """A file or directory that must exist; relative to the current directory."""

    metavar: str = "PATH"

    def parse(self, text: str) -> Path:
        path = Path(text).expanduser()
        if not path.exists():
            raise ValueError(f"path {text!r} does not exist")
        return path


@dataclass(frozen=True)
class FilePath(ExistingPath):
    """A file whose user checks it (a missing one is then named with the reason)."""

    metavar: str = "FILE"

    def parse(self, text: str) -> Path:
        return Path(text).expanduser()


@dataclass(frozen=True)
class UrlPath(Kind):
    """A path on the served site, such as ``/docs/``; in files and the environment
    also a boolean (true: ``/``, false: none)."""

    metavar: str = "[PATH]"
    expected = "a path such as /docs/, or true or false"

    def parse(self, text: str) -> str:
        if not text.startswith("/"):
            raise ValueError(
                f"{text!r} is not a URL path: start it with / (or write --open=/ or put "
                "--open last to open the site's root)"
            )
        return text

    def from_env(self, text: str) -> str | None:
        word = text.strip().lower()
        if word in _TRUE or word in _FALSE:
            return "/" if word in _TRUE else None
        return self.parse(text)

    def from_toml(self, value: object) -> str | None:
        if isinstance(value, bool):
            return "/" if value else None
        return str(super().from_toml(value))


# RFC 9110 §5.1 token, and a field value without controls (RFC 9110 §5.5).
_FIELD_NAME = TOKEN
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


@dataclass(frozen=True)
class HeaderLine(Kind):
    """A response header field, "Name: value"."""

    metavar: str = "'NAME: VALUE'"

    def parse(self, text: str) -> tuple[str, str]:
        name, colon, value = text.partition(":")
        name, value = name.strip(), value.strip()
        if not colon or not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"{text!r} is not a header field: write 'Name: value'")
        if not _FIELD_VALUE.fullmatch(value):
            raise ValueError(f"{text!r} has a control character in its value")
        if name.lower() in FRAMING_FIELDS:
            raise ValueError(f"{name} is set by sitepeek itself and cannot be added")
        return name, value

    def to_toml(self, value: Any) -> str:
        return json.dumps(f"{value[0]}: {value[1]}")

    def to_text(self, value: Any) -> str:
        return f"{value[0]}: {value[1]}"


@dataclass(frozen=True)
class ProxySpec(Kind):
    """PREFIX=URL, such as /api=http://127.0.0.1:8000."""

    metavar: str = "PREFIX=URL"

    def parse(self, text: str) -> str:
        parse_route(text)  # raises ValueError naming the problem
        return text


@dataclass(frozen=True)
class BasePath(Kind):
    """The sub-path a site is built for, normalised to "/repo/"."""

    metavar: str = "PATH"

    def parse(self, text: str) -> str:
        return normalise_base(text)


@dataclass(frozen=True)
class SiteFile(Kind):
    """A file in the site, named relative to its root (``index.html``)."""

    metavar: str = "[FILE]"

    def parse(self, text: str) -> str:
        name = text.strip().lstrip("/")
        parts = name.split("/")
        if not name or any(part in ("", ".", "..") for part in parts) or "\x00" in name:
            raise ValueError(f"{text!r} is not a file name inside the site")
        return name

    def from_env(self, text: str) -> str | None:
        word = text.strip().lower()
        if word in _TRUE or word in _FALSE:
            return "index.html" if word in _TRUE else None
        return self.parse(text)

    def from_toml(self, value: object) -> str | None:
        if isinstance(value, bool):
            return "index.html" if value else None
        return str(super().from_toml(value))


def _toml_type(value: object) -> str:
    """How a TOML value reads in an error message: its type, and the value if short."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return f"{names.get(type(value), 'a date or time')} ({value!r})"


# -- the table --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Option:
    """One setting, as the command line, the environment and config files know it."""

    name: str  # the Config field; key in files with _ or -, SITEPEEK_NAME in the env
    kind: Kind
    default: Any
    help: str
    short: str | None = None  # a one-letter alias such as -p
    multiple: bool = False  # repeatable flag; a list in files, one per line in the env
    # A value may hold a comma (a shell command, a header's value): in the environment,
    # values are one per line only; the other repeatable options also take commas.
    lines_only: bool = False
    negatable: bool = False  # a switch with a --no- form
    bare_value: str | None = None  # the value of the flag given without one (--open)
    default_text: str | None = None  # how the default reads where it is not a value
    to_config: Callable[[Any], Any] = field(default=lambda value: value)

    @property
    def key(self) -> str:
        return self.name.replace("_", "-")

    @property
    def flag(self) -> str:
        return "--" + self.key

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def is_switch(self) -> bool:
        return isinstance(self.kind, Switch)


def _resolved_paths(paths: tuple[Path, ...]) -> tuple[Path, ...]:
    return tuple(path.resolve() for path in paths)


OPTIONS: tuple[Option, ...] = (
    Option(
        "host",
        Text("ADDR"),
        "127.0.0.1",
        "Address to listen on; 0.0.0.0 (or ::) exposes the site to your network.",
    ),
    Option(
        "port",
        Integer(0, 65535),
        8000,
        "Port to listen on; 0 picks any free port. A busy port moves on to the next.",
        short="-p",
    ),
    Option("strict_port", Switch(), False, "Fail instead of moving on when the port is busy."),
    Option(
        "workers",
        Choice(WORKER_NAMES, metavar="[" + "|".join(WORKER_NAMES) + "]"),
        "greenlets",
        "Concurrency model. greenlets: one process, one event loop, a greenlet per busy "
        "connection (default; fastest, lightest). threads: one process, a selector "
        "thread and a pool of --threads worker threads (no gevent; pick it when "
        "debugging or profiling). processes: pre-forked greenlet workers (pick it to "
        "use every core).",
    ),
    Option(
        "processes",
        Integer(1),
        None,
        "Worker processes with --workers processes.",
        default_text="one per CPU",
        to_config=lambda value: value or 0,
    ),
    Option(
        "threads",
        Integer(1),
        None,
        "Worker threads with --workers threads: requests are answered by this pool "
        "(idle connections wait in one selector thread, not in a thread each); "
        "a full pool queues ready connections, first come, first served.",
        default_text=f"{THREADS_PER_CPU} per CPU",
        to_config=lambda value: value or 0,
    ),
    Option(
        "max_connections",
        Integer(1),
        1000,
        "Connections served at once per process. At the limit the idle keep-alive "
        "connection used least recently is closed for a newcomer; when all are busy, "
        "newcomers wait in the listen queue.",
    ),
    Option(
        "keepalive_timeout",
        Number(0.1),
        5.0,
        "Close a keep-alive connection idle this long.",
    ),
    Option(
        "header_timeout",
        Number(0.1),
        10.0,
        "Answer 408 when a started request head takes longer.",
    ),
    Option(
        "send_timeout",
        Number(0.1),
        30.0,
        "Disconnect a client that takes longer than this to accept more of a response.",
    ),
    Option(
        "compress",
        Switch(),
        True,
        "Compress text responses (gzip; brotli and zstd with their extras).",
        negatable=True,
    ),
    Option(
        "reload",
        Switch(),
        True,
        "Reload open browser tabs when a file changes (CSS is swapped in place).",
        negatable=True,
    ),
    Option(
        "reload_delay",
        Integer(0, metavar="MS"),
        30,
        "Quiet period that ends a burst of changes before a reload.",
        to_config=lambda ms: ms / 1000,
    ),
    Option(
        "watch",
        ExistingPath(),
        (),
        "Also watch PATH for changes (repeatable); with --build, PATH is a source of the "
        "build instead.",
        multiple=True,
        to_config=_resolved_paths,
    ),
    Option(
        "ignore",
        Text("GLOB"),
        (),
        "Ignore changes to files matching GLOB (repeatable), besides .git/, node_modules/ "
        "and editor swap files.",
        multiple=True,
    ),
    Option(
        "poll",
        Switch(),
        False,
        "Poll for changes instead of OS events (Docker, WSL, network drives).",
    ),
    Option(
        "build",
        ShellCommand(),
        None,
        "Run CMD (with $SHELL -c) at start and whenever a source changes, one build at "
        "a time; pages wait for it, tabs reload once per good build and show its output "
        "when it fails (the last good build is served meanwhile). Sources: the --watch "
        "paths, else the current directory without the served one.",
        default_text="none",
    ),
    Option(
        "run",
        ShellCommand(),
        (),
        "Keep CMD running while serving, e.g. a watcher or an API backend (repeatable); "
        "an exit is reported in the terminal and in the tabs. SITEPEEK_RUN: one command "
        "per line.",
        multiple=True,
        lines_only=True,
    ),
    Option(
        "spa",
        SiteFile(),
        None,
        "Single-page app: a missing path gets FILE with status 200 when the request "
        "accepts HTML, as Netlify's /* /index.html 200 does (/users/john.doe too), except "
        "asset names: a last segment ending in a known non-HTML type (.js, .css, .png, "
        ".json...) keeps its 404.",
        bare_value="index.html",
        default_text="off",
    ),
    Option(
        "clean_urls",
        Switch(),
        True,
        "Serve /about from about.html when no about file or directory exists.",
        negatable=True,
    ),
    Option(
        "listing",
        Switch(),
        True,
        "List the files of a directory that has no index.html.",
        negatable=True,
    ),
    Option(
        "rules",
        Switch(),
        True,
        "Apply the site's _redirects and _headers files (Netlify/Cloudflare Pages format).",
        negatable=True,
    ),
    Option(
        "base",
        BasePath(),
        "/",
        "Serve the site under this sub-path, as GitHub Pages project sites are (/repo/).",
    ),
    Option(
        "cors",
        Switch(),
        False,
        "Allow cross-origin GET/HEAD from any origin (Access-Control-Allow-Origin: *, "
        "OPTIONS preflight; no credentials).",
    ),
    Option(
        "header",
        HeaderLine(),
        (),
        "Add a header field to every response (repeatable). SITEPEEK_HEADER: one field per line.",
        multiple=True,
        lines_only=True,
    ),
    Option(
        "proxy",
        ProxySpec(),
        (),
        "Forward requests under PREFIX to a local backend, e.g. /api=http://127.0.0.1:3000 "
        "(repeatable).",
        multiple=True,
    ),
    Option(
        "allowed_host",
        Text("NAME"),
        (),
        "Also answer requests for this Host name when bound to loopback (repeatable; "
        "*.example.test allowed). Other names get 421: DNS rebinding protection.",
        multiple=True,
    ),
    Option(
        "open",
        UrlPath(),
        None,
        "Open the default browser at the served URL (plus PATH; without it, the site under "
        "--base) once the server is up.",
        bare_value="/",
        default_text="no",
    ),
    Option(
        "qr",
        Switch(),
        False,
        "Print a QR code of the network URL, to open the site on a phone "
        "(needs the qr extra: pip install 'sitepeek[qr]').",
    ),
    Option(
        "https",
        Switch(),
        False,
        "Serve HTTPS with a certificate from sitepeek's own local CA, created on first "
        "use (needs the https extra: pip install 'sitepeek[https]'); `sitepeek https "
        "trust` makes browsers trust it.",
    ),
    Option(
        "cert",
        FilePath(),
        None,
        "Serve HTTPS with this certificate chain (PEM, leaf first), made elsewhere "
        "(mkcert, a company CA); needs --key.",
        default_text="none",
        to_config=lambda path: None if path is None else path.resolve(),
    ),
    Option(
        "key",
        FilePath(),
        None,
        "The unencrypted private key (PEM) of --cert.",
        default_text="none",
        to_config=lambda path: None if path is None else path.resolve(),
    ),
    Option(
        "quiet",
        Switch(),
        False,
        "Log only failed requests (status 500 and up), besides start and stop.",
        short="-q",
    ),
    Option(
        "log_format",
        Choice(LOG_FORMATS, metavar="[" + "|".join(LOG_FORMATS) + "]"),
        "text",
        "Request log format: text for people, json for tools (one object per line on "
        "stdout; the banner, reload lines and the summary then go to stderr).",
    ),
)
OPTIONS_BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}

# The directory to serve: DIR on the command line, SITEPEEK_ROOT, ``root`` in a file.
ROOT_KEY = "root"
ROOT_ENV = ENV_PREFIX + "ROOT"
ROOT_OPTION = Option(ROOT_KEY, Text(), ".", "The directory to serve (DIR).")


# -- where values come from -------------------------------------------------------------
class ConfigError(Exception):
    """A config file or an environment variable is invalid; the message names it."""


@dataclass(frozen=True, slots=True)
class Setting:
    """The effective value of one option and where it came from."""

    option: Option
    value: Any
    source: str  # "default", "command line", "SITEPEEK_PORT", "sitepeek.toml", ...


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """The config file in use, with its values already validated."""

    path: Path
    label: str  # "sitepeek.toml" or "pyproject.toml [tool.sitepeek]"
    values: dict[str, Any]
    shadows: str | None = None  # a [tool.sitepeek] table ignored because sitepeek.toml wins
    root: str | None = None  # the directory to serve, as written (relative to the file)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every option's effective value, and the file that was read."""

    values: tuple[Setting, ...]
    file: ConfigFile | None
    directory: Path  # where config files were looked for
    env_root: str | None = None  # SITEPEEK_ROOT, relative to the current directory

    def config(self, root: Path) -> Config:
        """The Config to serve ``root`` with; raises ValueError on an inconsistency."""
        kwargs = {s.option.name: s.option.to_config(s.value) for s in self.values}
        return Config(root=root, **kwargs)

    def root_for(self, given: Path | None) -> Setting:
        """The directory to serve: DIR from the command line, else SITEPEEK_ROOT, else the
        config file's ``root`` (relative to the file), else the current directory. The
        Setting's value is the path to serve; raises ConfigError when it is no directory."""
        if given is not None:
            return Setting(ROOT_OPTION, given, COMMAND_LINE_SOURCE)
        if self.env_root is not None:
            path = Path(self.env_root)
            if not path.is_dir():
                raise ConfigError(f"environment variable {ROOT_ENV}: {path} is not a directory")
            return Setting(ROOT_OPTION, path, ROOT_ENV)
        if self.file is None or self.file.root is None:
            return Setting(ROOT_OPTION, Path("."), DEFAULT_SOURCE)
        path = self.file.path.parent / self.file.root
        if not path.is_dir():
            problem = "does not exist" if not path.exists() else "is not a directory"
            raise ConfigError(f"{self.file.label}: key 'root': {path} {problem}")
        return Setting(ROOT_OPTION, path, self.file.label)

    def describe(self, root: Path, root_setting: Setting | None = None) -> str:
        """The effective settings as TOML, each with its source as a comment."""
        lines = [f"# sitepeek settings for serving {root}"]
        if self.file is None:
            lines.append(
                f"# config file: none ({PROJECT_FILE} or {PYPROJECT_LABEL} in {self.directory})"
            )
        else:
            lines.append(f"# config file: {self.file.path}")
            if self.file.shadows:
                lines.append(f"# ({self.file.shadows} is ignored: {PROJECT_FILE} wins)")
        lines.append("# precedence: command line > SITEPEEK_* environment > file > default")
        rows = [(_toml_line(s), s.source) for s in self.values]
        if root_setting is not None:
            from_file = self.file is not None and root_setting.source == self.file.label
            written = self.file.root if self.file is not None and from_file else None
            text = written if written is not None else str(root_setting.value)
            rows.insert(0, (f"root = {ROOT_OPTION.kind.to_toml(text)}", root_setting.source))
        width = max(len(text) for text, _ in rows)
        lines += [f"{text.ljust(width)}  # {source}" for text, source in rows]
        return "\n".join(lines)


def _toml_line(setting: Setting) -> str:
    option, value = setting.option, setting.value
    if value is None:
        return f"# {option.key}: {option.default_text or 'unset'}"
    if option.multiple:
        items = ", ".join(option.kind.to_toml(item) for item in value)
        return f"{option.key} = [{items}]"
    return f"{option.key} = {option.kind.to_toml(value)}"


def resolve(
    command_line: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    directory: Path | None = None,
) -> Settings:
    """Each option's value: command line > environment > config file > default.

    ``command_line`` holds only the options given on the command line, already parsed.
    Raises ConfigError for an unknown key or a bad value in a file or the environment.
    """
    directory = Path.cwd() if directory is None else directory
    environ = os.environ if environ is None else environ
    env_root = environ.get(ROOT_ENV) or None
    env_values = read_environment({k: v for k, v in environ.items() if k != ROOT_ENV})
    config_file = find_config_file(directory)
    file_values = config_file.values if config_file else {}
    settings = []
    for option in OPTIONS:
        if option.name in command_line:
            value, source = command_line[option.name], COMMAND_LINE_SOURCE
            if option.multiple:
                value = tuple(value)
        elif option.name in env_values:
            value, source = env_values[option.name], option.env
        elif option.name in file_values:
            assert config_file is not None
            value, source = file_values[option.name], config_file.label
        else:
            value, source = option.default, DEFAULT_SOURCE
        settings.append(Setting(option, value, source))
    return Settings(tuple(settings), config_file, directory, env_root)


# How a repeatable option's variable holds its values: one per line (a newline cannot be
# part of a one-line command or header), or also separated by commas where no value
# holds one (paths, globs, routes, host names).
_ENV_LINES = re.compile(r"\r?\n")
_ENV_ITEMS = re.compile(r"\r?\n|,")


def read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Options set by ``SITEPEEK_*`` variables; an empty variable counts as unset."""
    values: dict[str, Any] = {}
    for variable, text in environ.items():
        if not variable.startswith(ENV_PREFIX) or not text:
            continue
        option = OPTIONS_BY_NAME.get(variable[len(ENV_PREFIX) :].lower())
        if option is None or variable != option.env:
            hint = _did_you_mean(variable, [o.env for o in OPTIONS])
            raise ConfigError(f"unknown environment variable {variable}{hint}")
        try:
            if option.multiple:
                items = _ENV_LINES if option.lines_only else _ENV_ITEMS
                values[option.name] = tuple(
                    option.kind.from_env(item.strip()) for item in items.split(text) if item.strip()
                )
            else:
                values[option.name] = option.kind.from_env(text)
        except ValueError as exc:
            raise ConfigError(f"environment variable {variable}: {exc}") from None
    return values


def find_config_file(directory: Path) -> ConfigFile | None:
    """``sitepeek.toml``, else ``[tool.sitepeek]`` in ``pyproject.toml``, in ``directory``.

    When both exist, sitepeek.toml wins and the pyproject table is ignored entirely.
    """
    project = directory / PROJECT_FILE
    pyproject = directory / PYPROJECT_FILE
    if project.is_file():
        shadows = None
        try:
            if _pyproject_table(pyproject) is not None:
                shadows = PYPROJECT_LABEL
        except ConfigError:
            pass  # not ours to complain about: it is not read
        table = _read_toml(project, PROJECT_FILE)
        root = _file_root(table, PROJECT_FILE)
        return ConfigFile(project, PROJECT_FILE, _file_values(table, PROJECT_FILE), shadows, root)
    tool_table = _pyproject_table(pyproject)
    if tool_table is None:
        return None
    root = _file_root(tool_table, PYPROJECT_LABEL)
    values = _file_values(tool_table, PYPROJECT_LABEL)
    return ConfigFile(pyproject, PYPROJECT_LABEL, values, None, root)


def _file_root(table: dict[str, Any], label: str) -> str | None:
    """Take ``root`` (the directory to serve, relative to the file) out of ``table``."""
    raw = table.pop(ROOT_KEY, None)
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(
            f"{label}: key {ROOT_KEY!r}: expected a directory name, got {_toml_type(raw)}"
        )
    return raw


def _pyproject_table(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    tool = _read_toml(path, PYPROJECT_FILE).get("tool", {})
    table = tool.get("sitepeek") if isinstance(tool, dict) else None
    if table is not None and not isinstance(table, dict):
        raise ConfigError(f"{PYPROJECT_LABEL}: expected a table, got {_toml_type(table)}")
    return table


def _read_toml(path: Path, label: str) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read: {exc.strerror}") from None


def _file_values(table: Mapping[str, Any], label: str) -> dict[str, Any]:
    """Validate a config table; keys may use dashes or underscores."""
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, raw in table.items():
        option = OPTIONS_BY_NAME.get(key.replace("-", "_"))
        if option is None or key not in (option.name, option.key):
            hint = _did_you_mean(key, [o.key for o in OPTIONS]) or _did_you_mean(key, [ROOT_KEY])
            if key.lower() in ("dir", "directory", "docroot", "document-root", "public"):
                hint = f" (did you mean {ROOT_KEY!r}?)"
            raise ConfigError(f"{label}: unknown key {key!r}{hint}")
        if option.name in spelled:
            raise ConfigError(f"{label}: {spelled[option.name]!r} and {key!r} are the same key")
        spelled[option.name] = key
        try:
            values[option.name] = _from_toml(option, raw)
        except ValueError as exc:
            raise ConfigError(f"{label}: key {key!r}: {exc}") from None
    return values


def _from_toml(option: Option, raw: object) -> Any:
    if not option.multiple:
        return option.kind.from_toml(raw)
    items = raw if isinstance(raw, list) else [raw]
    return tuple(option.kind.from_toml(item) for item in items)


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- keyword arguments: sitepeek.Server(root, **options) --------------------------------
class OptionError(ValueError):
    """A keyword argument names no option, or has a bad value; the message reads as the
    command line's does: "Invalid value for '--port' / '-p': 'x' is not an integer"."""


def option_label(option: Option) -> str:
    """How an error names the option, as click does on the command line: '--port' / '-p'."""
    names = [option.flag] + ([option.short] if option.short else [])
    return " / ".join(f"'{name}'" for name in names)


def from_python(name: str, value: object) -> Any:
    """One keyword argument, parsed as the command line parses the option.

    Names are the Config fields (``clean_urls``); values are what a config file takes,
    plus ``os.PathLike`` for paths, ``(name, value)`` pairs for headers and ``None``
    for an option whose default is none (``spa``, ``open``). A repeatable option takes a
    list or one item. Raises :class:`OptionError` with the command line's message.
    """
    option = OPTIONS_BY_NAME.get(name)
    if option is None:
        hint = _did_you_mean(name, [o.name for o in OPTIONS])
        raise OptionError(f"No such option {name!r}{hint}.")
    try:
        if value is None:
            if option.default is None:
                return None
            raise ValueError(f"expected {option.kind.expected}, got None")
        if not option.multiple:
            return _python_item(option, value)
        items = value if isinstance(value, list | tuple) and not _is_pair(value) else [value]
        return tuple(_python_item(option, item) for item in items)
    except ValueError as exc:
        raise OptionError(f"Invalid value for {option_label(option)}: {exc}") from None


def _is_pair(value: object) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value)


def _python_item(option: Option, item: object) -> Any:
    if isinstance(item, os.PathLike):
        item = os.fspath(item)
    if isinstance(option.kind, HeaderLine) and isinstance(item, tuple) and _is_pair(item):
        item = f"{item[0]}: {item[1]}"
    if not isinstance(item, str | bool | int | float):
        raise ValueError(f"expected {option.kind.expected}, got {type(item).__name__}")
    parsed = option.kind.from_toml(item)
    # The server runs elsewhere (another process, another directory): paths as absolute.
    return parsed.resolve() if isinstance(parsed, Path) else parsed


def serve_arguments(values: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Command-line arguments and ``SITEPEEK_*`` variables that make ``sitepeek serve``
    use ``values`` (parsed, by option name) whatever a config file says.

    Switches go through the environment, as do ``spa``/``open`` set to None: not every
    switch has a --no- form, and the environment also overrides a config file. A
    repeatable option replaces the config file's list, as on the command line.
    """
    args: list[str] = []
    env: dict[str, str] = {}
    for name, value in values.items():
        option = OPTIONS_BY_NAME[name]
        if option.is_switch:
            env[option.env] = option.kind.to_text(value)
        elif value is None:
            if isinstance(option.kind, UrlPath | SiteFile):
                env[option.env] = "false"
        elif option.multiple:
            args += [f"{option.flag}={option.kind.to_text(item)}" for item in value]
        else:
            args.append(f"{option.flag}={option.kind.to_text(value)}")
    return args, env
