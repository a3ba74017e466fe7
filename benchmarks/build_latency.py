"""Save-to-screen latency of a built site: `sitepeek --build 'mkdocs build'` vs `mkdocs serve`.

    python benchmarks/build_latency.py [--trials 15] [--pages 30] [--json out.json]

One MkDocs project (PAGES pages, the built-in theme), in two identical copies, is served
both ways at once, each with one headless Chromium tab (Playwright) on its home page:

- sitepeek: `sitepeek serve site --build 'mkdocs build' --watch docs --watch mkdocs.yml`
  (the README recipe), default live-reload settings;
- MkDocs: `mkdocs serve` (its own builder, watcher and live-reload script).

Each trial rewrites docs/index.md with a new heading and times, from just before the
write, until the tab shows that heading (Playwright polls the page every animation
frame). Each round also times a bare `mkdocs build` of a third copy: the part of the
sitepeek figure that is the generator starting afresh. Trials alternate, so a machine
whose load drifts weighs on all alike; before each write the setup idles for SETTLE_S.
Medians and spreads are printed, and with --json all trials are written out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

REPO = Path(__file__).resolve().parent.parent
SETTLE_S = 0.6  # idle time before each write: every watcher and builder is at rest
TIMEOUT_MS = 30_000  # a trial whose change is not on screen by then counts as never shown
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic"]


def make_project(root: Path, pages: int) -> None:
    docs = root / "docs"
    docs.mkdir(parents=True)
    nav = ["  - Home: index.md"]
    for n in range(1, pages):
        body = "\n\n".join(f"Paragraph {k} of page {n}, with **some** text." for k in range(20))
        (docs / f"page{n}.md").write_text(f"# Page {n}\n\n{body}\n")
        nav.append(f"  - Page {n}: page{n}.md")
    (root / "mkdocs.yml").write_text("site_name: Latency\nnav:\n" + "\n".join(nav) + "\n")
    write_index(root, "Start")


def write_index(root: Path, heading: str) -> None:
    (root / "docs" / "index.md").write_text(f"# {heading}\n\nThe home page.\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running(cmd: list[str], cwd: Path, ready: re.Pattern[str]) -> Iterator[str]:
    """Run ``cmd`` until the block ends; yields the first output line matching ``ready``."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            match = ready.search(line)
            if match:
                yield match.group(1)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]} did not get ready")
        else:
            raise RuntimeError(f"{cmd} exited early")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def open_tab(page: Page, url: str) -> None:
    page.goto(url)
    page.wait_for_function("document.querySelector('h1')?.textContent.trim() === 'Start'")


def trial(page: Page, project: Path, heading: str) -> tuple[float, float] | None:
    """Milliseconds from writing ``heading`` into docs/index.md to the tab showing it,
    and to the tab starting to load the new page (the server's part: the build and the
    reload signal); None if it never showed (the tab is then loaded afresh)."""
    time.sleep(SETTLE_S)
    written = time.time() * 1000  # wall clock: the page's timeOrigin is on it too
    started = time.perf_counter()
    write_index(project, heading)
    shows = f"document.querySelector('h1')?.textContent.trim() === {heading!r}"
    try:
        page.wait_for_function(shows, polling="raf", timeout=TIMEOUT_MS)
    except PlaywrightTimeout:
        page.reload()
        page.wait_for_function(shows)
        return None
    total = (time.perf_counter() - started) * 1000
    navigation = float(
        page.evaluate(
            "performance.timeOrigin + performance.getEntriesByType('navigation')[0].startTime"
        )
    )
    return total, navigation - written


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return (
        f"median {statistics.median(ordered):6.0f} ms   p90 {p90:6.0f} ms   "
        f"min {ordered[0]:6.0f} ms   max {ordered[-1]:6.0f} ms   (n={len(ordered)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--pages", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    mkdocs = shutil.which("mkdocs")
    chromium = shutil.which("chromium")
    if not mkdocs or not chromium:
        print("needs mkdocs (pip install mkdocs) and chromium", file=sys.stderr)
        return 2
    names = ("sitepeek --build 'mkdocs build'", "mkdocs serve")
    bare = "mkdocs build alone (no server)"
    starts = [f"  {name}: write -> new page starts loading" for name in names]
    results: dict[str, list[float]] = {name: [] for name in (*names, *starts, bare)}
    missed: dict[str, int] = dict.fromkeys(names, 0)
    with tempfile.TemporaryDirectory(prefix="sitepeek-build-latency-") as scratch:
        projects = [Path(scratch) / "sitepeek", Path(scratch) / "mkdocs"]
        for project in (*projects, Path(scratch) / "bare"):
            make_project(project, args.pages)
        sitepeek = [
            sys.executable, "-m", "sitepeek", "serve", "site", "--port", "0", "--quiet",
            "--build", "mkdocs build", "--watch", "docs", "--watch", "mkdocs.yml",
        ]  # fmt: skip
        serve = [mkdocs, "serve", "-a", f"127.0.0.1:{free_port()}"]
        with (
            sync_playwright() as driver,
            running(sitepeek, projects[0], re.compile(r"(http://127\.0\.0\.1:\d+/)")) as url0,
            running(serve, projects[1], re.compile(r"Serving on (http://\S+)")) as url1,
        ):
            browser = driver.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            pages = [browser.new_page(), browser.new_page()]
            for page, url in zip(pages, (url0, url1), strict=True):
                open_tab(page, url)
            for n in range(args.trials + 1):  # the first round warms up, uncounted
                for name, start, page, project in zip(names, starts, pages, projects, strict=True):
                    timing = trial(page, project, f"Trial {n}")
                    if timing is None:
                        missed[name] += 1
                    elif n:
                        results[name].append(timing[0])
                        results[start].append(timing[1])
                time.sleep(SETTLE_S)
                started = time.perf_counter()
                subprocess.run([mkdocs, "build", "-q"], cwd=Path(scratch) / "bare", check=True)
                if n:
                    results[bare].append((time.perf_counter() - started) * 1000)
            browser.close()
    mkdocs_version = subprocess.run(
        [mkdocs, "--version"], capture_output=True, text=True, check=False
    ).stdout.split(" from ")[0]
    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print(f"# {mkdocs_version}; {args.pages} pages; save docs/index.md -> new h1 on screen")
    for name, times in results.items():
        lost = f"   never shown: {missed[name]}" if missed.get(name) else ""
        print(f"{name:58} {summary(times)}{lost}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
