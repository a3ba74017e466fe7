"""Load generators: wrk when it is installed, else a small bundled Python client.

Both return a `LoadResult`. The Python client runs as its own process
(`python loadgen.py SPEC_JSON`) so it can be pinned to a CPU just like wrk; it is a
fallback with far less headroom than wrk, and the report says when it was used.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal
from urllib.parse import urlsplit

WRK_GRACE_S = 60.0
_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_UNITS_B = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
Preexec = Callable[[], None] | None
LoadTool = Literal["wrk", "python"]
Vary = Literal["", "query", "validator"]


@dataclass
class LoadResult:
    tool: str  # "wrk" or "python"
    requests: int
    duration_s: float
    requests_per_s: float
    transfer_bytes_per_s: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    errors: dict[str, int] = field(default_factory=dict)  # connect/read/write/timeout/non_2xx
    raw: str = ""

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())


@dataclass(frozen=True)
class LoadSpec:
    url: str
    connections: int
    duration_s: float
    headers: tuple[tuple[str, str], ...] = ()
    # What makes every request different: "query" appends ?n=<counter>; "validator"
    # sends If-None-Match: "<counter>" (a stale validator, as after a change). "": none.
    vary: Vary = ""


# wrk's request() hooks: a new query string, or a new stale validator, per request
# (one counter per wrk thread).
_VARY_LUA = {
    "query": """
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, wrk.path .. "?n=" .. counter)
end
""",
    "validator": """
local counter = 0
request = function()
  counter = counter + 1
  wrk.headers["If-None-Match"] = '"' .. counter .. '"'
  return wrk.format(nil, wrk.path)
end
""",
}


def wrk_version() -> str | None:
    if not shutil.which("wrk"):
        return None
    # `wrk -v` prints its banner and exits non-zero; the first line is all we want.
    result = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False)
    banner = (result.stdout + result.stderr).strip().splitlines()
    return banner[0] if banner else "wrk (unknown version)"


def run_load(
    spec: LoadSpec, tool: LoadTool, cpu_prefix: list[str], preexec: Preexec = None
) -> LoadResult:
    runner = run_wrk if tool == "wrk" else run_python_client
    return runner(spec, cpu_prefix, preexec)


def run_wrk(spec: LoadSpec, cpu_prefix: list[str], preexec: Preexec = None) -> LoadResult:
    argv = ["wrk", "-t1", f"-c{spec.connections}", f"-d{spec.duration_s:g}s", "--latency"]
    for name, value in spec.headers:
        argv += ["-H", f"{name}: {value}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        if spec.vary:
            script.write(_VARY_LUA[spec.vary])
            script.flush()
            argv += ["-s", script.name]
        result = subprocess.run(
            [*cpu_prefix, *argv, spec.url],
            capture_output=True,
            text=True,
            timeout=spec.duration_s + WRK_GRACE_S,
            preexec_fn=preexec,
            check=False,
        )
    if result.returncode != 0 or "Requests/sec" not in result.stdout:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr.strip()[:300]}")
    return parse_wrk(result.stdout)


def parse_wrk(output: str) -> LoadResult:
    def number(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, output, re.MULTILINE)

    total = number(r"^\s*(\d+) requests in ([\d.]+)(\w+),")
    rps = number(r"^Requests/sec:\s+([\d.]+)")
    transfer = number(r"^Transfer/sec:\s+([\d.]+)(\w+)")
    assert total and rps and transfer, f"unexpected wrk output:\n{output}"
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non_2xx": 0}
    socket_errors = number(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
    if socket_errors:
        kinds = ("connect", "read", "write", "timeout")
        for key, value in zip(kinds, socket_errors.groups(), strict=True):
            errors[key] = int(value)
    non_2xx = number(r"Non-2xx or 3xx responses: (\d+)")
    if non_2xx:
        errors["non_2xx"] = int(non_2xx.group(1))
    return LoadResult(
        tool="wrk",
        requests=int(total.group(1)),
        duration_s=float(total.group(2)) * _UNITS_S[total.group(3)],
        requests_per_s=float(rps.group(1)),
        transfer_bytes_per_s=float(transfer.group(1)) * _UNITS_B[transfer.group(2)],
        latency_p50_ms=_wrk_percentile(output, "50"),
        latency_p99_ms=_wrk_percentile(output, "99"),
        errors=errors,
        raw=output,
    )


def _wrk_percentile(output: str, percent: str) -> float | None:
    match = re.search(rf"^\s+{percent}%\s+([\d.]+)(\w+)", output, re.MULTILINE)
    if not match:
        return None
    return float(match.group(1)) * _UNITS_S[match.group(2)] * 1000


# -- Bundled Python client ------------------------------------------------------------------


def run_python_client(spec: LoadSpec, cpu_prefix: list[str], preexec: Preexec = None) -> LoadResult:
    payload = json.dumps(asdict(spec))
    result = subprocess.run(
        [*cpu_prefix, sys.executable, str(Path(__file__).resolve()), payload],
        capture_output=True,
        text=True,
        timeout=spec.duration_s + WRK_GRACE_S,
        preexec_fn=preexec,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"python load client failed: {result.stderr.strip()[-300:]}")
    return LoadResult(**json.loads(result.stdout))


class _Tally:
    """What all client threads saw; one lock, taken once per thread at the end."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.bytes = 0
        self.errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non_2xx": 0}

    def merge(self, latencies: list[float], nbytes: int, errors: dict[str, int]) -> None:
        with self.lock:
            self.latencies += latencies
            self.bytes += nbytes
            for key, value in errors.items():
                self.errors[key] += value


class _Connection:
    """One keep-alive client connection with a buffered reader over it."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=2.0)
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def _client_loop(
    host: str,
    port: int,
    request: bytes,
    deadline: float,
    tally: _Tally,
    counter: itertools.count[int] | None,
    vary: Vary,
) -> None:
    latencies: list[float] = []
    head, _, rest = request.partition(b" HTTP/1.1\r\n")
    errors = dict.fromkeys(tally.errors, 0)
    nbytes = 0
    conn: _Connection | None = None
    while time.perf_counter() < deadline:
        if conn is None:
            try:
                conn = _Connection(host, port)
            except TimeoutError:
                errors["timeout"] += 1
                continue
            except OSError:
                errors["connect"] += 1
                time.sleep(0.01)
                continue
        started = time.perf_counter()
        if counter is not None:  # (next() on a shared count is atomic under the GIL)
            if vary == "query":
                request = b"%s?n=%d HTTP/1.1\r\n%s" % (head, next(counter), rest)
            else:
                stale = b'If-None-Match: "%d"\r\n' % next(counter)
                request = b"%s HTTP/1.1\r\n%s%s" % (head, stale, rest)
        try:
            conn.sock.sendall(request)
            status, size, keep_alive = _read_response(conn.reader)
        except (OSError, ValueError) as error:
            errors["timeout" if isinstance(error, TimeoutError) else "read"] += 1
            keep_alive = False
        else:
            latencies.append(time.perf_counter() - started)
            nbytes += size
            if not 200 <= status < 400:
                errors["non_2xx"] += 1
        if not keep_alive:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()
    tally.merge(latencies, nbytes, errors)


def _read_response(reader: BinaryIO) -> tuple[int, int, bool]:
    """Read one response; return its status, its size on the wire and whether to reuse.

    Framing follows RFC 9112 §6.3: chunked, else Content-Length, else read until close.
    """
    status_line = reader.readline()
    if not status_line:
        raise ConnectionError("closed before the status line")
    size = len(status_line)
    version, status = status_line.decode("latin-1").split(" ", 2)[:2]
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
        size += len(line)
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    size += 2
    connection = headers.get("connection", "")
    keep_alive = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
    if "chunked" in headers.get("transfer-encoding", ""):
        return int(status), size + _read_chunked(reader), keep_alive
    if "content-length" in headers:
        length = int(headers["content-length"])
        _read_exactly(reader, length)
        return int(status), size + length, keep_alive
    return int(status), size + len(reader.read()), False


def _read_chunked(reader: BinaryIO) -> int:
    size = 0
    while True:
        line = reader.readline()
        size += len(line)
        chunk_size = int(line.split(b";", 1)[0], 16)
        if chunk_size == 0:
            break
        _read_exactly(reader, chunk_size + 2)  # the chunk and its CRLF
        size += chunk_size + 2
    while (line := reader.readline()) not in (b"\r\n", b"\n", b""):  # trailer section
        size += len(line)
    return size + 2


def _read_exactly(reader: BinaryIO, length: int) -> None:
    while length > 0:
        chunk = reader.read(min(length, 1 << 20))
        if not chunk:
            raise ConnectionError("closed mid-body")
        length -= len(chunk)


def python_client(spec: LoadSpec) -> LoadResult:
    parts = urlsplit(spec.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [f"GET {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in spec.headers]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    tally = _Tally()
    counter = itertools.count(1) if spec.vary else None
    threading.stack_size(256 * 1024)  # 1000 threads must not need 8 GiB of address space.
    started = time.perf_counter()
    deadline = started + spec.duration_s
    threads = [
        threading.Thread(
            target=_client_loop,
            args=(host, port, request, deadline, tally, counter, spec.vary),
        )
        for _ in range(spec.connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    latencies = sorted(tally.latencies)

    def percentile(p: float) -> float | None:
        if not latencies:
            return None
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    return LoadResult(
        tool="python",
        requests=len(latencies),
        duration_s=elapsed,
        requests_per_s=len(latencies) / elapsed,
        transfer_bytes_per_s=tally.bytes / elapsed,
        latency_p50_ms=percentile(50),
        latency_p99_ms=percentile(99),
        errors=tally.errors,
    )


def main(argv: list[str]) -> None:
    raw = json.loads(argv[0])
    spec = LoadSpec(
        url=raw["url"],
        connections=raw["connections"],
        duration_s=raw["duration_s"],
        headers=tuple((name, value) for name, value in raw["headers"]),
        vary=raw["vary"],
    )
    print(json.dumps(asdict(python_client(spec))))


if __name__ == "__main__":
    main(sys.argv[1:])
