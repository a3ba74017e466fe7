"""Draw the README's benchmark chart from the JSON that bench.py writes.

    python benchmarks/bench.py --json results.json
    python benchmarks/chart.py results.json docs/benchmark.png

One panel per load scenario: each server's figure as a ratio to python -m http.server
in the same run (the machine is shared, so ratios are what can be compared). Needs
matplotlib (`pip install 'sitepeek[bench]'`); it is not a dependency of sitepeek itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

BASELINE = "python-http.server"
# (scenario, what is plotted, axis label)
PANELS = (
    ("small", "requests_per_s", "1 KiB file, 50 keep-alive conns"),
    ("index", "requests_per_s", "/ (index.html), 50 conns"),
    ("unique", "requests_per_s", "every request different (a new query each time)"),
    ("cold", "requests_per_s", "nothing seen before (a new stale validator each time)"),
    ("gzip", "requests_per_s", "app.js with Accept-Encoding: gzip"),
    ("close", "requests_per_s", "Connection: close"),
    ("large", "transfer_bytes_per_s", "64 MiB file, throughput"),
    ("c1000", "requests_per_s", "1,000 connections"),
)


def _figures(results: list[dict[str, Any]], scenario: str, key: str) -> dict[str, float]:
    figures: dict[str, float] = {}
    for result in results:
        load = result.get("load") or {}
        if result.get("scenario") == scenario and result.get("status") == "ok" and load:
            figures[result["server"]] = float(load.get(key) or 0.0)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="JSON written by bench.py --json")
    parser.add_argument("output", type=Path, help="PNG to write")
    args = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("chart.py needs matplotlib: pip install 'sitepeek[bench]'", file=sys.stderr)
        return 2
    data = json.loads(args.results.read_text())
    results = data["results"]
    panels = [p for p in PANELS if _figures(results, p[0], p[1])]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.1 * len(panels)), squeeze=False)
    for ax, (scenario, key, label) in zip(axes[:, 0], panels, strict=True):
        figures = _figures(results, scenario, key)
        base = figures.get(BASELINE) or 0.0
        names = sorted(figures, key=figures.__getitem__)
        values = [figures[name] / base if base else figures[name] for name in names]
        colors = ["#2b6cb0" if name.startswith("sitepeek") else "#a0aec0" for name in names]
        ax.barh(names, values, color=colors)
        for y, value in enumerate(values):
            ax.text(
                value, y, f" {value:.1f}x" if base else f" {value:,.0f}", va="center", fontsize=8
            )
        ax.set_title(label, fontsize=10, loc="left")
        ax.tick_params(labelsize=8)
        ax.set_xlabel(f"times {BASELINE} (same run)" if base else key, fontsize=8)
    machine = data.get("machine", {})
    fig.suptitle(f"sitepeek benchmark, {machine.get('date', '')}", fontsize=11)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
