"""The scenario registry: what each benchmark asks of a server.

Add a scenario by adding a `Scenario` to `SCENARIOS`; bench.py and the report pick it up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from loadgen import Vary

Kind = Literal["load", "startup"]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    path: str = "/small.txt"
    connections: int = 50
    headers: tuple[tuple[str, str], ...] = ()
    kind: Kind = "load"
    # Fetch the path once with these headers and record Content-Length and Content-Encoding.
    probe: bool = False
    launches: int = 10  # startup scenarios: how many launches the median is taken over
    # What makes every request different (see loadgen.LoadSpec.vary): with "query" no
    # cache keyed by the request's bytes can answer (a file's answer made once per
    # file version can); with "validator" nothing made before can answer, so this
    # measures the full path of a request never seen before.
    vary: Vary = ""
    # Over HTTPS, against the servers that speak it (the same certificate for each).
    tls: bool = False


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("small", "GET /small.txt (1 KiB), 50 keep-alive connections"),
        Scenario("index", "GET / (index.html, ~2 KB), 50 keep-alive connections", path="/"),
        Scenario(
            "unique",
            "GET /small.txt?n=<counter>: every request different, 50 keep-alive connections",
            vary="query",
        ),
        Scenario(
            "cold",
            'GET /small.txt, If-None-Match: "<counter>": nothing seen before, '
            "50 keep-alive connections",
            vary="validator",
        ),
        Scenario(
            "gzip",
            "GET /app.js (~100 KB) with Accept-Encoding: gzip, 50 connections",
            path="/app.js",
            headers=(("Accept-Encoding", "gzip"),),
            probe=True,
        ),
        Scenario(
            "close",
            "GET /small.txt with Connection: close (a new TCP connection per request)",
            headers=(("Connection", "close"),),
        ),
        Scenario("large", "GET /large.bin (64 MiB), 4 connections", "/large.bin", 4),
        Scenario("c1000", "GET /small.txt, 1000 concurrent connections", connections=1000),
        Scenario("tls-small", "HTTPS: GET /small.txt (1 KiB), 50 keep-alive connections", tls=True),
        Scenario(
            "tls-close",
            "HTTPS: GET /small.txt with Connection: close (a full TLS handshake per request)",
            headers=(("Connection", "close"),),
            tls=True,
        ),
        Scenario(
            "tls-large", "HTTPS: GET /large.bin (64 MiB), 4 connections", "/large.bin", 4, tls=True
        ),
        Scenario(
            "startup",
            "launch to first byte of a 200 for /small.txt, median of 10 launches",
            kind="startup",
        ),
    )
}
LARGE_PATH = "/large.bin"
# HTTPS rows are compared with nginx (python -m http.server speaks no TLS).
TLS_BASELINE = "nginx"
