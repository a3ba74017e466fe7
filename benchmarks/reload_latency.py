"""Live-reload latency: from a file write to the change showing in headless Chromium.

    python benchmarks/reload_latency.py [--trials 25] [--models greenlets,threads,processes]
                                        [--json out.json] [--timeout 5]

For each worker model a fresh `sitepeek serve SITE --port 0 --workers MODEL --quiet` runs
with the default live-reload settings; one Chromium tab (Playwright) and one raw WebSocket
client are connected to it. Each trial edits one file and times, from just before the
write: the new CSS showing in the page, the reloaded HTML page, and the reload message
reaching the raw client. See "Reload latency" in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import hashlib
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError
from servers import (
    REPO,
    Launch,
    LaunchContext,
    RunningServer,
    ServerSpec,
    StartError,
    _sitepeek,
)

MODELS = ("greenlets", "threads", "processes")
DEFAULT_TRIALS = 25
TRIAL_TIMEOUT_S = 5.0
OPEN_TIMEOUT_S = 15.0  # first load of the page, and a fresh load after a failed trial
SETTLE_S = 0.15  # idle time before each write, after the previous reload has finished
CLOCK_SAMPLES = 7  # round trips per clock-offset estimate; the fastest one wins
CSS_PATH = "css/site.css"
HTML_PATH = "index.html"
WS_PATH = "/__sitepeek__/ws"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
CHROMIUM_ARGS = [  # as in tests/test_browser.py
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CONNECTED = "window.__sitepeek__ && window.__sitepeek__.connected === true"
ONE_STYLESHEET = "document.querySelectorAll('link[rel~=\"stylesheet\"]').length === 1"

# Runs in every document before its own scripts. Every in-page time is absolute
# (performance.timeOrigin + performance.now(), ms), so a time taken in the document that
# is being replaced can be handed to the next one through sessionStorage.
INIT_SCRIPT = """
(() => {
  const abs = () => performance.timeOrigin + performance.now();
  const bench = (window.__bench__ = { messages: [], dcl: null, fcp: null, text: null });
  const keep = (key, value) => {
    try { sessionStorage.setItem(key, JSON.stringify(value)); } catch (_) {}
  };
  // Time every message on sitepeek's own socket. This listener is added in the
  // constructor, before reload.js sets onmessage, so it runs first.
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) => {
        const entry = [abs(), String(event.data)];
        bench.messages.push(entry);
        // Only reload messages: the next document's hello must not overwrite it.
        if (entry[1].includes('"reload"')) keep("bench:message", entry);
      });
    }
  };
  document.addEventListener("DOMContentLoaded", () => {
    bench.dcl = abs();
    const p = document.getElementById("msg");
    bench.text = p ? p.textContent : null;
  });
  try {
    new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) {
        if (entry.name === "first-contentful-paint") {
          bench.fcp = performance.timeOrigin + entry.startTime;
        }
      }
    }).observe({ type: "paint", buffered: true });
  } catch (_) {}
})();
"""

# Arms the CSS probe: the computed colour of #msg is checked on every animation frame and
# whenever a <link> finishes loading (capture phase, before reload.js drops the old sheet).
ARM_CSS_PROBE = """
(expected) => {
  const abs = () => performance.timeOrigin + performance.now();
  const bench = window.__bench__;
  if (bench.css) bench.css.cancelled = true;
  const el = document.getElementById("msg");
  const probe = (bench.css = {
    expected, applied: null, via: null, frame: null, cancelled: false,
    armedAt: abs(), messagesBefore: bench.messages.length,
  });
  const check = (via) => {
    if (getComputedStyle(el).color !== expected) return false;
    if (probe.applied === null) { probe.applied = abs(); probe.via = via; }
    return true;
  };
  const onLoad = (event) => {
    if (event.target instanceof HTMLLinkElement) check("link load");
  };
  document.addEventListener("load", onLoad, true);
  const frame = () => {
    if (probe.cancelled) return document.removeEventListener("load", onLoad, true);
    if (check("frame")) {
      probe.frame = abs();
      return document.removeEventListener("load", onLoad, true);
    }
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
}
"""

CSS_RESULT = """
() => {
  const probe = window.__bench__.css;
  const reload = window.__bench__.messages.slice(probe.messagesBefore)
    .filter(([, data]) => data.includes('"reload"'));
  return { ...probe, message: reload.length ? reload[0][0] : null, reloadMessages: reload.length };
}
"""

HTML_RESULT = """
() => {
  const origin = performance.timeOrigin;
  const TIMES = ["startTime", "connectStart", "connectEnd", "requestStart", "responseStart",
                 "responseEnd"];
  const timing = (entry) => {
    const out = { path: new URL(entry.name).pathname, transferSize: entry.transferSize,
                  status: entry.responseStatus ?? null };
    for (const key of TIMES) out[key] = entry[key] ? origin + entry[key] : null;
    return out;
  };
  const read = (key) => {
    try { return JSON.parse(sessionStorage.getItem(key)); } catch (_) { return null; }
  };
  const nav = performance.getEntriesByType("navigation")[0];
  const message = read("bench:message");
  return {
    origin,
    navigation: nav ? { ...timing(nav), type: nav.type } : null,
    resources: performance.getEntriesByType("resource").map(timing),
    dcl: window.__bench__.dcl,
    fcp: window.__bench__.fcp,
    message: message ? message[0] : null,
  };
}
"""

TIMING_KEYS = frozenset(
    ("startTime", "connectStart", "connectEnd", "requestStart", "responseStart", "responseEnd")
)

CLEAR_HTML_MARKS = """
() => sessionStorage.removeItem("bench:message")
"""


# -- Raw WebSocket client -------------------------------------------------------------------


class WsError(Exception):
    pass


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (FIN set, masked as RFC 6455 §5.3 requires); control-sized only."""
    if len(payload) > 125:
        raise ValueError("control frame payload too long")
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + masked


class ReloadSocket:
    """A minimal blocking WebSocket client of sitepeek's reload socket.

    `next_message()` returns `(perf_counter() when the frame was complete, message)` for
    each text frame, answering pings on the way; the time is taken right after the
    `recv` that completed the frame returned.
    """

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {WS_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: http://127.0.0.1:{port}\r\n\r\n"
        )
        self._sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise WsError(f"connection closed during the handshake: {head[:80]!r}")
            head += chunk
        head, self._buffer = head.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise WsError(f"handshake refused: {status.decode(errors='replace')}")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest())
        if b"sec-websocket-accept: " + accept.lower() not in head.lower():
            raise WsError("bad Sec-WebSocket-Accept")
        _, hello = self.next_message()
        if hello.get("type") != "hello":
            raise WsError(f"first frame is not a hello: {hello}")
        self._sock.settimeout(None)

    def _recv_exactly(self, n: int) -> tuple[bytes, float]:
        at = time.perf_counter()
        while len(self._buffer) < n:
            chunk = self._sock.recv(65536)
            at = time.perf_counter()
            if not chunk:
                raise EOFError
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data, at

    def next_message(self) -> tuple[float, dict[str, Any]]:
        """The next text message (sitepeek never fragments them); EOFError at the end."""
        while True:
            head, _ = self._recv_exactly(2)
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._recv_exactly(2)[0])[0]
            elif length == 127:
                length = struct.unpack("!Q", self._recv_exactly(8)[0])[0]
            payload, at = self._recv_exactly(length)
            if opcode == 0x1:  # text
                try:
                    return at, json.loads(payload)
                except ValueError:
                    continue
            if opcode == 0x9:  # ping
                self._sock.sendall(_masked_frame(0xA, payload))
            elif opcode == 0x8:  # close
                with contextlib.suppress(OSError):
                    self._sock.sendall(_masked_frame(0x8, payload[:2]))
                raise EOFError


def raw_client_main(port: int) -> int:
    """`--raw-client PORT`: print one JSON line per message, with its arrival time.

    Runs in a process of its own, so that its timestamps never wait for the GIL while
    the benchmark process is busy with Playwright's events (which happens exactly when a
    page reloads). perf_counter() is CLOCK_MONOTONIC on Linux: the same clock in both.
    """
    try:
        client = ReloadSocket(port)
    except (OSError, WsError, EOFError) as error:
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}), flush=True)
        return 1
    print(json.dumps({"ready": True}), flush=True)
    try:
        while True:
            at, message = client.next_message()
            print(json.dumps({"at": at, "message": message}), flush=True)
    except (EOFError, OSError):
        return 0


class RawClient:
    """The parent's side of `--raw-client`: a child process and a queue of its messages."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.messages: queue.Queue[tuple[float, dict[str, Any]] | None] = queue.Queue()
        self._process = subprocess.Popen(
            [sys.executable, __file__, "--raw-client", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._ready: queue.Queue[dict[str, Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, name="raw-client", daemon=True)
        self._thread.start()
        try:
            status = self._ready.get(timeout=timeout)
        except queue.Empty:
            status = {"error": f"no handshake in {timeout:g} s"}
        if "error" in status:
            self.close()
            raise WsError(f"raw WebSocket client: {status['error']}")

    def _pump(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if "at" in item:
                self.messages.put((float(item["at"]), item["message"]))
            else:
                self._ready.put(item)
        self._ready.put({"error": "the client exited"})
        self.messages.put(None)  # the end

    def drain(self) -> list[dict[str, Any]]:
        """Messages that arrived since the last look (stray ones, between trials)."""
        stray = []
        while True:
            try:
                item = self.messages.get_nowait()
            except queue.Empty:
                return stray
            if item is None:
                self.messages.put(None)
                return stray
            stray.append(item[1])

    def wait_reload(self, path: str, deadline: float) -> tuple[float, list[dict[str, Any]]]:
        """perf_counter() when a reload naming `path` arrived, and the other messages seen."""
        others = []
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError("no reload message on the raw WebSocket")
            try:
                item = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            if item is None:
                self.messages.put(None)
                raise TimeoutError("the raw WebSocket closed")
            at, message = item
            if message.get("type") == "reload" and path in message.get("paths", []):
                return at, others
            others.append(message)

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._thread.join(2)
        if self._process.stdout is not None:
            self._process.stdout.close()


# -- The site -------------------------------------------------------------------------------


def index_html(text: str) -> str:
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<title>reload latency</title>\n"
        '<link rel="stylesheet" href="css/site.css"></head>\n<body>\n'
        "<h1>Reload latency</h1>\n"
        f'<p id="msg">{text}</p>\n'
        "</body></html>\n"
    )


def site_css(color: str) -> str:
    return f"body {{ font-family: sans-serif }}\n#msg {{ color: {color} }}\n"


def trial_color(n: int) -> str:
    """A colour no earlier trial used (n counts every CSS write of the run)."""
    return f"rgb({n % 256}, {n // 256 % 256}, 200)"


def build_site(root: Path) -> None:
    (root / "css").mkdir(parents=True)
    (root / HTML_PATH).write_text(index_html("initial"))
    (root / CSS_PATH).write_text(site_css("rgb(0, 0, 0)"))
    (root / "small.txt").write_text("ready\n")  # what RunningServer polls for readiness


def timed_write(path: Path, text: str) -> float:
    """Write `text` to `path`, the way an editor's plain save does; perf_counter() before."""
    start = time.perf_counter()
    with path.open("w") as file:
        file.write(text)
    return start


# -- Clocks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageClock:
    """Maps a document's absolute time (timeOrigin + now(), ms) to perf_counter() ms.

    Estimated from the fastest of a few `evaluate` round trips, assuming the page read its
    clock half-way through: the error is at most `uncertainty_ms` (half that round trip).
    """

    offset_ms: float
    uncertainty_ms: float

    @classmethod
    def sample(cls, page: Page, samples: int = CLOCK_SAMPLES) -> PageClock:
        best: PageClock | None = None
        for _ in range(samples):
            before = time.perf_counter()
            page_ms = float(page.evaluate("performance.timeOrigin + performance.now()"))
            after = time.perf_counter()
            estimate = cls(page_ms - (before + after) * 500, (after - before) * 500)
            if best is None or estimate.uncertainty_ms < best.uncertainty_ms:
                best = estimate
        assert best is not None
        return best

    def to_perf_ms(self, page_ms: float | None) -> float | None:
        return None if page_ms is None else page_ms - self.offset_ms


# -- Trials ---------------------------------------------------------------------------------


@dataclass
class Trial:
    kind: str  # "css" or "html"
    index: int
    ok: bool = False
    error: str | None = None
    # Milliseconds after the write began; None when not seen.
    applied_ms: float | None = None  # css: new computed style; html: DOMContentLoaded
    frame_ms: float | None = None  # css: first animation frame with the new style
    fcp_ms: float | None = None  # html: first contentful paint of the new document
    page_message_ms: float | None = None  # the reload message at the page's socket
    navigation_start_ms: float | None = None  # html: the new document's timeOrigin
    request_start_ms: float | None = None
    response_start_ms: float | None = None
    subresources_start_ms: float | None = None  # html: first subresource request began
    subresources_done_ms: float | None = None  # html: last subresource before DCL loaded
    navigation: dict[str, Any] | None = None  # html: the new document's navigation timing
    resources: list[dict[str, Any]] = field(default_factory=list)  # html: resource timing
    raw_message_ms: float | None = None  # the reload message at the raw client
    detected_by: str | None = None  # css: "link load" or "frame"
    navigations: int = 0  # main-frame navigations during the trial
    stray_messages: list[dict[str, Any]] = field(default_factory=list)
    clock_uncertainty_ms: float | None = None


@dataclass
class ModelRun:
    model: str
    status: str = "ok"  # ok, failed, unavailable
    detail: str | None = None
    notes: list[str] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)
    server_log: str = ""  # the tail of the server's stdout and stderr


class Bench:
    """One server, one tab and one raw WebSocket client for one worker model."""

    def __init__(self, server: RunningServer, site: Path, page: Page, timeout_s: float) -> None:
        self.server = server
        self.site = site
        self.page = page
        self.timeout_s = timeout_s
        self.navigations = 0
        self.css_writes = 0
        page.on("framenavigated", self._navigated)
        self.raw = RawClient(server.port)

    def _navigated(self, frame: object) -> None:
        if frame is self.page.main_frame:
            self.navigations += 1

    def close(self) -> None:
        self.raw.close()

    def open(self) -> None:
        self.page.goto(self.server.url + "/", timeout=OPEN_TIMEOUT_S * 1000)
        self._ready(OPEN_TIMEOUT_S)

    def _ready(self, timeout_s: float | None = None) -> None:
        """The previous reload is over: tab connected, one stylesheet, a quiet moment."""
        ms = (timeout_s or self.timeout_s) * 1000
        self.page.wait_for_function(f"{CONNECTED} && {ONE_STYLESHEET}", timeout=ms)
        time.sleep(SETTLE_S)

    def recover(self) -> None:
        """After a failed trial: a fresh load of the page, so the next trial starts clean.

        A late reload can interrupt that load, so it is tried a few times.
        """
        for _ in range(3):
            time.sleep(SETTLE_S)
            try:
                self.open()
            except PlaywrightError:
                continue
            return

    def run_trial(self, kind: str, index: int) -> Trial:
        trial = Trial(kind, index)
        stray = self.raw.drain()
        if stray:
            trial.stray_messages = stray
        try:
            if kind == "css":
                self._css(trial)
            else:
                self._html(trial)
            trial.ok = True
        except (PlaywrightError, TimeoutError, WsError) as error:
            first_line = (str(error).splitlines() or [""])[0]
            trial.error = f"{type(error).__name__}: {first_line}"
            self.recover()
        return trial

    def _raw_message(self, trial: Trial, path: str, start: float, deadline: float) -> str | None:
        """Wait for the raw client's reload message; an error text if it did not come."""
        try:
            at, others = self.raw.wait_reload(path, deadline)
        except TimeoutError as error:
            return str(error)
        trial.raw_message_ms = (at - start) * 1000
        trial.stray_messages += others
        return None

    def _css(self, trial: Trial) -> None:
        self.css_writes += 1
        color = trial_color(self.css_writes)
        clock = PageClock.sample(self.page)
        trial.clock_uncertainty_ms = clock.uncertainty_ms
        self.page.evaluate(ARM_CSS_PROBE, color)
        self.navigations = 0
        start = timed_write(self.site / CSS_PATH, site_css(color))
        deadline = start + self.timeout_s
        raw_error = self._raw_message(trial, CSS_PATH, start, deadline)
        remaining_ms = max(1.0, (deadline - time.perf_counter()) * 1000)
        self.page.wait_for_function(
            "window.__bench__.css.frame !== null", timeout=remaining_ms, polling="raf"
        )
        result = self.page.evaluate(CSS_RESULT)
        trial.navigations = self.navigations
        start_ms = start * 1000
        trial.applied_ms = _since(clock.to_perf_ms(result["applied"]), start_ms)
        trial.frame_ms = _since(clock.to_perf_ms(result["frame"]), start_ms)
        trial.page_message_ms = _since(clock.to_perf_ms(result["message"]), start_ms)
        trial.detected_by = result["via"]
        if trial.navigations:
            raise TimeoutError(f"a CSS edit navigated the page ({trial.navigations}x)")
        if raw_error:
            raise TimeoutError(raw_error)
        self._ready()

    def _html(self, trial: Trial) -> None:
        text = f"edit {trial.index} {time.time_ns():x}"
        self.page.evaluate(CLEAR_HTML_MARKS)
        old = PageClock.sample(self.page)
        self.navigations = 0
        start = timed_write(self.site / HTML_PATH, index_html(text))
        deadline = start + self.timeout_s
        raw_error = self._raw_message(trial, HTML_PATH, start, deadline)
        remaining_ms = max(1.0, (deadline - time.perf_counter()) * 1000)
        self.page.wait_for_function(
            f"window.__bench__ && window.__bench__.dcl !== null"
            f" && window.__bench__.text === {json.dumps(text)} && {CONNECTED}",
            timeout=remaining_ms,
            polling="raf",
        )
        trial.navigations = self.navigations
        result = self.page.evaluate(HTML_RESULT)
        new = PageClock.sample(self.page)
        trial.clock_uncertainty_ms = max(old.uncertainty_ms, new.uncertainty_ms)
        start_ms = start * 1000
        trial.applied_ms = _since(new.to_perf_ms(result["dcl"]), start_ms)
        trial.fcp_ms = _since(new.to_perf_ms(result["fcp"]), start_ms)
        trial.navigation_start_ms = _since(new.to_perf_ms(result["origin"]), start_ms)
        trial.navigation = _timing_since(result["navigation"], new, start_ms)
        trial.resources = [_timing_since(e, new, start_ms) for e in result["resources"]]
        if trial.navigation is not None:
            trial.request_start_ms = trial.navigation["requestStart"]
            trial.response_start_ms = trial.navigation["responseStart"]
        before_dcl = [
            r
            for r in trial.resources
            if r["startTime"] is not None
            and r["responseEnd"] is not None
            and trial.applied_ms is not None
            and r["startTime"] < trial.applied_ms
        ]
        trial.subresources_start_ms = min((r["startTime"] for r in before_dcl), default=None)
        trial.subresources_done_ms = max((r["responseEnd"] for r in before_dcl), default=None)
        # Taken by the old document, so its clock converts it.
        trial.page_message_ms = _since(old.to_perf_ms(result["message"]), start_ms)
        if trial.navigations != 1:
            raise TimeoutError(f"expected one navigation, saw {trial.navigations}")
        if raw_error:
            raise TimeoutError(raw_error)
        self._ready()


def _timing_since(entry: Any, clock: PageClock, start_ms: float) -> Any:
    """A resource-timing entry with every time as ms after the write (None stays None)."""
    if entry is None:
        return None
    return {
        k: _since(clock.to_perf_ms(v), start_ms) if k in TIMING_KEYS else v
        for k, v in entry.items()
    }


def _since(at_ms: float | None, start_ms: float) -> float | None:
    return None if at_ms is None else at_ms - start_ms


# -- Statistics and report ------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default, `inclusive`)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


Metric = tuple[str, str, Callable[[Trial], float | None]]


def _diff(later: str, earlier: str) -> Callable[[Trial], float | None]:
    def value(trial: Trial) -> float | None:
        a, b = getattr(trial, later), getattr(trial, earlier)
        return None if a is None or b is None else a - b

    return value


METRICS: list[Metric] = [
    ("CSS applied (write → new computed style)", "css", lambda t: t.applied_ms),
    ("CSS first frame with new style (rAF)", "css", lambda t: t.frame_ms),
    ("HTML reloaded (write → DOMContentLoaded, new text)", "html", lambda t: t.applied_ms),
    ("HTML first contentful paint", "html", lambda t: t.fcp_ms),
    ("message at raw WS client, CSS write", "css", lambda t: t.raw_message_ms),
    ("message at raw WS client, HTML write", "html", lambda t: t.raw_message_ms),
    ("↳ CSS: write → message at page socket", "css", lambda t: t.page_message_ms),
    ("↳ CSS: message → style applied", "css", _diff("applied_ms", "page_message_ms")),
    ("↳ HTML: write → message at page socket", "html", lambda t: t.page_message_ms),
    ("↳ HTML: message → navigation start", "html", _diff("navigation_start_ms", "page_message_ms")),
    (
        "↳ HTML: navigation start → first response byte",
        "html",
        _diff("response_start_ms", "navigation_start_ms"),
    ),
    (
        "↳ HTML: first response byte → CSS and reload.js requested",
        "html",
        _diff("subresources_start_ms", "response_start_ms"),
    ),
    (
        "↳ HTML: CSS and reload.js requested → loaded",
        "html",
        _diff("subresources_done_ms", "subresources_start_ms"),
    ),
    (
        "↳ HTML: CSS and reload.js loaded → DOMContentLoaded",
        "html",
        _diff("applied_ms", "subresources_done_ms"),
    ),
]


def summarize(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "p95": percentile(values, 0.95),
        "min": min(values),
        "max": max(values),
    }


def render_model(run: ModelRun) -> str:
    lines = [f"### {run.model}", ""]
    if run.status != "ok":
        lines += [f"**{run.status}**: {run.detail}", ""]
        if not run.trials:
            return "\n".join([*lines, *(f"- {note}" for note in run.notes), ""])
    lines += [f"- {note}" for note in run.notes]
    failed = {
        kind: [t for t in run.trials if t.kind == kind and not t.ok] for kind in ("css", "html")
    }
    total = {kind: sum(1 for t in run.trials if t.kind == kind) for kind in ("css", "html")}
    for kind in ("css", "html"):
        lines.append(f"- {kind.upper()} trials: {total[kind]}, failed: {len(failed[kind])}")
        lines += [f"  - trial {t.index}: {t.error}" for t in failed[kind]]
    strays = [t for t in run.trials if t.stray_messages]
    if strays:
        extra = sum(len(t.stray_messages) for t in strays)
        lines.append(f"- unexpected extra WebSocket messages: {extra} (in {len(strays)} trials)")
    uncertainty = [t.clock_uncertainty_ms for t in run.trials if t.clock_uncertainty_ms]
    if uncertainty:
        lines.append(
            f"- page↔Python clock mapping: ±{statistics.median(uncertainty):.2f} ms median"
            f" (max ±{max(uncertainty):.2f})"
        )
    css_via = [t.detected_by for t in run.trials if t.kind == "css" and t.ok]
    if css_via:
        by_load = sum(1 for v in css_via if v == "link load")
        lines.append(
            f"- CSS change first seen at the link's load event in {by_load}/{len(css_via)}"
        )
    lines += [
        "",
        "| metric | median ms | p95 ms | min | max | n |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, kind, value in METRICS:
        values = [v for t in run.trials if t.kind == kind and t.ok and (v := value(t)) is not None]
        if not values:
            lines.append(f"| {name} | n/a | | | | 0 |")
            continue
        s = summarize(values)
        lines.append(
            f"| {name} | {s['median']:.1f} | {s['p95']:.1f} | {s['min']:.1f} | {s['max']:.1f}"
            f" | {len(values)} |"
        )
    return "\n".join([*lines, ""])


# -- Machine --------------------------------------------------------------------------------


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def default_reload_delay(site: Path) -> str:
    """The effective --reload-delay when none is given, as `--print-config` reports it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SITEPEEK_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "sitepeek", "serve", str(site), "--print-config"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd=site,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(r"^reload-delay = (\S+)\s*#\s*(\S+)", result.stdout, re.MULTILINE)
    return f"{match.group(1)} ms ({match.group(2)})" if match else "unknown"


def chromium_version(executable: str) -> str:
    try:
        result = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() or "unknown"


def machine_header(info: dict[str, Any]) -> str:
    return "\n".join(
        [
            "## sitepeek reload latency",
            "",
            f"- date: {info['date']}",
            f"- nproc: {info['nproc']} (usable: {info['usable_cpus']})",
            f"- load average at start: {info['loadavg_start']}",
            f"- chromium: {info['chromium']} (headless, Playwright {info['playwright']})",
            f"- python: {info['python']}, {info['kernel']}",
            f"- sitepeek: default config + --quiet; --reload-delay {info['reload_delay']}",
            f"- trials: {info['trials']} CSS + {info['trials']} HTML edits per model,"
            f" timeout {info['timeout_s']:g} s each",
            "- no CPU pinning: server, Chromium, this script and the raw WebSocket client"
            " (a child process) share every CPU",
            "- p95: linear interpolation between closest ranks; times in ms from just before"
            " the write",
            "",
            "Every figure includes the --reload-delay quiet period (the debounce after the last"
            " file event) and the time for inotify to report the write.",
            "",
        ]
    )


# -- Running --------------------------------------------------------------------------------


def _launcher(model: str) -> Callable[[LaunchContext], Launch]:
    base = _sitepeek(model)

    def build(ctx: LaunchContext) -> Launch:
        launch = base(ctx)
        env = {k: v for k, v in (launch.env or os.environ).items() if not k.startswith("SITEPEEK_")}
        return Launch([*launch.argv, "--quiet"], launch.port, env, launch.notes, model)

    return build


def start_server(model: str, site: Path, scratch: Path, run: ModelRun) -> RunningServer | None:
    """A running server, or None (run.status says why); a failed start is retried once."""
    spec = ServerSpec(f"sitepeek-{model}", _launcher(model))
    for attempt in (1, 2):
        ctx = LaunchContext(site, scratch / f"run-{model}-{attempt}", pinned=False)
        server = RunningServer(spec, ctx, [])
        try:
            server.start()
        except StartError as error:
            run.status, run.detail = error.status, error.detail
            log = server._output().decode(errors="replace").strip()
            server.stop()
            if log:
                run.notes.append(f"start attempt {attempt} failed, server output: {log[-500:]!r}")
            if error.status == "unavailable":
                return None
            _progress(f"{model}: start attempt {attempt} failed: {error.detail}")
            continue
        if attempt > 1:
            run.notes.append(f"started on attempt {attempt}; attempt 1: {run.detail}")
        run.status, run.detail = "ok", None
        return server
    return None


def run_model(browser: Browser, model: str, scratch: Path, args: argparse.Namespace) -> ModelRun:
    run = ModelRun(model)
    site = scratch / f"site-{model}"
    build_site(site)
    server = start_server(model, site, scratch, run)
    if server is None:
        return run
    # Every cleanup step runs even if an earlier one raises (Ctrl-C, SIGTERM, a hang in
    # context.close() cut short), and the server is always the last to go.
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(_stop_server, server, run)
        try:
            run.notes.append(f"server: {' '.join(server.launch.argv[2:])}")
            context = browser.new_context()
            cleanup.callback(_close_quietly, context)
            context.add_init_script(INIT_SCRIPT)
            page = context.new_page()
            bench = Bench(server, site, page, args.timeout)
            cleanup.callback(bench.close)
            bench.open()
            for index in range(args.trials):
                if server.process is None or server.process.poll() is not None:
                    run.status, run.detail = "failed", f"the server exited before trial {index}"
                    break
                for kind in ("css", "html"):
                    trial = bench.run_trial(kind, index)
                    run.trials.append(trial)
                    if not trial.ok:
                        _progress(f"{model}: {kind} trial {index} failed: {trial.error}")
        except (PlaywrightError, TimeoutError, WsError, OSError) as error:
            run.status, run.detail = "failed", f"{type(error).__name__}: {error}"
    return run


def _close_quietly(context: BrowserContext) -> None:
    with contextlib.suppress(PlaywrightError):
        context.close()


def _stop_server(server: RunningServer, run: ModelRun) -> None:
    server.stop()
    output = server._output().decode(errors="replace")
    run.server_log = output[-4000:]
    if "Traceback" in output or "internal error" in output:
        run.notes.append("the server logged an error: see server_log in the JSON")


def _models(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown model {unknown or text!r}; known: {MODELS}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help="edits of each kind")
    parser.add_argument(
        "--models", type=_models, default=list(MODELS), help="comma-separated worker models"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write raw numbers here")
    parser.add_argument(
        "--timeout", type=float, default=TRIAL_TIMEOUT_S, help="seconds before a trial fails"
    )
    args = parser.parse_args(argv)
    if args.trials < 1 or args.timeout <= 0:
        parser.error("--trials and --timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--raw-client"] and len(argv) == 2:
        return raw_client_main(int(argv[1]))
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    executable = shutil.which("chromium")
    if executable is None:
        print("chromium is not on PATH", file=sys.stderr)
        return 2
    runs: list[ModelRun] = []
    info: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="sitepeek-reload-") as tmp, sync_playwright() as pw:
            scratch = Path(tmp)
            probe_site = scratch / "probe"
            build_site(probe_site)
            info = {
                "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
                "nproc": os.cpu_count(),
                "usable_cpus": len(os.sched_getaffinity(0)),
                "loadavg_start": loadavg(),
                "chromium": chromium_version(executable),
                "playwright": _playwright_version(),
                "python": platform.python_version(),
                "kernel": f"{platform.system()} {platform.release()}",
                "reload_delay": default_reload_delay(probe_site),
                "trials": args.trials,
                "timeout_s": args.timeout,
            }
            print(machine_header(info), flush=True)
            browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            try:
                info["browser_version"] = browser.version
                for model in args.models:
                    _progress(f"{model}: {args.trials} CSS + {args.trials} HTML trials")
                    run = run_model(browser, model, scratch, args)
                    runs.append(run)
                    print(render_model(run), flush=True)
            finally:
                browser.close()
    except KeyboardInterrupt:
        _progress("interrupted; server and browser stopped")
        return 130
    finally:
        info["loadavg_end"] = loadavg()
        print(f"load average at end: {info['loadavg_end']}", flush=True)
        if args.json:
            document = {"machine": info, "runs": [asdict(run) for run in runs]}
            args.json.write_text(json.dumps(document, indent=2) + "\n")
            _progress(f"wrote {args.json}")
    return 0


def _playwright_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("playwright")
    except PackageNotFoundError:
        return "unknown"


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _progress(message: str) -> None:
    print(f"[reload-latency] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
