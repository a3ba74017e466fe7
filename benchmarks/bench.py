"""Performance figures for sitepeek next to python -m http.server, nginx and Node servers.

    python benchmarks/bench.py [--duration S] [--scenarios a,b] [--servers x,y] [--json F]
    python benchmarks/bench.py --quick          # 2 s, `small` only: a smoke test
    python benchmarks/bench.py --baseline 7ad164b --rounds 3   # old vs new, interleaved

Each (scenario, server) pair gets a fresh server process pinned to one CPU while the load
generator runs on another, so numbers are per core. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from loadgen import LoadSpec, LoadTool, run_load, wrk_version
from report import Outcome, Probe, render_table
from scenarios import LARGE_PATH, SCENARIOS, TLS_BASELINE, Scenario
from servers import (
    BASELINE,
    SERVERS,
    LaunchContext,
    RunningServer,
    ServerSpec,
    StartError,
    baseline_servers,
    make_certificate,
    raise_open_files_limit,
)
from testsite import build_site

DEFAULT_DURATION_S = 10.0
QUICK_DURATION_S = 2.0


@dataclass(frozen=True)
class CpuPlan:
    """Which CPU the server and the load generator each get (None: not pinned)."""

    server: int | None
    load: int | None

    @property
    def pinned(self) -> bool:
        return self.server is not None

    @staticmethod
    def prefix(cpu: int | None) -> list[str]:
        return [] if cpu is None else ["taskset", "-c", str(cpu)]

    @classmethod
    def detect(cls) -> CpuPlan:
        cpus = sorted(os.sched_getaffinity(0))
        if shutil.which("taskset") and len(cpus) >= 2:
            return cls(cpus[0], cpus[1])
        return cls(None, None)


@dataclass(frozen=True)
class Machine:
    """What the report header and the JSON say about where and how the numbers were made."""

    date: str
    nproc: int | None
    usable_cpus: int
    cpu_model: str
    python: str
    kernel: str
    wrk: str | None
    load_generator: LoadTool
    pinning: CpuPlan
    duration_s: float

    @classmethod
    def describe(cls, cpus: CpuPlan, tool: LoadTool, duration_s: float) -> Machine:
        return cls(
            date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            nproc=os.cpu_count(),
            usable_cpus=len(os.sched_getaffinity(0)),
            cpu_model=_cpu_model(),
            python=f"{platform.python_version()} ({sys.executable})",
            kernel=f"{platform.system()} {platform.release()}",
            wrk=wrk_version(),
            load_generator=tool,
            pinning=cpus,
            duration_s=duration_s,
        )


@dataclass(frozen=True)
class Run:
    """Everything one benchmark run shares."""

    site: Path
    scratch: Path
    duration_s: float
    cpus: CpuPlan
    tool: LoadTool
    # Servers that could not start once, so later scenarios skip them instead of waiting.
    cannot_start: dict[str, Outcome] = field(default_factory=dict)
    tls: tuple[Path, Path] | None = None  # the certificate every HTTPS server uses


# -- Command line ---------------------------------------------------------------------------


def _names(registry: dict[str, object], what: str) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of known names (a bad one is a usage error)."""

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in registry]
        if unknown or not names:
            known = ", ".join(registry)
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown or text!r}; known: {known}")
        return names

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=float, help=f"seconds per load run (default {DEFAULT_DURATION_S:g})"
    )
    parser.add_argument(
        "--scenarios",
        type=_names(dict(SCENARIOS), "scenario"),
        help=f"comma-separated, default all: {','.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--servers",
        type=_names(dict(SERVERS), "server"),
        help=f"comma-separated, default all installed: {','.join(SERVERS)}",
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also run the sitepeek servers from git revision REF (named NAME@REF), "
        "to compare old and new code in one run",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every scenario this many times, the servers taking turns, and report "
        "the run with the median requests/s (a shared machine's noise hits all alike)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write all raw results here")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: {QUICK_DURATION_S:g} s and only the `small` scenario",
    )
    parser.add_argument(
        "--load-generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="auto: wrk when installed, else the bundled Python client",
    )
    args = parser.parse_args(argv)
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be positive")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.duration is None:
        args.duration = QUICK_DURATION_S if args.quick else DEFAULT_DURATION_S
    if args.scenarios is None:
        args.scenarios = ["small"] if args.quick else list(SCENARIOS)
    if args.load_generator == "wrk" and not shutil.which("wrk"):
        parser.error("--load-generator wrk: wrk is not on PATH")
    return args


# -- Running --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Turn SIGTERM into an exception so every `finally` and `with` below stops its server.
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    cpus = CpuPlan.detect()
    use_wrk = args.load_generator != "python" and shutil.which("wrk")
    tool: LoadTool = "wrk" if use_wrk else "python"
    machine = Machine.describe(cpus, tool, args.duration)
    scenarios = [SCENARIOS[name] for name in args.scenarios]
    servers, missing = _select_servers(args.servers)
    print(_machine_header(machine))
    outcomes: list[Outcome] = []
    try:
        with tempfile.TemporaryDirectory(prefix="sitepeek-bench-") as tmp:
            tls = make_certificate(Path(tmp) / "tls") if any(s.tls for s in scenarios) else None
            run = Run(Path(tmp) / "site", Path(tmp) / "runs", args.duration, cpus, tool, tls=tls)
            _progress(f"building the test site in {run.site}")
            build_site(run.site, with_large=any(s.path == LARGE_PATH for s in scenarios))
            if args.baseline:
                names = [spec.name for spec in servers]
                servers += baseline_servers(args.baseline, names, Path(tmp) / "baseline")
            for scenario in scenarios:
                rows = _median_rows(
                    [_run_scenario(run, scenario, servers) for _ in range(args.rounds)]
                )
                rows += [
                    Outcome(scenario.name, name, "not installed", reason)
                    for name, reason in missing.items()
                    if (scenario.kind != "startup" or SERVERS[name].in_startup)
                    and (not scenario.tls or SERVERS[name].tls)
                ]
                baseline = TLS_BASELINE if scenario.tls else BASELINE
                print(render_table(scenario, rows, baseline), flush=True)
                outcomes += rows
    except KeyboardInterrupt:
        _progress("interrupted; servers stopped")
        return 130
    finally:
        if args.json:
            _write_json(args.json, machine, outcomes)
    return 0


def _median_rows(rounds: list[list[Outcome]]) -> list[Outcome]:
    """Per server, the round with the median requests/s (the first round's row when a
    round failed or measured no load)."""
    if len(rounds) == 1:
        return rounds[0]
    chosen = []
    for index, first in enumerate(rounds[0]):
        runs = [r[index] for r in rounds if index < len(r) and r[index].load is not None]
        if len(runs) != len(rounds):
            chosen.append(first)
            continue
        rates = [o.load.requests_per_s for o in runs if o.load is not None]
        median = statistics.median_low(rates)
        best = runs[rates.index(median)]
        best.notes.append(
            f"median of {len(runs)} rounds ({', '.join(f'{r:,.0f}' for r in rates)} req/s)"
        )
        chosen.append(best)
    return chosen


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _select_servers(requested: list[str] | None) -> tuple[list[ServerSpec], dict[str, str]]:
    """Servers to run, and why each missing one is missing (optional ones only if asked for)."""
    chosen: list[ServerSpec] = []
    missing: dict[str, str] = {}
    for name in requested or list(SERVERS):
        spec = SERVERS[name]
        reason = spec.missing_reason()
        if reason is None:
            chosen.append(spec)
        elif requested or not spec.optional:
            missing[name] = reason
    return chosen, missing


def _run_scenario(run: Run, scenario: Scenario, servers: list[ServerSpec]) -> list[Outcome]:
    rows = []
    for spec in servers:
        if scenario.kind == "startup" and not spec.in_startup:
            continue
        if scenario.tls and not spec.tls:
            continue
        broken = run.cannot_start.get(spec.name)
        if broken is not None:
            detail = f"could not start in `{broken.scenario}`, see above"
            rows.append(Outcome(scenario.name, spec.name, broken.status, detail))
            continue
        _progress(f"{scenario.name}: {spec.name}")
        measure = _measure_startup if scenario.kind == "startup" else _measure_load
        try:
            rows.append(measure(run, scenario, spec))
        except StartError as error:
            outcome = Outcome(scenario.name, spec.name, error.status, error.detail)
            run.cannot_start[spec.name] = outcome
            rows.append(outcome)
    return rows


def _measure_load(run: Run, scenario: Scenario, spec: ServerSpec) -> Outcome:
    outcome = Outcome(scenario.name, spec.name, "ok")
    try:
        with _server(run, spec, scenario.name, scenario.tls) as server:
            outcome.notes += server.launch.notes
            outcome.startup_s.append(server.startup_s)
            if scenario.probe:
                outcome.probe = probe(server.url + scenario.path, scenario.headers)
            load = LoadSpec(
                server.url + scenario.path,
                scenario.connections,
                run.duration_s,
                scenario.headers,
                scenario.vary,
            )
            cpu_before = server.cpu_seconds()
            outcome.load = run_load(
                load, run.tool, CpuPlan.prefix(run.cpus.load), raise_open_files_limit
            )
            cpu_after = server.cpu_seconds()
            if cpu_before is not None and cpu_after is not None:
                outcome.cpu_s = cpu_after - cpu_before
            outcome.peak_mib = server.peak_memory_mib()
    except (OSError, RuntimeError, ValueError) as error:
        outcome.status, outcome.detail = "failed", f"{type(error).__name__}: {error}"
    return outcome


def _measure_startup(run: Run, scenario: Scenario, spec: ServerSpec) -> Outcome:
    outcome = Outcome(scenario.name, spec.name, "ok")
    for launch in range(scenario.launches):
        with _server(run, spec, f"{scenario.name}-{launch}") as server:
            outcome.startup_s.append(server.startup_s)
            outcome.peak_mib = server.peak_memory_mib()  # idle: nothing but one GET
            if launch == 0:
                outcome.notes += server.launch.notes
    return outcome


@contextmanager
def _server(run: Run, spec: ServerSpec, label: str, tls: bool = False) -> Iterator[RunningServer]:
    workdir = run.scratch / f"{spec.name}-{label}"
    ctx = LaunchContext(run.site, workdir, run.cpus.pinned, run.tls if tls else None)
    with RunningServer(spec, ctx, CpuPlan.prefix(run.cpus.server)) as server:
        yield server


def probe(url: str, headers: tuple[tuple[str, str], ...]) -> Probe:
    """One GET with `headers`; urllib does not decompress, so the body is the wire size."""
    request = urllib.request.Request(url, headers=dict(headers))
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
        length = response.headers.get("Content-Length")
        return Probe(
            status=response.status,
            content_length=int(length) if length is not None else None,
            content_encoding=response.headers.get("Content-Encoding"),
            body_bytes=len(body),
        )


# -- Output ---------------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _machine_header(machine: Machine) -> str:
    cpus, duration = machine.pinning, machine.duration_s
    if cpus.pinned:
        pinning = f"server on CPU {cpus.server}, load generator on CPU {cpus.load} (taskset)"
    else:
        pinning = "not pinned (needs taskset and at least 2 CPUs); numbers are noisier"
    if machine.load_generator == "wrk":
        load = f"wrk -t1 -cN -d{duration:g}s --latency"
    else:
        load = "bundled Python client (threads + raw sockets); far less headroom than wrk"
        if machine.wrk is None:
            load += "; wrk was not found on PATH"
    return "\n".join(
        [
            "## sitepeek benchmark",
            "",
            f"- date: {machine.date}",
            f"- nproc: {machine.nproc} (usable: {machine.usable_cpus}), {machine.cpu_model}",
            f"- python: {machine.python}",
            f"- kernel: {machine.kernel}",
            f"- wrk: {machine.wrk or 'not found'}",
            f"- load generator: {load}",
            f"- pinning: {pinning}",
            f"- duration per run: {duration:g} s",
            "",
        ]
    )


def _write_json(path: Path, machine: Machine, outcomes: list[Outcome]) -> None:
    document = {
        "machine": dataclasses.asdict(machine),
        "scenarios": {name: dataclasses.asdict(s) for name, s in SCENARIOS.items()},
        "results": [dataclasses.asdict(o) for o in outcomes],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    _progress(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
