"""CPU instructions per request, counted by Valgrind: a figure machine load cannot move.

    python benchmarks/instructions.py [--baseline REF] [--scenarios a,b] [--requests N]

Requests per second on a shared machine move with whatever else runs; the number of
instructions the server executes for one request does not. Each code version (this
working tree, and the git revision ``--baseline`` names) is started under
``valgrind --tool=callgrind`` with instrumentation off, warmed up, then counted for
``--requests`` requests of each scenario on one keep-alive connection
(``callgrind_control`` switches counting on, zeroes and dumps the counters), minus
what the server executes while idle for as long (timers, the reaper). The
scenarios are bench.py's: the same request bytes (small, index), a new query each time
(unique), a new stale validator each time (cold).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from servers import REPO, exchange, extract_source, free_port
from testsite import build_site

SCENARIOS = {
    "small": "GET /small.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "index": "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "unique": "GET /small.txt?n={n} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "cold": 'GET /small.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nIf-None-Match: "{n}"\r\n\r\n',
}
WARM_UP = 50
START_TIMEOUT_S = 300.0  # Python starts slowly under Valgrind, even uninstrumented


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", metavar="REF", help="also count git revision REF")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument("--requests", type=int, default=400, help="counted per scenario")
    parser.add_argument("--workers", default="greenlets", help="the worker model")
    args = parser.parse_args(argv)
    scenarios = args.scenarios.split(",")
    unknown = [name for name in scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; known: {', '.join(SCENARIOS)}")
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        print("instructions.py needs valgrind (apt install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="sitepeek-instructions-") as tmp:
        site = Path(tmp) / "site"
        build_site(site, with_large=False)
        versions = {"this tree": REPO / "src"}
        if args.baseline:
            versions[args.baseline] = extract_source(args.baseline, Path(tmp) / "baseline")
        counts = {
            label: _count(src, site, Path(tmp) / f"run-{index}", scenarios, args)
            for index, (label, src) in enumerate(versions.items())
        }
    labels = list(versions)
    print(f"Instructions per request ({args.workers}, {args.requests} requests counted):\n")
    print("| scenario | " + " | ".join(labels) + (" | ratio |" if len(labels) == 2 else " |"))
    print("| --- |" + " ---: |" * (len(labels) + (len(labels) == 2)))
    for name in scenarios:
        cells = [f"{counts[label][name]:,.0f}" for label in labels]
        if len(labels) == 2:
            cells.append(f"{counts[labels[0]][name] / counts[labels[1]][name]:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


def _count(
    src: Path, site: Path, workdir: Path, scenarios: list[str], args: argparse.Namespace
) -> dict[str, float]:
    workdir.mkdir()
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONUNBUFFERED="1")
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={workdir / 'callgrind.out.%p'}",
        sys.executable,
        "-m",
        "sitepeek",
        "serve",
        str(site),
        "--port",
        str(port),
        "--strict-port",
        "--quiet",
        "--workers",
        args.workers,
    ]
    log = (workdir / "server.log").open("wb")
    server = subprocess.Popen(argv, env=env, stdout=log, stderr=log, cwd=workdir)
    try:
        sock = _connect(port, server)
        counts = {}
        for name in scenarios:
            template = SCENARIOS[name]
            for n in range(WARM_UP):
                exchange(sock, template.format(n=n))
            _control(server.pid, "--instr=on")
            _control(server.pid, "--zero")
            started = time.monotonic()
            for n in range(WARM_UP, WARM_UP + args.requests):
                exchange(sock, template.format(n=n))
            busy = _dump(server.pid, workdir)
            # What runs by the clock (the reaper, timers) whether or not requests come,
            # counted over as long again and taken off: only per-request work remains.
            time.sleep(time.monotonic() - started)
            idle = _dump(server.pid, workdir)
            _control(server.pid, "--instr=off")
            counts[name] = (busy - idle) / args.requests
            print(
                f"[instructions] {src}: {name} {counts[name]:,.0f} (busy {busy:,}, idle {idle:,})",
                file=sys.stderr,
            )
        sock.close()
        return counts
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _connect(port: int, server: subprocess.Popen[bytes]) -> socket.socket:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}) before it listened")
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            continue
        return sock


def _dump(pid: int, workdir: Path) -> int:
    """The instructions counted since the last zeroing or dump (which zeroes)."""
    before = set(workdir.glob("callgrind.out.*"))
    _control(pid, "--dump")
    (dump,) = set(workdir.glob("callgrind.out.*")) - before
    return _total(dump)


def _control(pid: int, option: str) -> None:
    subprocess.run(
        ["callgrind_control", option, str(pid)], check=True, capture_output=True, timeout=120
    )


def _total(dump: Path) -> int:
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


if __name__ == "__main__":
    sys.exit(main())
