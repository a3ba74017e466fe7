"""Results of one (scenario, server) pair, and the markdown tables made from them."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Literal

from loadgen import LoadResult
from scenarios import Scenario

Status = Literal["ok", "unavailable", "failed", "not installed"]
MIB = 1024 * 1024


@dataclass
class Probe:
    """One GET made with the scenario's headers, outside the load run."""

    status: int
    content_length: int | None
    content_encoding: str | None
    body_bytes: int


@dataclass
class Outcome:
    scenario: str
    server: str
    status: Status
    detail: str = ""
    notes: list[str] = field(default_factory=list)
    load: LoadResult | None = None
    probe: Probe | None = None
    startup_s: list[float] = field(default_factory=list)  # one per launch
    peak_mib: float | None = None
    cpu_s: float | None = None  # the server's CPU time during the load run

    @property
    def cpu_us_per_request(self) -> float | None:
        if self.cpu_s is None or self.load is None or not self.load.requests:
            return None
        return self.cpu_s / self.load.requests * 1e6

    @property
    def startup_median_ms(self) -> float | None:
        return statistics.median(self.startup_s) * 1000 if self.startup_s else None


def render_table(scenario: Scenario, outcomes: list[Outcome], baseline: str) -> str:
    render = _startup_table if scenario.kind == "startup" else _load_table
    lines = [f"### {scenario.name}: {scenario.description}", "", *render(outcomes, baseline)]
    notes = [f"- {o.server}: {note}" for o in outcomes for note in o.notes]
    notes += [f"- {o.server}: {o.status}: {o.detail}" for o in outcomes if o.status != "ok"]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _load_table(outcomes: list[Outcome], baseline: str) -> list[str]:
    base = next((o.load for o in outcomes if o.server == baseline and o.load), None)
    probed = any(o.probe for o in outcomes)
    header = ["server", "requests/s", f"vs {baseline}", "p50 ms", "p99 ms", "errors", "MiB/s"]
    header += ["peak MiB", "CPU µs/req"] + (["bytes/response", "encoding"] if probed else [])
    lines = [_row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    for o in outcomes:
        if o.load is None:
            lines.append(_row([o.server, o.status] + ["-"] * (len(header) - 2)))
            continue
        load = o.load
        ratio = f"{load.requests_per_s / base.requests_per_s:.2f}x" if base else "n/a"
        cells = [
            o.server,
            f"{load.requests_per_s:,.0f}",
            ratio,
            _ms(load.latency_p50_ms),
            _ms(load.latency_p99_ms),
            _errors(load),
            f"{load.transfer_bytes_per_s / MIB:,.1f}",
            _mib(o.peak_mib),
            "-" if o.cpu_us_per_request is None else f"{o.cpu_us_per_request:.1f}",
        ]
        if probed:
            cells += _probe_cells(o.probe)
        lines.append(_row(cells))
    return lines


def _startup_table(outcomes: list[Outcome], baseline: str) -> list[str]:
    base = next((o.startup_median_ms for o in outcomes if o.server == baseline), None)
    header = ["server", "median ms", f"vs {baseline}", "min ms", "max ms", "launches", "peak MiB"]
    lines = [_row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    for o in outcomes:
        median = o.startup_median_ms
        if median is None:
            lines.append(_row([o.server, o.status] + ["-"] * (len(header) - 2)))
            continue
        cells = [
            o.server,
            f"{median:.0f}",
            f"{median / base:.2f}x" if base else "n/a",
            f"{min(o.startup_s) * 1000:.0f}",
            f"{max(o.startup_s) * 1000:.0f}",
            str(len(o.startup_s)),
            _mib(o.peak_mib),
        ]
        lines.append(_row(cells))
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _errors(load: LoadResult) -> str:
    total = load.error_total
    if total == 0:
        return "0"
    parts = ", ".join(f"{kind} {count}" for kind, count in load.errors.items() if count)
    return f"{total} ({parts})"


def _probe_cells(probe: Probe | None) -> list[str]:
    if probe is None:
        return ["-", "-"]
    size = probe.content_length if probe.content_length is not None else probe.body_bytes
    return [f"{size:,}", probe.content_encoding or "identity"]
