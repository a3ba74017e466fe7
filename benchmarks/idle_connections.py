"""What an idle keep-alive connection costs the server, over HTTP and over HTTPS.

    python benchmarks/idle_connections.py [--connections 400] [--baseline REF]
                                          [--models greenlets,threads,processes]

A browser keeps about six connections per origin open between page loads. For each
code version (this working tree, and the git revision ``--baseline`` names), worker
model and scheme (plain HTTP, and ``--https`` with a throwaway local CA), sitepeek is
started with ``--threads 4 --processes 1 --keepalive-timeout 300 --no-reload``.
``WARM_UP`` connections warm it up (pool threads started, allocator grown); then
``--connections`` more each ask for ``/small.txt`` twice (the second answer is a hot
one) and stay open, idle. Reported: the growth of the server's resident memory
(VmRSS of its process tree) per idle connection, its thread count before and after,
and how long a new client then waits for its first answer (a full TLS handshake
over HTTPS).
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from servers import REPO, STARTUP_URL, exchange, extract_source
from testsite import build_site

GET = "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"  # one keep-alive request

WARM_UP = 50
START_TIMEOUT_S = 20.0


@dataclass
class Row:
    version: str
    model: str
    scheme: str
    kib_per_connection: float
    threads_before: int
    threads_after: int
    newcomer_ms: float


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=400, help="idle ones measured")
    parser.add_argument("--models", default="greenlets,threads,processes")
    parser.add_argument("--baseline", metavar="REF", help="also measure git revision REF")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="sitepeek-idle-") as tmp:
        site = Path(tmp) / "site"
        build_site(site, with_large=False)
        versions = {"this tree": REPO / "src"}
        if args.baseline:
            versions[args.baseline] = extract_source(args.baseline, Path(tmp) / "baseline")
        for model in args.models.split(","):
            for scheme in ("http", "https"):
                for label, src in versions.items():
                    row = _measure(label, src, site, Path(tmp), model, scheme, args.connections)
                    print(f"[idle] {row}", file=sys.stderr, flush=True)
                    rows.append(row)
    print(f"Idle keep-alive connections ({args.connections} measured, after {WARM_UP}):\n")
    print("| version | model | scheme | KiB per idle connection | threads | newcomer ms |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row.version} | {row.model} | {row.scheme} | {row.kib_per_connection:.1f} "
            f"| {row.threads_before} → {row.threads_after} | {row.newcomer_ms:.1f} |"
        )
    return 0


def _measure(
    label: str, src: Path, site: Path, tmp: Path, model: str, scheme: str, count: int
) -> Row:
    data = Path(tempfile.mkdtemp(dir=tmp))  # XDG_DATA_HOME: the local CA, for --https
    env = dict(os.environ, PYTHONPATH=str(src), XDG_DATA_HOME=str(data))
    argv = [sys.executable, "-m", "sitepeek", "serve", str(site), "--port", "0", "--quiet"]
    argv += ["--workers", model, "--threads", "4", "--processes", "1", "--no-reload"]
    argv += ["--keepalive-timeout", "300", "--max-connections", str(4 * (count + WARM_UP))]
    argv += ["--https"] if scheme == "https" else []
    server = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
    )
    held: list[socket.socket] = []
    try:
        port = _port(server)
        context = None
        if scheme == "https":
            context = ssl.create_default_context(cafile=str(data / "sitepeek" / "ca.crt"))

        def connect() -> socket.socket:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            if context is not None:
                return context.wrap_socket(sock, server_hostname="localhost")
            return sock

        def hold(how_many: int) -> None:
            for _ in range(how_many):
                sock = connect()
                held.append(sock)
                exchange(sock, GET.format(path="/small.txt"))
                exchange(sock, GET.format(path="/small.txt"))

        hold(WARM_UP)
        time.sleep(0.5)  # (a handshake's own thread ends after it parks: threads model)
        threads, rss = _status(server.pid)
        hold(count)
        time.sleep(0.5)
        threads_after, rss_after = _status(server.pid)
        started = time.monotonic()
        with connect() as newcomer:
            exchange(newcomer, GET.format(path="/index.html"))
        newcomer_ms = (time.monotonic() - started) * 1000
        return Row(
            label, model, scheme, (rss_after - rss) / count, threads, threads_after, newcomer_ms
        )
    finally:
        for sock in held:
            sock.close()
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()


def _port(server: subprocess.Popen[bytes]) -> int:
    assert server.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        if not line:
            raise RuntimeError(f"sitepeek exited ({server.wait()}) before it printed its URL")
        match = STARTUP_URL.search(line)
        if match:
            return int(match.group(1))
    raise RuntimeError("sitepeek did not print its URL in time")


def _status(pid: int) -> tuple[int, int]:
    """(threads, resident KiB) of ``pid`` and its descendants."""
    threads = rss = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
        threads += int(status.split("Threads:")[1].split()[0])
        rss += int(status.split("VmRSS:")[1].split()[0])
    return threads, rss


if __name__ == "__main__":
    sys.exit(main())
