"""Soak test: each worker model under many connections while files change under it.

    python benchmarks/soak.py [--seconds 60] [--connections 1000]
                              [--models greenlets,threads,processes] [--json out.json]

For each worker model a fresh site is generated (small text files, HTML pages, a
compressible script, a 5 MiB binary) and `sitepeek serve SITE --port 0 --workers MODEL
--quiet` is started on it. After a warm-up pass, the server's open descriptors and RSS
(summed over its process tree) are recorded; then a bundled asyncio client holds
`--connections` connections for `--seconds`:

- most connections send keep-alive GETs over every file (some with
  `Accept-Encoding: gzip`) and check each body against the SHA-256 of a version the
  file really had;
- a fraction (`--abort-fraction`) request the 5 MiB file, read a few KiB and
  disconnect (half with a RST), over and over;
- meanwhile an editor thread rewrites files several times a second: atomically
  (temp file + os.replace) and in place (same-size overwrite, or truncate + write).
  Every state a file passes through is registered as valid *before* it is written, so
  a body must be exactly one of them, with a Content-Length to match.

A body cut short (the connection closed inside it) is allowed and counted on its own:
a server that sees the file change mid-response must close rather than finish a body
that mixes versions. An idle keep-alive connection the server closes is reopened and
the GET retried, as browsers do.

Afterwards the client closes everything, waits until the server's descriptors return
to the baseline, and reports per model: connections held (client side, lowest and
highest after the ramp-up), requests, 5xx, corrupted bodies, bodies cut short, other
errors, fds before/peak/after and RSS before/peak/after as a markdown table, followed by
the details (corrupted bodies are diagnosed page by page: "torn" means made of pages
of different versions). Exit status 1 when any model had a 5xx, a corrupted body, a
descriptor leak, a traceback in its log, or did not run.

Only 127.0.0.1 is used, and every wait has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import resource
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import (
    REPO,
    Launch,
    LaunchContext,
    RunningServer,
    ServerSpec,
    StartError,
    process_tree,
    raise_open_files_limit,
)

if (REPO / "src" / "sitepeek").is_dir():
    sys.path.insert(0, str(REPO / "src"))  # soak the working tree, installed or not

from sitepeek.inject import inject
from sitepeek.livereload import client_tag  # the reload tag, as the server injects it

MODELS = ("greenlets", "threads", "processes")
HOST = "127.0.0.1"
LARGE_PATH = "/large.bin"
LARGE_SIZE = 5 * 1024 * 1024
PAGE = 4096  # page-cache granularity: the unit a concurrent read can see torn
CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 30.0  # a whole exchange, 5 MiB body included
STOP_TIMEOUT_S = 35.0  # clients finishing their last exchange after the deadline
SAMPLE_INTERVAL_S = 0.25
RAMP_S = 2.0  # connection counts before this are the ramp-up, not "held"
MAX_EXAMPLES = 8
SNIPPET = client_tag()
STOPPED = re.compile(r"Stopped after [^:]*: ([\d,]+) requests? served")


# -- The site and its versions ---------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """One complete version of a file, as served: for diagnosing a corrupted body."""

    number: int
    length: int
    blocks: tuple[bytes, ...]  # digest of each PAGE-sized block of the served bytes


@dataclass
class SiteFile:
    url: str
    path: Path
    html: bool
    weight: float  # share of the keep-alive clients' requests
    gzip: bool  # ask for gzip half of the time
    modes: tuple[str, ...]  # how the editor may rewrite it; () = never edited
    valid: set[bytes] = field(default_factory=set)  # SHA-256 of every servable state
    versions: list[Version] = field(default_factory=list)
    size: int = 0  # of the last version written
    edits: int = 0
    last_edit: tuple[float, str] = (0.0, "created")

    def served(self, data: bytes) -> bytes:
        """The bytes sitepeek sends for this content (live reload injects into HTML)."""
        return inject(data, SNIPPET) if self.html else data

    def register(self, data: bytes, *, full: bool) -> None:
        """Accept ``data`` as a state of the file; called before it is written."""
        body = self.served(data)
        self.valid.add(hashlib.sha256(body).digest())
        if full:
            blocks = tuple(_block_digests(body))
            self.versions.append(Version(len(self.versions), len(body), blocks))


def _block_digests(body: bytes) -> list[bytes]:
    return [
        hashlib.blake2b(body[at : at + PAGE], digest_size=16).digest()
        for at in range(0, len(body), PAGE)
    ]


_WORDS = [
    *("tide", "estuary", "harbour", "reef", "shoal", "inlet", "lagoon", "delta", "fjord"),
    *("marsh", "dune", "cove", "strait", "sandbar", "headland", "tidepool", "survey"),
    *("station", "sample", "marker", "layer", "route", "buoy", "photo"),
]


def _text(rng: random.Random, size: int, header: str = "") -> bytes:
    """Exactly ``size`` bytes of line-broken words (starting with ``header``)."""
    parts = [header]
    total = len(header)
    while total < size:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12))) + "\n"
        parts.append(line)
        total += len(line)
    return "".join(parts).encode()[:size]


def _html(rng: random.Random, size: int, title: str) -> bytes:
    head = f"<!doctype html>\n<html><head><title>{title}</title></head><body>\n<p>"
    tail = "</p>\n</body></html>\n"
    filler = _text(rng, max(0, size - len(head) - len(tail)))
    return (head.encode() + filler + tail.encode())[: max(size, len(head) + len(tail))]


def _content(file: SiteFile, rng: random.Random, size: int, version: int) -> bytes:
    if file.url == LARGE_PATH:
        return rng.randbytes(size)
    if file.html:
        return _html(rng, size, f"{file.url} v{version}")
    return _text(rng, size, f"{file.url} version {version}\n")


def build_site(
    root: Path, seed: int, large_modes: tuple[str, ...] = ("replace", "overwrite")
) -> list[SiteFile]:
    """Write the site; every file starts at version 0 (registered as valid)."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "pages").mkdir()
    (root / "text").mkdir()
    files: list[SiteFile] = []
    all_modes = ("replace", "overwrite", "truncate")

    def add(url: str, size: int, **kwargs: object) -> None:
        path = root / url.lstrip("/")
        file = SiteFile(url, path, path.suffix == ".html", **kwargs)  # type: ignore[arg-type]
        data = _content(file, rng, size, 0)
        file.register(data, full=True)
        file.size = len(data)
        path.write_bytes(data)
        files.append(file)

    add("/small.txt", 1024, weight=1.0, gzip=False, modes=())  # the readiness probe
    add("/index.html", 2500, weight=2.0, gzip=True, modes=all_modes)
    for index in range(30):
        size = rng.choice((64, 300, 1000, 2000, 4000, 9000, 20000, 60000))
        edited = all_modes if index % 2 == 0 else ()
        add(f"/text/t{index:02}.txt", size, weight=1.0, gzip=index % 3 == 0, modes=edited)
    for index in range(10):
        size = rng.randint(2000, 40000)
        edited = all_modes if index % 2 == 0 else ()
        add(f"/pages/p{index}.html", size, weight=1.0, gzip=index % 2 == 1, modes=edited)
    add("/app.js", 100_000, weight=2.0, gzip=True, modes=("replace", "overwrite"))
    # 5 MiB: sent with sendfile. No truncate + write: its 1,280 page-sized prefixes
    # would all be valid states, too many to register.
    add(LARGE_PATH, LARGE_SIZE, weight=0.15, gzip=False, modes=large_modes)
    return files


class Editor(threading.Thread):
    """Rewrites files ``rate`` times a second until stopped."""

    def __init__(self, files: list[SiteFile], rate: float, seed: int) -> None:
        super().__init__(name="soak-editor", daemon=True)
        self.files = [f for f in files if f.modes]
        self.rate = rate
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.counts: collections.Counter[str] = collections.Counter()
        self.error: str | None = None

    def run(self) -> None:
        try:
            while not self.stop.wait(self.rng.expovariate(self.rate)):
                # The large file is written about once a second at 8 edits/s.
                weights = [3.0 if f.url == LARGE_PATH else 1.0 for f in self.files]
                file = self.rng.choices(self.files, weights)[0]
                self.edit(file, self.rng.choice(file.modes))
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def edit(self, file: SiteFile, mode: str) -> None:
        version = len(file.versions)
        if mode == "overwrite":
            size = file.size
        elif file.url == LARGE_PATH:
            size = LARGE_SIZE
        else:
            size = max(1, int(file.size * self.rng.uniform(0.5, 1.5)))
        data = _content(file, self.rng, size, version)
        file.register(data, full=True)
        if mode == "truncate":
            # Between the truncation and the end of the write, a reader sees the file
            # empty or holding a page-aligned prefix of the new content.
            file.register(b"", full=False)
            for end in range(PAGE, len(data), PAGE):
                file.register(data[:end], full=False)
        file.last_edit = (time.monotonic(), mode)
        if mode == "replace":
            temp = file.path.with_name(f".{file.path.name}.soak-{version}")
            temp.write_bytes(data)
            os.replace(temp, file.path)
        else:
            flags = os.O_WRONLY | (os.O_TRUNC if mode == "truncate" else 0)
            fd = os.open(file.path, flags)
            try:
                view = memoryview(data)
                offset = 0
                while offset < len(data):
                    offset += os.pwrite(fd, view[offset:], offset)
            finally:
                os.close(fd)
        file.size = len(data)
        file.edits += 1
        self.counts[mode] += 1


# -- Measuring the server --------------------------------------------------------------


def fd_count(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


def _status_kib(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def rss_mib(pids: list[int], key: str = "VmRSS") -> float:
    return sum(_status_kib(pid, key) for pid in pids) / 1024


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


class Sampler(threading.Thread):
    """Samples the server's descriptors and memory, and the client's open connections."""

    def __init__(self, root_pid: int, client: Client) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.root_pid = root_pid
        self.client = client
        self.stop = threading.Event()
        self.peak_fds = 0
        self.peak_rss = 0.0
        self.held: list[tuple[float, int]] = []  # (time since start, open connections)

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop.wait(SAMPLE_INTERVAL_S):
            pids = process_tree(self.root_pid)
            self.peak_fds = max(self.peak_fds, fd_count(pids))
            self.peak_rss = max(self.peak_rss, rss_mib(pids))
            self.held.append((time.monotonic() - start, self.client.open))


# -- The load client -------------------------------------------------------------------


class FramingError(Exception):
    """The bytes on the connection are not a well-framed HTTP/1.1 response."""


@dataclass
class Head:
    status: int
    reason: str
    headers: dict[str, str]


@dataclass
class Client:
    """1,000 connections in one asyncio loop; counts everything it sees."""

    port: int
    files: list[SiteFile]
    connections: int
    abort_fraction: float
    seed: int
    stopping: bool = False
    open: int = 0
    connects: int = 0
    requests: int = 0  # complete responses received (any status)
    verified: int = 0  # 200s whose body matched a valid version
    bytes_received: int = 0
    status_5xx: int = 0
    corrupted: int = 0
    aborted: int = 0  # deliberate mid-response disconnects
    retried: int = 0  # idle keep-alive connection closed by the server; request retried
    cut_short: int = 0  # connection closed inside a body (allowed when the file changed)
    cut_short_by: collections.Counter[str] = field(default_factory=collections.Counter)
    status_counts: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    corrupted_by: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: list[dict[str, object]] = field(default_factory=list)

    async def run(self, seconds: float) -> None:
        aborters = round(self.connections * self.abort_fraction)
        tasks = [
            asyncio.create_task(
                self._aborting(random.Random(self.seed * 7919 + i))
                if i < aborters
                else self._keepalive(random.Random(self.seed * 7919 + i))
            )
            for i in range(self.connections)
        ]
        await asyncio.sleep(seconds)
        self.stopping = True
        done, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                self.errors[f"client bug: {task.exception()!r}"] += 1
        if pending:
            self.errors["client still busy at stop (cancelled)"] += len(pending)

    def _corrupt(self, path: str, kind: str) -> None:
        self.corrupted += 1
        self.corrupted_by[f"{path}: {kind}"] += 1

    def _example(self, kind: str, file: SiteFile, **details: object) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            since, mode = file.last_edit
            self.examples.append(
                {
                    "kind": kind,
                    "path": file.url,
                    "last_edit": mode,
                    "seconds_since_last_edit": round(time.monotonic() - since, 3),
                    **details,
                }
            )

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(HOST, self.port, limit=256 * 1024)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.open += 1
        self.connects += 1
        return reader, writer

    def _close(self, writer: asyncio.StreamWriter, reset: bool = False) -> None:
        if reset:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            writer.close()
        self.open -= 1

    def _pick(self, rng: random.Random) -> SiteFile:
        weights = [f.weight for f in self.files]
        return rng.choices(self.files, weights)[0]

    async def _keepalive(self, rng: random.Random) -> None:
        writer: asyncio.StreamWriter | None = None
        reader: asyncio.StreamReader | None = None
        reused = False
        # Spread the connection storm a little.
        await asyncio.sleep(rng.uniform(0, 0.5))
        try:
            while not self.stopping:
                file = self._pick(rng)
                gzip = file.gzip and rng.random() < 0.5
                if writer is None:
                    try:
                        reader, writer = await self._connect()
                    except (OSError, TimeoutError) as exc:
                        self.errors[f"connect: {type(exc).__name__}"] += 1
                        await asyncio.sleep(0.2)
                        continue
                    reused = False
                assert reader is not None
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT_S):
                        keep = await self._exchange(reader, writer, file, gzip, reused)
                except _Retry:
                    self.retried += 1
                    keep = False
                except TimeoutError:
                    self.errors["timeout"] += 1
                    keep = False
                except FramingError as exc:
                    self._corrupt(file.url, "bad framing")
                    self._example("bad framing", file, detail=str(exc))
                    keep = False
                except _CutShort as exc:
                    self.cut_short += 1
                    self.cut_short_by[str(exc)] += 1
                    keep = False
                except (OSError, asyncio.IncompleteReadError) as exc:
                    self.errors[f"closed before a response: {type(exc).__name__}"] += 1
                    keep = False
                if keep:
                    reused = True
                else:
                    self._close(writer)
                    writer = reader = None
        finally:
            if writer is not None:
                self._close(writer)

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        file: SiteFile,
        gzip: bool,
        reused: bool,
    ) -> bool:
        """One GET; returns whether the connection may be reused."""
        extra = "Accept-Encoding: gzip\r\n" if gzip else ""
        writer.write(f"GET {file.url} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n{extra}\r\n".encode())
        try:
            await writer.drain()
            raw = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            partial = getattr(exc, "partial", b"")
            if reused and not partial:
                # RFC 9112 §9.3.1: an idle connection may be closed at any time (keep-alive
                # timeout, reclaim at max connections); a client retries the GET.
                raise _Retry from None
            raise
        except asyncio.LimitOverrunError:
            raise FramingError("response head longer than 256 KiB") from None
        head = _parse_head(raw)
        length_text = head.headers.get("content-length")
        if length_text is None or not length_text.isdigit():
            raise FramingError(f"status {head.status} without a valid Content-Length")
        length = int(length_text)
        try:
            body = await _read_body(reader, length)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            # Allowed (issue 8): a server that finds the file changed mid-response closes
            # the connection rather than finish a body that mixes two versions.
            raise _CutShort(file.url) from exc
        self.requests += 1
        self.bytes_received += len(raw) + length
        self.status_counts[head.status] += 1
        if head.status >= 500:
            self.status_5xx += 1
            self._example(
                f"status {head.status}",
                file,
                reason=head.reason,
                body=body[:200].decode(errors="replace"),
            )
        elif head.status != 200:
            self.errors[f"status {head.status}"] += 1
        else:
            self._verify(file, head, body)
        return "close" not in head.headers.get("connection", "").lower()

    def _verify(self, file: SiteFile, head: Head, body: bytes) -> None:
        coding = head.headers.get("content-encoding")
        if coding == "gzip":
            try:
                decoder = zlib.decompressobj(wbits=31)
                body = decoder.decompress(body) + decoder.flush()
                if not decoder.eof or decoder.unused_data:
                    raise zlib.error("gzip stream incomplete or followed by garbage")
            except zlib.error as exc:
                self._corrupt(file.url, "bad gzip")
                self._example("bad gzip", file, detail=str(exc), content_length=len(body))
                return
        elif coding is not None:
            self.errors[f"unexpected Content-Encoding {coding}"] += 1
            return
        if hashlib.sha256(body).digest() in file.valid:
            self.verified += 1
            return
        diagnosis = diagnose(file, body)
        self._corrupt(file.url, diagnosis.split(":", 1)[0] + (f" ({coding})" if coding else ""))
        self._example(
            "body matches no version",
            file,
            length=len(body),
            content_encoding=coding,
            diagnosis=diagnosis,
        )

    async def _aborting(self, rng: random.Random) -> None:
        """GET the 5 MiB file, read a few KiB, disconnect; again and again."""
        await asyncio.sleep(rng.uniform(0, 0.5))
        while not self.stopping:
            try:
                reader, writer = await self._connect()
            except (OSError, TimeoutError) as exc:
                self.errors[f"connect: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.2)
                continue
            reset = rng.random() < 0.5
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    writer.write(
                        f"GET {LARGE_PATH} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n\r\n".encode()
                    )
                    await writer.drain()
                    head = _parse_head(await reader.readuntil(b"\r\n\r\n"))
                    if head.status >= 500:
                        self.status_5xx += 1
                    want = rng.randint(1, 64) * 1024
                    got = 0
                    while got < want:
                        chunk = await reader.read(want - got)
                        if not chunk:
                            raise _CutShort(f"{LARGE_PATH} (aborting client)")
                        got += len(chunk)
                    self.aborted += 1
            except TimeoutError:
                self.errors["timeout (aborting client)"] += 1
            except FramingError as exc:
                self._corrupt(LARGE_PATH, "bad framing")
                self.examples.append({"kind": "bad framing (aborting client)", "detail": str(exc)})
            except _CutShort as exc:
                self.cut_short += 1
                self.cut_short_by[str(exc)] += 1
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                self.errors[f"aborting client: {type(exc).__name__}"] += 1
            finally:
                self._close(writer, reset=reset)
            await asyncio.sleep(rng.uniform(0.05, 0.25))


class _Retry(Exception):
    pass


class _CutShort(Exception):
    """The connection closed inside a body (the server saw the file change)."""


def _parse_head(raw: bytes) -> Head:
    lines = raw[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[1].isdigit():
        raise FramingError(f"not a status line: {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise FramingError(f"not a header line: {line[:60]!r}")
        key = name.decode("latin-1").lower()
        if key in headers:
            raise FramingError(f"repeated {key}")
        headers[key] = value.strip().decode("latin-1")
    reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
    return Head(int(parts[1]), reason, headers)


async def _read_body(reader: asyncio.StreamReader, length: int) -> bytes:
    if length <= 256 * 1024:
        return await reader.readexactly(length)
    chunks: list[bytes] = []
    remaining = length
    while remaining:
        chunk = await reader.read(min(remaining, 256 * 1024))
        if not chunk:
            raise asyncio.IncompleteReadError(b"".join(chunks), length)
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def diagnose(file: SiteFile, body: bytes) -> str:
    """Say what a body that matches no version is made of, page by page."""
    same = [v for v in list(file.versions) if v.length == len(body)]
    if not same:
        lengths = sorted({v.length for v in file.versions})[-5:]
        return f"{len(body)} bytes: no version has that length (recent lengths {lengths})"
    blocks = _block_digests(body)
    sources = [{v.number for v in same if v.blocks[i] == d} for i, d in enumerate(blocks)]
    # Runs of consecutive pages that share a version; "?" for a page of no version
    # (torn inside the page).
    runs: list[tuple[int, int, str]] = []
    index = 0
    while index < len(sources):
        current, start = set(sources[index]), index
        while index + 1 < len(sources) and current and current & sources[index + 1]:
            index += 1
            current &= sources[index]
        label = f"v{min(current)}" if current else "?"
        if not current and runs and runs[-1][2] == "?" and runs[-1][1] == start - 1:
            start = runs.pop()[0]
        runs.append((start, index, label))
        index += 1
    versions = {label for *_, label in runs if label != "?"}
    unknown = sum(1 for s in sources if not s)
    described = ", ".join(
        f"page{'s' if a != b else ''} {a}{f'-{b}' if a != b else ''}: {label}"
        for a, b, label in runs[:8]
    )
    kind = "torn" if len(versions) > 1 or unknown else "unexplained"
    return (
        f"{kind}: {len(body)} bytes = {len(versions)} versions + {unknown} page(s) of none "
        f"({described}{', ...' if len(runs) > 8 else ''})"
    )


# -- One model -------------------------------------------------------------------------


@dataclass
class ModelResult:
    model: str
    status: str = "ok"  # ok, FAIL, or failed to start
    detail: str = ""
    seconds: float = 0.0
    connections: int = 0
    held_min: int = 0
    held_peak: int = 0
    requests: int = 0
    requests_per_s: float = 0.0
    verified: int = 0
    mib_received: float = 0.0
    status_5xx: int = 0
    corrupted: int = 0
    corrupted_by: dict[str, int] = field(default_factory=dict)
    cut_short: int = 0
    cut_short_by: dict[str, int] = field(default_factory=dict)
    other_errors: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    status_counts: dict[int, int] = field(default_factory=dict)
    aborted: int = 0
    retried: int = 0
    connects: int = 0
    edits: dict[str, int] = field(default_factory=dict)
    fds_before: int = 0
    fds_peak: int = 0
    fds_after: int = 0
    drain_s: float = 0.0
    rss_before_mib: float = 0.0
    rss_peak_mib: float = 0.0
    rss_hwm_mib: float = 0.0
    rss_after_mib: float = 0.0
    server_cpu_s: float = 0.0
    server_requests: int | None = None
    server_log_tracebacks: int = 0
    server_log_lines: list[str] = field(default_factory=list)
    loadavg_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    loadavg_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    examples: list[dict[str, object]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _sitepeek_launch(model: str, processes: int | None) -> ServerSpec:
    def build(ctx: LaunchContext) -> Launch:
        argv = [sys.executable, "-m", "sitepeek", "serve", str(ctx.site), "--port", "0"]
        argv += ["--strict-port", "--workers", model, "--quiet"]
        if processes is not None and model == "processes":
            argv += ["--processes", str(processes)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        src = REPO / "src"
        if (src / "sitepeek").is_dir():
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
        return Launch(argv, None, env, unsupported_value=model)

    return ServerSpec(f"sitepeek-{model}", build)


def _warm_up(port: int, files: list[SiteFile]) -> None:
    """One GET (and one gzip GET) per file, so lazily created state exists before the
    baseline is taken; every body must already verify."""
    for file in files:
        for gzip in (False, True) if file.gzip else (False,):
            extra = "Accept-Encoding: gzip\r\n" if gzip else ""
            request = f"GET {file.url} HTTP/1.1\r\nHost: {HOST}\r\n{extra}Connection: close\r\n\r\n"
            with socket.create_connection((HOST, port), timeout=10) as sock:
                sock.sendall(request.encode())
                data = bytearray()
                while chunk := sock.recv(1 << 20):
                    data += chunk
            raw, _, body = bytes(data).partition(b"\r\n\r\n")
            head = _parse_head(raw + b"\r\n\r\n")
            if head.headers.get("content-encoding") == "gzip":
                body = zlib.decompress(body, wbits=31)
            if head.status != 200:
                raise RuntimeError(f"warm-up: {file.url} answered {head.status}")
            if hashlib.sha256(body).digest() not in file.valid:
                raise RuntimeError(
                    f"warm-up: {file.url} is not the file as written (for HTML: does "
                    "SNIPPET still match the reload tag the server injects?)"
                )


def _wait_for_drain(pid: int, baseline: int, tolerance: int, timeout: float) -> tuple[int, float]:
    """Poll until the server's descriptors are back within ``tolerance`` of ``baseline``."""
    start = time.monotonic()
    fds = fd_count(process_tree(pid))
    while time.monotonic() - start < timeout:
        fds = fd_count(process_tree(pid))
        if fds <= baseline + tolerance:
            break
        time.sleep(0.1)
    return fds, time.monotonic() - start


def run_model(model: str, args: argparse.Namespace, scratch: Path) -> ModelResult:
    result = ModelResult(model, seconds=args.seconds, connections=args.connections)
    site = scratch / f"site-{model}"
    files = build_site(site, args.seed, args.large_edits)
    ctx = LaunchContext(site, scratch / f"run-{model}", pinned=False)
    result.loadavg_before = os.getloadavg()
    try:
        with RunningServer(_sitepeek_launch(model, args.processes), ctx, []) as server:
            assert server.process is not None
            pid = server.process.pid
            _warm_up(server.port, files)
            time.sleep(1.0)
            pids = process_tree(pid)
            result.fds_before = fd_count(pids)
            result.rss_before_mib = rss_mib(pids)
            cpu_before = cpu_seconds(pids)
            _progress(
                f"{model}: pid {pid}, port {server.port}, {len(pids)} process(es), "
                f"{result.fds_before} fds, {result.rss_before_mib:.1f} MiB; "
                f"{args.connections} connections for {args.seconds:g} s"
            )
            client = Client(server.port, files, args.connections, args.abort_fraction, args.seed)
            editor = Editor(files, args.edit_rate, args.seed + 1)
            sampler = Sampler(pid, client)
            sampler.start()
            editor.start()
            started = time.monotonic()
            try:
                asyncio.run(client.run(args.seconds))
            finally:
                editor.stop.set()
                editor.join(30)
            elapsed = time.monotonic() - started
            sampler.stop.set()
            sampler.join(5)
            if server.process.poll() is not None:
                raise RuntimeError(f"the server exited with {server.process.returncode}")
            pids = process_tree(pid)
            result.server_cpu_s = cpu_seconds(pids) - cpu_before
            result.rss_hwm_mib = rss_mib(pids, "VmHWM")
            fds_after, result.drain_s = _wait_for_drain(
                pid, result.fds_before, args.fd_tolerance, args.drain_timeout
            )
            time.sleep(0.5)  # let the allocator settle after the last close
            pids = process_tree(pid)
            result.fds_after = fd_count(pids)
            result.rss_after_mib = rss_mib(pids)
            result.fds_peak = max(sampler.peak_fds, fds_after)
            result.rss_peak_mib = max(sampler.peak_rss, result.rss_before_mib)
            _fill(result, client, editor, sampler, elapsed)
        result.loadavg_after = os.getloadavg()
        _read_logs(result, server)
    except StartError as error:
        result.status, result.detail = f"could not start ({error.status})", error.detail
        result.failures.append(result.status)
    except (OSError, RuntimeError) as error:
        result.status, result.detail = "FAIL", f"{type(error).__name__}: {error}"
        result.failures.append(result.detail)
    _judge(result, args.fd_tolerance)
    return result


def _fill(
    result: ModelResult, client: Client, editor: Editor, sampler: Sampler, elapsed: float
) -> None:
    held = [n for t, n in sampler.held if RAMP_S <= t <= result.seconds - 0.5]
    held = held or [n for _, n in sampler.held] or [0]
    result.held_min, result.held_peak = min(held), max(n for _, n in sampler.held or [(0, 0)])
    result.requests = client.requests
    result.requests_per_s = client.requests / min(elapsed, result.seconds)
    result.verified = client.verified
    result.mib_received = client.bytes_received / 2**20
    result.status_5xx = client.status_5xx
    result.corrupted = client.corrupted
    result.corrupted_by = dict(client.corrupted_by.most_common())
    result.cut_short = client.cut_short
    result.cut_short_by = dict(client.cut_short_by.most_common())
    result.errors = dict(client.errors.most_common())
    result.other_errors = sum(client.errors.values())
    result.status_counts = dict(sorted(client.status_counts.items()))
    result.aborted = client.aborted
    result.retried = client.retried
    result.connects = client.connects
    result.edits = dict(editor.counts)
    result.examples = client.examples
    if editor.error:
        result.failures.append(f"editor: {editor.error}")


def _read_logs(result: ModelResult, server: RunningServer) -> None:
    logs = [server.ctx.workdir / f"{server.spec.name}.{s}.log" for s in ("stdout", "stderr")]
    text = "\n".join(p.read_text(errors="replace") for p in logs if p.exists())
    result.server_log_tracebacks = text.count("Traceback")
    interesting = [
        line
        for line in text.splitlines()
        if line.strip() and not line.startswith((" ", "\t")) and "http://" not in line
    ]
    result.server_log_lines = interesting[-20:]
    match = STOPPED.search(text)
    if match:
        result.server_requests = int(match.group(1).replace(",", ""))


def _judge(result: ModelResult, tolerance: int) -> None:
    if result.status_5xx:
        result.failures.append(f"{result.status_5xx} responses with a 5xx status")
    if result.corrupted:
        result.failures.append(f"{result.corrupted} corrupted bodies")
    if result.fds_after > result.fds_before + tolerance:
        leaked = result.fds_after - result.fds_before
        result.failures.append(f"{leaked} descriptors not released ({result.drain_s:.0f} s)")
    if result.server_log_tracebacks:
        result.failures.append(f"{result.server_log_tracebacks} tracebacks in the server log")
    if result.failures and result.status == "ok":
        result.status = "FAIL"


# -- Output ----------------------------------------------------------------------------


def render_table(results: list[ModelResult]) -> str:
    header = (
        "| model | connections held | requests (req/s) | 5xx | corrupted | cut short "
        "| other errors "
        "| fds before / peak / after | RSS MiB before / peak / after | result |"
    )
    lines = [header, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"]
    for r in results:
        if r.status.startswith("could not start"):
            lines.append(f"| {r.model} | | | | | | | | | {r.status}: {r.detail} |")
            continue
        held = f"{r.held_min}-{r.held_peak} of {r.connections}"
        lines.append(
            f"| {r.model} | {held} | {r.requests:,} ({r.requests_per_s:,.0f}) | {r.status_5xx} "
            f"| {r.corrupted} | {r.cut_short} | {r.other_errors} "
            f"| {r.fds_before} / {r.fds_peak} / {r.fds_after} "
            f"| {r.rss_before_mib:.0f} / {r.rss_peak_mib:.0f} / {r.rss_after_mib:.0f} "
            f"| {r.status} |"
        )
    return "\n".join(lines)


def render_details(results: list[ModelResult]) -> str:
    out: list[str] = []
    for r in results:
        out.append(f"\n### {r.model}: {r.status}")
        if r.detail:
            out.append(f"- {r.detail}")
        if r.status.startswith("could not start"):
            continue
        out.append(
            f"- {r.verified:,} bodies verified, {r.mib_received:,.0f} MiB received, "
            f"{r.connects:,} connections opened, {r.aborted:,} deliberate mid-response "
            f"disconnects, {r.retried:,} requests retried after the server closed an idle "
            "keep-alive connection"
        )
        edits = ", ".join(f"{n} {mode}" for mode, n in sorted(r.edits.items()))
        out.append(f"- edits: {edits or 'none'}")
        out.append(f"- statuses: {r.status_counts}")
        if r.corrupted_by:
            out.append(f"- corrupted bodies: {r.corrupted_by}")
        if r.cut_short_by:
            out.append(f"- bodies cut short (connection closed mid-body): {r.cut_short_by}")
        if r.errors:
            out.append(f"- other errors: {r.errors}")
        out.append(
            f"- fds back within tolerance after {r.drain_s:.1f} s; server CPU "
            f"{r.server_cpu_s:.1f} s; VmHWM sum {r.rss_hwm_mib:.0f} MiB; server counted "
            f"{r.server_requests if r.server_requests is not None else 'n/a'} requests"
        )
        out.append(
            f"- load average before {_load(r.loadavg_before)}, after {_load(r.loadavg_after)}"
        )
        for failure in r.failures:
            out.append(f"- **failure**: {failure}")
        for example in r.examples:
            out.append(f"- example: {json.dumps(example)}")
        if r.server_log_tracebacks or r.failures:
            for line in r.server_log_lines[-8:]:
                out.append(f"    server log: {line}")
    return "\n".join(out)


def _load(avg: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in avg)


def _progress(message: str) -> None:
    print(f"[soak] {message}", file=sys.stderr, flush=True)


# -- Main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="load per model (default 60)")
    parser.add_argument("--connections", type=int, default=1000, help="default 1000")
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write all results here")
    parser.add_argument(
        "--abort-fraction",
        type=float,
        default=0.05,
        help="share of connections that disconnect mid-response (default 0.05)",
    )
    parser.add_argument(
        "--edit-rate", type=float, default=8.0, help="file edits per second (default 8)"
    )
    parser.add_argument("--processes", type=int, help="--processes for the processes model")
    parser.add_argument(
        "--fd-tolerance", type=int, default=4, help="fds above the baseline still fine (4)"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=20.0, help="seconds to wait for fds (20)"
    )
    parser.add_argument(
        "--large-edits",
        default="both",
        help="how the editor rewrites the 5 MiB file: replace (atomic rename), overwrite "
        "(in place, same size), both (default) or none",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    large = {"both": "replace,overwrite", "none": ""}.get(args.large_edits, args.large_edits)
    args.large_edits = tuple(m for m in large.split(",") if m)
    if set(args.large_edits) - {"replace", "overwrite"}:
        parser.error("--large-edits takes replace, overwrite, both or none")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        parser.error(f"unknown models {unknown}; known: {','.join(MODELS)}")
    if args.seconds <= 0 or args.connections < 1 or not 0 <= args.abort_fraction <= 1:
        parser.error("--seconds and --connections must be positive, --abort-fraction in 0..1")
    if args.edit_rate <= 0:
        parser.error("--edit-rate must be positive")
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    raise_open_files_limit()  # the client holds `--connections` sockets too
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.connections + 100:
        _progress(f"warning: RLIMIT_NOFILE {soft} is low for {args.connections} connections")
    loadavg = os.getloadavg()
    machine: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": loadavg,
    }
    print(
        f"## sitepeek soak\n\n- {machine['date']}, {machine['nproc']} CPUs, Python "
        f"{machine['python']}, Linux {machine['kernel']}, load average "
        f"{_load(loadavg)}\n- {args.connections} connections "
        f"({args.abort_fraction:.0%} disconnecting mid-response), {args.seconds:g} s per "
        f"model, {args.edit_rate:g} edits/s, bundled asyncio client in one process\n",
        flush=True,
    )
    results: list[ModelResult] = []
    try:
        with tempfile.TemporaryDirectory(prefix="sitepeek-soak-") as tmp:
            for model in args.models:
                results.append(run_model(model, args, Path(tmp)))
                _progress(f"{model}: {results[-1].status}")
    except KeyboardInterrupt:
        _progress("interrupted; servers stopped")
        return 130
    finally:
        if args.json:
            document = {
                "machine": machine,
                "args": _jsonable(vars(args)),
                "results": [asdict(r) for r in results],
            }
            args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
            _progress(f"wrote {args.json}")
    print(render_table(results))
    print(render_details(results), flush=True)
    return 1 if any(r.failures for r in results) else 0


def _jsonable(values: dict[str, object]) -> dict[str, object]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


if __name__ == "__main__":
    sys.exit(main())
