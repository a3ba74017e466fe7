"""The request log: line formats, colors, the errors-only filter and batched writes."""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sitepeek.config import Config
from sitepeek.log import (
    FLUSH_INTERVAL,
    MAX_BATCH,
    RequestLog,
    _json_string,
    human_size,
    io_scheduler,
    make_request_log,
)

ANSI = re.compile(r"\x1b\[[0-9;]*m")
NOON = datetime(2024, 5, 17, 12, 34, 56, 789000).timestamp()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Scheduler:
    """Collects scheduled flushes; the test runs them."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> None:
        self.calls.append((delay, callback))

    def run(self) -> None:
        calls, self.calls = self.calls, []
        for _, callback in calls:
            callback()


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def make_log(**kwargs: object) -> tuple[RequestLog, io.StringIO]:
    stream = io.StringIO()
    log = RequestLog(stream, wall_clock=lambda: NOON, **kwargs)  # type: ignore[arg-type]
    return log, stream


# -- formats ----------------------------------------------------------------------------
def test_text_line_has_time_method_path_status_size_and_duration() -> None:
    log, stream = make_log()
    log.record("GET", "/css/site.css?v=2", 200, 1234, 0.00042)
    assert stream.getvalue() == "12:34:56 GET /css/site.css?v=2 200 1.2 KiB 0.4 ms\n"


@pytest.mark.parametrize(
    ("status", "code"),
    [(101, None), (200, "32"), (204, "32"), (304, "36"), (404, "33"), (500, "31"), (503, "31")],
)
def test_status_is_colored_by_class_when_color_is_on(status: int, code: str | None) -> None:
    log, stream = make_log(color=True)
    log.record("GET", "/", status, 0, 0.001)
    line = stream.getvalue()
    if code is None:
        assert f" {status} " in line
    else:
        assert f"\x1b[{code}m{status}\x1b[0m" in line
    assert ANSI.sub("", line) == f"12:34:56 GET / {status} 0 B 1.0 ms\n"


def test_no_escape_codes_when_color_is_off() -> None:
    log, stream = make_log(color=False)
    for status in (200, 301, 404, 500):
        log.record("GET", "/", status, 0, 0.001)
    assert "\x1b" not in stream.getvalue()


def test_control_characters_in_the_target_cannot_drive_the_terminal() -> None:
    log, stream = make_log()
    log.record("GET", "/a\x1b[2Jb\x07", 404, 0, 0.0)
    assert stream.getvalue().startswith("12:34:56 GET /a\\x1b[2Jb\\x07 404 ")


def test_json_lines_parse_with_every_field() -> None:
    log, stream = make_log(json_lines=True)
    log.record("GET", '/a "quoted"\\path?q=1', 200, 532, 0.0012345)
    log.record("HEAD", "/caf\u00e9", 404, 0, 0.5)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first == {
        "ts": first["ts"],
        "method": "GET",
        "path": '/a "quoted"\\path?q=1',
        "status": 200,
        "bytes": 532,
        "ms": 1.234,
    }
    assert datetime.fromisoformat(first["ts"]).timestamp() == pytest.approx(NOON, abs=0.001)
    assert first["ts"].startswith("2024-05-17T12:34:56.789")
    assert second["path"] == "/caf\u00e9" and second["ms"] == 500.0
    assert "\x1b" not in stream.getvalue()


@given(st.text())
def test_json_strings_always_parse_back(text: str) -> None:
    assert json.loads(_json_string(text)) == text


def test_errors_only_keeps_status_500_and_up() -> None:
    log, stream = make_log(errors_only=True)
    for status in (200, 304, 404, 499, 500, 502):
        log.record("GET", f"/{status}", status, 0, 0.0)
    assert [line.split()[2] for line in stream.getvalue().splitlines()] == ["/500", "/502"]


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (5 << 20, "5.0 MiB")],
)
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text
    assert human_size(3 << 30) == "3.0 GiB"


# -- batching ---------------------------------------------------------------------------
def test_first_line_is_written_at_once_and_a_burst_waits_for_one_flush() -> None:
    clock, scheduler = FakeClock(), Scheduler()
    log, stream = make_log(clock=clock, schedule_flush=scheduler)
    log.record("GET", "/1", 200, 0, 0.0)
    assert stream.getvalue().count("\n") == 1  # a lone request shows at once
    clock.now += 0.01
    log.record("GET", "/2", 200, 0, 0.0)
    log.record("GET", "/3", 200, 0, 0.0)
    assert stream.getvalue().count("\n") == 1
    assert len(scheduler.calls) == 1  # one flush for the whole burst
    assert scheduler.calls[0][0] == pytest.approx(FLUSH_INTERVAL - 0.01)
    scheduler.run()
    assert [line.split()[2] for line in stream.getvalue().splitlines()] == ["/1", "/2", "/3"]


def test_a_line_after_the_interval_is_written_at_once() -> None:
    clock, scheduler = FakeClock(), Scheduler()
    log, stream = make_log(clock=clock, schedule_flush=scheduler)
    log.record("GET", "/1", 200, 0, 0.0)
    clock.now += FLUSH_INTERVAL + 0.001
    log.record("GET", "/2", 200, 0, 0.0)
    assert stream.getvalue().count("\n") == 2
    assert scheduler.calls == []


def test_a_full_batch_is_written_without_waiting() -> None:
    clock, scheduler = FakeClock(), Scheduler()
    log, stream = make_log(clock=clock, schedule_flush=scheduler)
    for i in range(MAX_BATCH + 1):
        log.record("GET", f"/{i}", 200, 0, 0.0)
    assert stream.getvalue().count("\n") == MAX_BATCH + 1


def test_close_writes_what_is_pending() -> None:
    clock, scheduler = FakeClock(), Scheduler()
    log, stream = make_log(clock=clock, schedule_flush=scheduler)
    log.record("GET", "/1", 200, 0, 0.0)
    log.record("GET", "/2", 200, 0, 0.0)
    log.close()
    assert stream.getvalue().count("\n") == 2
    scheduler.run()  # the late scheduled flush finds nothing to write
    assert stream.getvalue().count("\n") == 2


def test_without_a_scheduler_every_line_is_written_at_once() -> None:
    log, stream = make_log()
    for i in range(3):
        log.record("GET", f"/{i}", 200, 0, 0.0)
        assert stream.getvalue().count("\n") == i + 1


def test_a_failing_scheduler_means_writing_now() -> None:
    def broken(delay: float, callback: Callable[[], None]) -> None:
        raise RuntimeError("hub is gone")

    log, stream = make_log(schedule_flush=broken)
    log.record("GET", "/1", 200, 0, 0.0)
    log.record("GET", "/2", 200, 0, 0.0)
    assert stream.getvalue().count("\n") == 2


def test_a_broken_stream_never_breaks_serving() -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError

    log = RequestLog(Broken())
    log.record("GET", "/", 200, 0, 0.0)
    log.record("GET", "/", 200, 0, 0.0)
    log.close()


def test_threads_recording_at_once_lose_and_tear_no_line() -> None:
    def timer(delay: float, callback: Callable[[], None]) -> None:
        thread = threading.Timer(delay, callback)
        thread.daemon = True
        thread.start()

    stream = io.StringIO()
    log = RequestLog(stream, schedule_flush=timer)

    def work(n: int) -> None:
        for i in range(500):
            log.record("GET", f"/{n}/{i}", 200, i, 0.0)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4000
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d GET /\d/\d+ 200 \d+ B 0\.0 ms", x) for x in lines)


def test_io_scheduler_flushes_a_lone_line_under_threads() -> None:
    from sitepeek.workers.threads import ThreadIo

    stream = io.StringIO()
    log = RequestLog(stream, schedule_flush=io_scheduler(ThreadIo()))
    log.record("GET", "/1", 200, 0, 0.0)
    log.record("GET", "/2", 200, 0, 0.0)  # waits for the scheduled flush
    assert stream.getvalue().count("\n") == 1
    deadline = time.monotonic() + 2
    while stream.getvalue().count("\n") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.getvalue().count("\n") == 2


def test_io_scheduler_flushes_a_lone_line_under_gevent() -> None:
    import gevent

    from sitepeek.workers.greenlets import GeventIo

    stream = io.StringIO()
    log = RequestLog(stream, schedule_flush=io_scheduler(GeventIo()))
    log.record("GET", "/1", 200, 0, 0.0)
    log.record("GET", "/2", 200, 0, 0.0)
    assert stream.getvalue().count("\n") == 1
    started = time.monotonic()
    while stream.getvalue().count("\n") < 2 and time.monotonic() - started < 2:
        gevent.sleep(0.01)  # the hub runs the flushing greenlet; no thread involved
    assert stream.getvalue().count("\n") == 2
    assert time.monotonic() - started < 0.5


def test_recording_is_cheap() -> None:
    """Formatting and batching must never be what limits requests per second."""
    log = RequestLog(io.StringIO(), schedule_flush=lambda delay, callback: None)
    count = 20_000
    started = time.perf_counter()
    for _ in range(count):
        log.record("GET", "/css/site.css", 200, 1234, 0.0004)
    per_record = (time.perf_counter() - started) / count
    assert per_record < 50e-6, f"{per_record * 1e6:.1f} µs per record"


# -- construction from a Config -----------------------------------------------------------
def test_make_request_log_follows_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    tty = TtyStream()
    log = make_request_log(Config(root=tmp_path), tty)
    assert log is not None
    log.record("GET", "/", 200, 0, 0.0)
    assert "\x1b[32m200" in tty.getvalue()  # a terminal: colors

    plain = io.StringIO()
    log = make_request_log(Config(root=tmp_path), plain)
    assert log is not None
    log.record("GET", "/", 200, 0, 0.0)
    assert "\x1b" not in plain.getvalue()  # not a terminal: none

    monkeypatch.setenv("NO_COLOR", "1")
    tty = TtyStream()
    log = make_request_log(Config(root=tmp_path), tty)
    assert log is not None
    log.record("GET", "/", 200, 0, 0.0)
    assert "\x1b" not in tty.getvalue()  # NO_COLOR wins over a terminal

    monkeypatch.delenv("NO_COLOR")
    tty = TtyStream()
    log = make_request_log(Config(root=tmp_path, quiet=True, log_format="json"), tty)
    assert log is not None
    log.record("GET", "/", 200, 0, 0.0)
    log.record("GET", "/boom", 500, 0, 0.0)
    (line,) = tty.getvalue().splitlines()
    assert json.loads(line)["path"] == "/boom"  # JSON never colored, errors only


def test_make_request_log_defaults_to_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = make_request_log(Config(root=tmp_path))
    assert log is not None
    log.record("GET", "/x", 200, 0, 0.0)
    log.close()
    assert " GET /x 200 " in capsys.readouterr().out


# -- the real process -----------------------------------------------------------------
def test_json_format_keeps_stdout_for_json_lines(tmp_path: Path, worker_model: str) -> None:
    """``sitepeek --log-format json | jq``: every stdout line is a JSON object, one per
    request; the banner, the reload line and the summary go to stderr."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("<p>hi</p>\n")
    (root / "style.css").write_text("p {}\n")
    cmd = [sys.executable, "-m", "sitepeek", "serve", str(root), "--port", "0"]
    cmd += ["--workers", worker_model, "--processes", "2", "--log-format", "json"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    stdout: list[str] = []
    stderr: list[str] = []
    pumps = [
        threading.Thread(target=lambda: stdout.extend(proc.stdout or ()), daemon=True),
        threading.Thread(target=lambda: stderr.extend(proc.stderr or ()), daemon=True),
    ]
    for pump in pumps:
        pump.start()

    def wait_for(pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + 15
        while not (match := re.search(pattern, "".join(stderr))):
            assert proc.poll() is None, f"sitepeek exited: {''.join(stderr)}"
            assert time.monotonic() < deadline, (pattern, stderr, stdout)
            time.sleep(0.02)
        return match

    try:
        port = int(wait_for(r"http://127\.0\.0\.1:(\d+)/").group(1))
        targets = ["/", "/style.css", "/missing", '/q?x="\\"', "/caf%C3%A9"]
        for target in targets:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                assert sock.recv(65536).startswith(b"HTTP/1.1 ")
        (root / "style.css").write_text("p { color: red }\n")
        wait_for("reload · ")
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
        for pump in pumps:
            pump.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    out = "".join(stdout)
    assert proc.returncode == 0
    records = [json.loads(line) for line in out.splitlines()]  # every line, or it fails
    assert all(isinstance(record, dict) for record in records)
    assert sorted(record["path"] for record in records) == sorted(targets)
    assert "Press Ctrl-C to stop." in "".join(stderr)
    assert "Stopped after" in "".join(stderr)
