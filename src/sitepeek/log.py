"""The request log: one line per request, formatted cheaply and written in batches.

A record is formatted at once (the clock text is made once a second, not per line)
and appended to a batch. The batch is written when the last write is more than
:data:`FLUSH_INTERVAL` ago; otherwise the caller's ``schedule_flush`` is asked to
flush when the interval is up. So a burst of requests costs at most about ten
writes a second, and a lone request followed by silence still shows within 0.1 s.
``schedule_flush`` comes from the worker model (:func:`io_scheduler`: a greenlet or a
thread that sleeps, then flushes), because this module cannot know whether it runs
under gevent. Without one, every line is written at once.

:func:`report_bug` is the other kind of line: an internal error that cost one
connection or response (never the server), on standard error.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

from sitepeek.console import (
    CYAN,
    DIM,
    GREEN,
    RED,
    YELLOW,
    Style,
    color_enabled,
    human_size,
    write_line,
)

if TYPE_CHECKING:
    from sitepeek.concurrency import Io
    from sitepeek.config import Config

__all__ = [
    "FLUSH_INTERVAL",
    "RequestLog",
    "ScheduleFlush",
    "human_size",
    "io_scheduler",
    "make_request_log",
    "report_bug",
]

FLUSH_INTERVAL = 0.1
# A batch this long is written at once, whatever the interval: memory stays bounded.
MAX_BATCH = 1024

ScheduleFlush = Callable[[float, Callable[[], None]], None]
"""``schedule(delay, callback)``: call ``callback`` once, about ``delay`` seconds later."""

_STATUS_COLORS = {1: "", 2: GREEN, 3: CYAN, 4: YELLOW, 5: RED}


class _Clock:
    """Wall-clock text for log lines, rebuilt once a second."""

    __slots__ = ("_offset", "_prefix", "_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""  # HH:MM:SS
        self._prefix = ""  # YYYY-MM-DDTHH:MM:SS
        self._offset = ""  # +HH:MM

    def _update(self, second: int) -> None:
        iso = datetime.fromtimestamp(second).astimezone().isoformat(timespec="seconds")
        self._prefix, self._offset = iso[:19], iso[19:]
        self._text = iso[11:19]
        self._second = second

    def text(self, now: float) -> str:
        if int(now) != self._second:
            self._update(int(now))
        return self._text

    def iso(self, now: float) -> str:
        """ISO 8601 with milliseconds and the UTC offset."""
        if int(now) != self._second:
            self._update(int(now))
        return f"{self._prefix}.{int(now % 1 * 1000):03d}{self._offset}"


class RequestLog:
    """One line per request on ``stream``; thread-safe and cheap, see the module doc.

    ``errors_only`` keeps responses with status 500 and up; ``json_lines`` writes one
    JSON object per line (ts, method, path, status, bytes, ms) instead of text.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        json_lines: bool = False,
        errors_only: bool = False,
        color: bool = False,
        schedule_flush: ScheduleFlush | None = None,
        interval: float = FLUSH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._stream = stream
        # Statuses below this are not logged (-q): the hot path skips the call for them.
        self.min_status = 500 if errors_only else 0
        self._format = self._json_line if json_lines else self._text_line
        self._style = Style(color)
        self._schedule = schedule_flush
        self._interval = interval
        self._clock = clock
        self._wall_clock = wall_clock
        self._wall = _Clock()
        self._stamp_second = -1
        self._stamp = ""
        self._codes: dict[int, str] = {}  # status -> its styled text
        self._lines: list[str] = []
        self._scheduled = False
        self._last_flush = float("-inf")
        self._lock = threading.Lock()  # the batch and its flags; never held while writing
        self._write_lock = threading.Lock()  # batches reach the stream in order
        self._broken = False

    def record(self, method: str, target: str, status: int, size: int, seconds: float) -> None:
        """Log one response: ``size`` bytes sent in ``seconds``."""
        if status < self.min_status:
            return
        line = self._format(method, target, status, size, seconds)
        now = self._clock()
        with self._lock:
            self._lines.append(line)
            if self._scheduled and len(self._lines) < MAX_BATCH:
                return  # a flush is already on its way
            wait = self._last_flush + self._interval - now
            later = wait > 0 and self._schedule is not None and len(self._lines) < MAX_BATCH
            self._scheduled = later
        if later:
            assert self._schedule is not None
            try:
                self._schedule(wait, self.flush)
            except Exception:  # no scheduler any more (shutting down): write now
                self.flush()
            return
        self.flush()

    def flush(self) -> None:
        """Write the lines recorded so far."""
        with self._write_lock:
            with self._lock:
                lines, self._lines = self._lines, []
                self._scheduled = False
                self._last_flush = self._clock()
            if not lines or self._broken:
                return
            try:
                self._stream.write("".join(lines))
                self._stream.flush()
            except (OSError, ValueError):  # stdout closed or gone: serving goes on
                self._broken = True

    def close(self) -> None:
        """Flush; call once the process stops serving."""
        self.flush()

    # -- formats --------------------------------------------------------------------
    def _text_line(self, method: str, target: str, status: int, size: int, seconds: float) -> str:
        now = self._wall_clock()
        if int(now) != self._stamp_second:  # styled once a second, not per line
            self._stamp_second = int(now)
            self._stamp = self._style(self._wall.text(now), DIM)
        code = self._codes.get(status)
        if code is None:
            color = _STATUS_COLORS.get(status // 100, "")
            code = self._codes[status] = self._style(str(status), color)
        path = target if target.isprintable() else _escape(target)
        return f"{self._stamp} {method} {path} {code} {human_size(size)} {seconds * 1000:.1f} ms\n"

    def _json_line(self, method: str, target: str, status: int, size: int, seconds: float) -> str:
        ts = self._wall.iso(self._wall_clock())
        return (
            f'{{"ts":"{ts}","method":{_json_string(method)},"path":{_json_string(target)},'
            f'"status":{status},"bytes":{size},"ms":{round(seconds * 1000, 3)}}}\n'
        )


def _json_string(text: str) -> str:
    """A JSON string; request targets and methods rarely need more than quotes."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text)


def _escape(text: str) -> str:
    """Control characters as \\xNN: a request target never drives the terminal."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def io_scheduler(io: Io) -> ScheduleFlush:
    """A ScheduleFlush for a worker model: sleep in a new greenlet (or daemon thread)."""

    def schedule(delay: float, callback: Callable[[], None]) -> None:
        def later() -> None:
            io.signal().wait(delay)
            callback()

        io.spawn(later)

    return schedule


def make_request_log(
    config: Config,
    stream: TextIO | None = None,
    *,
    schedule_flush: ScheduleFlush | None = None,
) -> RequestLog | None:
    """The request log ``config`` asks for, on ``stream`` (default: standard output).

    One per worker process. None when there is nowhere to write (no stdout).
    """
    out = sys.stdout if stream is None else stream
    if out is None:
        return None
    json_lines = config.log_format == "json"
    return RequestLog(
        out,
        json_lines=json_lines,
        errors_only=config.quiet,
        color=not json_lines and color_enabled(out),
        schedule_flush=schedule_flush,
    )


def report_bug(where: str, exc: Exception) -> None:
    """Report an internal error caught at ``where`` (a path, or "connection")."""
    write_line(sys.stderr, f"sitepeek: internal error ({where}): {exc!r}")
