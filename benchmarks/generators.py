"""Live reload with real generators: sitepeek next to `mkdocs serve` and `sphinx-autobuild`.

    python benchmarks/generators.py [--builds 8] [--generators mkdocs-material,sphinx]
                                    [--json out.json]

For each generator a small project is made in a temp dir (three pages: home, about, and a
long page), and for each server three Chromium tabs (Playwright) stay open on those pages,
the long one scrolled down. Each build edits the about page's source with a new marker:

- sitepeek serves the output directory and the benchmark runs the generator's own build
  command (`mkdocs build`, `sphinx-build -b html`), as a user with a build watcher would;
- `mkdocs serve` and `sphinx-autobuild` see the edit and build by themselves.

Every document a tab loads is recorded (the marker its text shows, and the wall-clock time
of its DOMContentLoaded). A watchdog observer on each server's output directory records
every write. Per build, after the edited tab shows the new marker and 2 s of quiet:

- reloads: documents each tab loaded in that build;
- wrong pages: documents that show no marker (a 404 page, a listing, a blank page) or
  another marker than the one their page has at the end of the build (old content);
- build end → visible: from the last write into the output directory during the build
  (dotfiles such as Sphinx's `.doctrees/` left out: no server serves them) to
  the DOMContentLoaded of the first document with the new marker (negative: the tab showed
  the new page before the build had finished writing);
- edit → visible: from the source edit to the same moment.

See "Live reload with real generators" in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, sync_playwright
from servers import REPO, free_port
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

CHROMIUM_ARGS = [  # as in tests/test_browser.py
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_TIMEOUT_S = 60.0
VISIBLE_TIMEOUT_MS = 30_000
QUIET_S = 2.0  # after the new page showed: late reloads of the same build count too
LONG_TEXT = "A long page, scrolled down while the site is rebuilt. " * 12
PAGES = ("index", "about", "long")
RECORDER = """
if (window.top === window) {
  addEventListener("DOMContentLoaded", () => {
    const found = /marker(\\d+)x/.exec(document.body ? document.body.innerText : "");
    window.__seen__(found ? Number(found[1]) : 0, Date.now(), document.title);
  });
}
"""


# -- the projects -------------------------------------------------------------------------
def write_markdown(project: Path, name: str, marker: int) -> None:
    title = name.capitalize()
    body = f"# {title}\n\n{title} page, marker{marker}x.\n"
    if name == "long":
        body += "".join(f"\n## Part {i}\n\n{LONG_TEXT}\n" for i in range(40))
    (project / "docs" / f"{name}.md").write_text(body)


def write_rst(project: Path, name: str, marker: int) -> None:
    title = name.capitalize()
    body = f"{title}\n{'=' * len(title)}\n\n{title} page, marker{marker}x.\n"
    if name == "index":
        body += "\n.. toctree::\n\n   about\n   long\n"
    if name == "long":
        body += "".join(f"\nPart {i}\n{'-' * 20}\n\n{LONG_TEXT}\n" for i in range(40))
    (project / "src" / f"{name}.rst").write_text(body)


@dataclass(frozen=True)
class Generator:
    name: str
    write: Callable[[Path, str, int], None]
    config: Callable[[Path], None]
    build: list[str]  # run in the project
    output: str
    urls: dict[str, str]


def mkdocs_config(project: Path) -> None:
    (project / "docs").mkdir()
    (project / "mkdocs.yml").write_text(
        "site_name: Reload benchmark\ntheme:\n  name: material\nnav:\n"
        "  - index.md\n  - about.md\n  - long.md\n"
    )


def sphinx_config(project: Path) -> None:
    (project / "src").mkdir()
    (project / "src" / "conf.py").write_text(
        "project = 'Reload benchmark'\nhtml_theme = 'alabaster'\n"
    )


GENERATORS = {
    "mkdocs-material": Generator(
        "mkdocs-material",
        write_markdown,
        mkdocs_config,
        [sys.executable, "-m", "mkdocs", "build", "-q"],
        "site",
        {"index": "/", "about": "/about/", "long": "/long/"},
    ),
    "sphinx": Generator(
        "sphinx",
        write_rst,
        sphinx_config,
        [sys.executable, "-m", "sphinx", "-q", "-b", "html", "src", "out"],
        "out",
        {"index": "/", "about": "/about.html", "long": "/long.html"},
    ),
}


# -- the servers --------------------------------------------------------------------------
@dataclass
class Served:
    """A running server: its process, its URL, the directory it serves from."""

    proc: subprocess.Popen[bytes]
    url: str
    output: Path
    builds_itself: bool


def start(kind: str, generator: Generator, project: Path) -> Served:
    port = free_port()
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONWARNINGS="ignore")
    output = project / generator.output
    if kind == "sitepeek":
        env["PYTHONPATH"] = str(REPO / "src")
        argv = [sys.executable, "-m", "sitepeek", "serve", str(output), "--quiet"]
        argv += ["--port", str(port), "--strict-port"]
    elif kind == "mkdocs serve":
        argv = [sys.executable, "-m", "mkdocs", "serve", "-a", f"127.0.0.1:{port}"]
    else:  # sphinx-autobuild
        argv = [sys.executable, "-m", "sphinx_autobuild", "src", "out", "-q"]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
    before = set(Path(tempfile.gettempdir()).glob("mkdocs_*"))
    proc = subprocess.Popen(
        argv,
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(proc, url + "/")
    if kind == "mkdocs serve":  # it builds into a temp dir of its own
        (output,) = set(Path(tempfile.gettempdir()).glob("mkdocs_*")) - before
    return Served(proc, url, output, builds_itself=kind != "sitepeek")


def wait_until_serving(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.args} did not serve {url} in time")


def stop(served: Served) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(served.proc.pid, signal.SIGTERM)
    try:
        served.proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(served.proc.pid, signal.SIGKILL)
        served.proc.wait()


class Writes(FileSystemEventHandler):
    """Wall-clock times (ms) of the writes into a directory."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = str(root)
        self.times: list[float] = []
        self.lock = threading.Lock()

    def dispatch(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write") or event.is_directory:
            return
        # What no server serves (Sphinx's .doctrees/, .buildinfo) is not the site.
        rel = os.path.relpath(os.fsdecode(event.src_path), self.root)
        if any(part.startswith(".") for part in Path(rel).parts):
            return
        with self.lock:
            self.times.append(time.time() * 1000)

    def between(self, start: float, end: float) -> list[float]:
        with self.lock:
            return [t for t in self.times if start <= t <= end]


# -- one run ------------------------------------------------------------------------------
@dataclass
class Build:
    reloads: dict[str, int]
    wrong: int
    edit_to_visible_ms: float
    end_to_visible_ms: float | None


@dataclass
class Result:
    generator: str
    server: str
    builds: list[Build] = field(default_factory=list)
    error: str | None = None


def run(kind: str, generator: Generator, browser: Browser, builds: int) -> Result:
    result = Result(generator.name, kind)
    with tempfile.TemporaryDirectory(prefix="sitepeek-gen-") as tmp:
        project = Path(tmp)
        generator.config(project)
        for page in PAGES:
            generator.write(project, page, 1)
        subprocess.run(generator.build, cwd=project, check=True, capture_output=True)
        served = start(kind, generator, project)
        writes = Writes(served.output)
        observer = Observer()
        observer.schedule(writes, str(served.output), recursive=True)
        observer.start()
        context = browser.new_context()
        try:
            seen = open_tabs(context, served, generator)
            for marker in range(2, builds + 2):
                result.builds.append(
                    one_build(served, generator, project, seen, writes, marker, context)
                )
        except Exception as exc:  # reported in the table, the run goes on
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            context.close()
            observer.stop()
            observer.join()
            stop(served)
    return result


def open_tabs(
    context: BrowserContext, served: Served, generator: Generator
) -> dict[str, list[tuple[int, float]]]:
    """Open a tab per page; the (marker, time) of every document each one loads."""
    seen: dict[str, list[tuple[int, float]]] = {page: [] for page in PAGES}
    pages: dict[Any, str] = {}

    def record(source: dict[str, Any], marker: int, at: float, title: str) -> None:
        page = pages.get(source["page"])
        if page is not None:
            seen[page].append((marker, at))

    context.expose_binding("__seen__", record)
    context.add_init_script(RECORDER)
    for page, url in generator.urls.items():
        tab = context.new_page()
        pages[tab] = page
        tab.goto(served.url + url)
        if page == "long":
            tab.evaluate("window.scrollTo(0, 2000)")
    pump(context, QUIET_S)  # every client connected to its server
    for documents in seen.values():
        documents.clear()
    return seen


def pump(context: BrowserContext, seconds: float) -> None:
    """Wait, letting Playwright deliver the tabs' records (the sync API only does so
    inside its own calls)."""
    context.pages[0].wait_for_timeout(seconds * 1000)


def one_build(
    served: Served,
    generator: Generator,
    project: Path,
    seen: dict[str, list[tuple[int, float]]],
    writes: Writes,
    marker: int,
    context: BrowserContext,
) -> Build:
    for documents in seen.values():
        documents.clear()
    edited = time.time() * 1000
    generator.write(project, "about", marker)
    if not served.builds_itself:
        subprocess.run(generator.build, cwd=project, check=True, capture_output=True)
    about = seen["about"]
    deadline = time.monotonic() + VISIBLE_TIMEOUT_MS / 1000
    while not any(m == marker for m, _ in about):
        if time.monotonic() > deadline:
            raise TimeoutError(f"build {marker}: the about tab never showed it")
        pump(context, 0.005)
    pump(context, QUIET_S)
    visible = min(at for m, at in about if m == marker)
    build_writes = writes.between(edited, time.time() * 1000)
    # The about page shows this build's marker, the others the first one: any other
    # document (no marker: a 404, a listing, a blank page; an older marker) is wrong.
    wrong = sum(
        shown != (marker if page == "about" else 1)
        for page, documents in seen.items()
        for shown, _ in documents
    )
    return Build(
        reloads={page: len(documents) for page, documents in seen.items()},
        wrong=wrong,
        edit_to_visible_ms=visible - edited,
        end_to_visible_ms=visible - max(build_writes) if build_writes else None,
    )


# -- report -------------------------------------------------------------------------------
def summarize(result: Result) -> dict[str, Any]:
    builds = result.builds
    ends = [b.end_to_visible_ms for b in builds if b.end_to_visible_ms is not None]
    return {
        "generator": result.generator,
        "server": result.server,
        "builds": len(builds),
        "reloads per build (about tab)": _spread([b.reloads["about"] for b in builds]),
        "reloads per build (other tabs)": _spread(
            [b.reloads[p] for b in builds for p in PAGES if p != "about"]
        ),
        "wrong pages": sum(b.wrong for b in builds),
        "build end → visible, median ms": round(statistics.median(ends)) if ends else None,
        "edit → visible, median ms": round(statistics.median(b.edit_to_visible_ms for b in builds))
        if builds
        else None,
        "error": result.error,
    }


def _spread(values: list[int]) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    mean = sum(values) / len(values)
    return f"{mean:.2f} ({low} to {high})" if low != high else f"{low}"


def table(rows: list[dict[str, Any]]) -> str:
    keys = [k for k in rows[0] if k not in ("error", "raw")]
    lines = ["| " + " | ".join(keys) + " |", "| " + " | ".join("---" for _ in keys) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(str(row[k]) for k in keys) + " |")
    errors = [f"- {r['generator']} / {r['server']}: {r['error']}" for r in rows if r["error"]]
    return "\n".join(lines + (["", *errors] if errors else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--builds", type=int, default=8)
    parser.add_argument("--generators", default=",".join(GENERATORS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.builds < 1:
        parser.error("--builds must be at least 1")
    names = [n for n in args.generators.split(",") if n]
    unknown = [n for n in names if n not in GENERATORS]
    if unknown:
        parser.error(f"unknown generator(s): {', '.join(unknown)}")
    executable = shutil.which("chromium")
    if executable is None:
        parser.error("chromium is not on PATH")
    rows = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            for name in names:
                generator = GENERATORS[name]
                other = "mkdocs serve" if name.startswith("mkdocs") else "sphinx-autobuild"
                for kind in ("sitepeek", other):
                    print(f"[generators] {name} with {kind}…", file=sys.stderr, flush=True)
                    result = run(kind, generator, browser, args.builds)
                    rows.append({**summarize(result), "raw": asdict(result)})
        finally:
            browser.close()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
