"""A small static site generator for the --build tests: real phases, real pauses.

Run in a project directory: reads ``pages/*.txt`` and ``style.txt`` and writes
``site/NAME.html`` and ``site/style.css``. Like real generators it works in phases with
pauses in between (GEN_PAUSE seconds, default 0.2): with GEN_CLEAN=1 it first empties
the output as MkDocs does, and it writes every page in two halves with a pause in
between, so a request answered during a build would see a missing or half-written page.
Without GEN_CLEAN it writes only the files whose content changed (an incremental
build: a style change writes style.css alone).

A page whose text contains FAIL fails the build before the output is touched: a
coloured message on stderr, exit status 2. A page whose text contains HALF fails it
half-way, as a generator that crashes on a page does: the output is emptied (GEN_CLEAN)
and the pages before it are written, then the first half of it, then exit status 1.
Every run appends ``start N`` and then ``end N`` (or ``fail N``) to the file GEN_LOG
names (outside the sources!). With GEN_GO set, nothing happens until the file it names
exists (a test connects its client first); with GEN_HOLD set, a build waits after
reading its sources while the file it names exists.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

START = '<!doctype html><html><head><link rel="stylesheet" href="style.css"></head><body>'


def page(text: str) -> tuple[str, str]:
    """A page in two halves; each half names the text, so a response mixing two
    builds, or missing its end, is caught."""
    return (
        f'{START}<h1 data-text="{text}">{text}</h1>',
        f'<p data-end="{text}">end</p></body></html>',
    )


def main() -> int:
    pause = float(os.environ.get("GEN_PAUSE", "0.2"))
    go = os.environ.get("GEN_GO")
    while go and not Path(go).exists():
        time.sleep(0.01)
    log = Path(os.environ["GEN_LOG"])
    number = 1 + sum(1 for line in log.read_text().splitlines() if line.startswith("start"))
    # The sources are read before "start" is logged: an edit after it is for the next build.
    texts = {p.stem: p.read_text().strip() for p in sorted(Path("pages").glob("*.txt"))}
    with log.open("a") as f:
        f.write(f"start {number}\n")
    print(f"building #{number}", flush=True)
    hold = os.environ.get("GEN_HOLD")
    while hold and Path(hold).exists():
        time.sleep(0.01)
    broken = [name for name, text in texts.items() if "FAIL" in text]
    if broken:
        print(f"\x1b[31merror:\x1b[0m page <{broken[0]}> says FAIL", file=sys.stderr, flush=True)
        with log.open("a") as f:
            f.write(f"fail {number}\n")
        return 2
    out = Path("site")
    out.mkdir(exist_ok=True)
    if os.environ.get("GEN_CLEAN") == "1":
        for old in out.iterdir():
            old.unlink()
        time.sleep(pause)
    style = Path("style.txt")
    if style.exists():
        write_if_changed(out / "style.css", [style.read_text()], 0)
    for name, text in texts.items():
        if "HALF" in text:
            (out / f"{name}.html").write_text(page(text)[0])
            print(f"error: page <{name}> crashed half-way", file=sys.stderr, flush=True)
            with log.open("a") as f:
                f.write(f"fail {number}\n")
            return 1
        write_if_changed(out / f"{name}.html", list(page(text)), pause)
    with log.open("a") as f:
        f.write(f"end {number}\n")
    print(f"built #{number}: {len(texts)} pages", flush=True)
    return 0


def write_if_changed(path: Path, parts: list[str], pause: float) -> None:
    if path.exists() and path.read_text() == "".join(parts):
        return
    with path.open("w") as f:
        for index, part in enumerate(parts):
            if index:
                time.sleep(pause)
            f.write(part)
            f.flush()


if __name__ == "__main__":
    sys.exit(main())
