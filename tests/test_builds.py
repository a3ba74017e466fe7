"""Recognising builds without a browser: what counts as a change (fingerprints), what a
build means for each tab (tabs.decide), how build events travel (changes), and the
debounce of builds that write in phases or delete pages first (reload.Debouncer).

Debouncer tests await callbacks through a queue; the pauses they sleep are the build
pattern under test (a generator's pause between phases), never a wait for an event.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sitepeek import changes
from sitepeek.changes import (
    BuildFinished,
    BuildStarted,
    ChangeFeed,
    CompanionExited,
    Pending,
    Settled,
)
from sitepeek.fingerprints import Fingerprints
from sitepeek.reload import (
    BUILD_PATHS,
    INITIAL_PAUSE,
    PAUSE_FACTOR,
    ChangeBatch,
    Debouncer,
    servable,
)
from sitepeek.tabs import MAX_URLS, TabReport, decide, files_for

WAIT = 5.0


# -- fingerprints -------------------------------------------------------------------------
@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "index.html").write_text("<p>home</p>\n")
    (tmp_path / "css").mkdir()
    (tmp_path / "css" / "site.css").write_text("body {}\n")
    (tmp_path / ".doctrees").mkdir()
    (tmp_path / ".doctrees" / "env.pickle").write_bytes(b"x")
    return tmp_path


def test_identical_rewrite_is_no_change(tree: Path) -> None:
    prints = Fingerprints(str(tree))
    prints.scan()
    (tree / "index.html").write_text("<p>home</p>\n")  # same bytes, new mtime
    (tree / "css" / "site.css").write_text("body { color: red }\n")
    assert prints.changed(["index.html", "css/site.css"]) == ["css/site.css"]
    # The new content is what later writes are compared with.
    (tree / "css" / "site.css").write_text("body { color: red }\n")
    assert prints.changed(["css/site.css"]) == []


def test_same_size_different_bytes_is_a_change(tree: Path) -> None:
    prints = Fingerprints(str(tree))
    prints.scan()
    (tree / "index.html").write_text("<p>HOME</p>\n")
    assert prints.changed(["index.html"]) == ["index.html"]


def test_deletion_creation_and_a_file_that_came_and_went(tree: Path) -> None:
    prints = Fingerprints(str(tree))
    prints.scan()
    (tree / "index.html").unlink()
    (tree / "new.html").write_text("<p>new</p>\n")
    assert prints.changed(["index.html", "new.html", "tmp.html"]) == ["index.html", "new.html"]
    (tree / "index.html").write_text("<p>home</p>\n")  # back, as before it was deleted
    assert prints.changed(["index.html"]) == ["index.html"]  # (its deletion was reported)


def test_delete_and_recreate_identically_within_one_build_is_no_change(tree: Path) -> None:
    prints = Fingerprints(str(tree))
    prints.scan()
    (tree / "index.html").unlink()
    (tree / "index.html").write_text("<p>home</p>\n")
    assert prints.changed(["index.html", "css"]) == []


def test_big_files_and_files_past_the_budget_count_on_every_event(tree: Path) -> None:
    (tree / "big.bin").write_bytes(b"x" * 1000)
    prints = Fingerprints(str(tree), limit=100)
    prints.scan()
    (tree / "big.bin").write_bytes(b"x" * 1000)
    assert prints.changed(["big.bin"]) == ["big.bin"]
    unhashed = Fingerprints(str(tree))
    unhashed.scan(budget=0)
    (tree / "index.html").write_text("<p>home</p>\n")
    assert unhashed.changed(["index.html"]) == ["index.html"]  # never hashed: unknown
    (tree / "index.html").write_text("<p>home</p>\n")
    assert unhashed.changed(["index.html"]) == []  # hashed since


def test_scan_keeps_what_it_is_told_and_absolute_paths_always_change(tree: Path) -> None:
    prints = Fingerprints(str(tree))
    prints.scan(keep=servable)
    assert len(prints) == 3  # index.html, css, css/site.css: no .doctrees
    assert prints.changed([str(tree / "elsewhere.txt")]) == [str(tree / "elsewhere.txt")]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("index.html", True),
        ("_redirects", True),
        (".well-known/security.txt", True),
        (".buildinfo", False),
        (".doctrees/environment.pickle", False),
        ("docs/.hidden/x.html", False),
        (".well-known/.secret", False),
        ("a/.well-known/x", False),
    ],
)
def test_servable(path: str, expected: bool) -> None:
    assert servable(path) is expected


# -- tabs ----------------------------------------------------------------------------------
def test_files_for_a_url() -> None:
    assert files_for("/") == ("index.html", "index.htm")
    assert files_for("/about/") == ("about/index.html", "about/index.htm")
    assert files_for("/about") == (
        "about",
        "about.html",
        "about.htm",
        "about/index.html",
        "about/index.htm",
    )
    assert files_for("/docs/a.css", "/docs/") == (
        "a.css",
        "a.css.html",
        "a.css.htm",
        "a.css/index.html",
        "a.css/index.htm",
    )
    assert files_for("/docs", "/docs/") == ("index.html", "index.htm")
    assert files_for("/other/a.css", "/docs/") == ()


def report(page: str, *urls: str, status: int = 200) -> TabReport:
    tab = TabReport()
    tab.add(page, status, list(urls))
    return tab


EXISTING = {"index.html", "about/index.html", "a.css", "b.css", "pic.png", "app.js"}


@pytest.mark.parametrize(
    ("tab", "changed", "action", "files"),
    [
        (report("/", "/a.css"), ["index.html"], "reload", ()),
        (report("/", "/a.css", "/pic.png"), ["a.css", "b.css"], "css", ("a.css",)),
        (report("/", "/a.css", "/pic.png"), ["pic.png"], "images", ("pic.png",)),
        (report("/", "/a.css", "/pic.png"), ["pic.png", "a.css"], "reload", ("pic.png", "a.css")),
        (report("/", "/a.css", "/app.js"), ["app.js"], "reload", ("app.js",)),
        (report("/about/", "/a.css"), ["index.html", "b.css"], "none", ()),
        (report("/about/", "/a.css"), ["_redirects"], "reload", ()),
        (report("/about/", "/a.css"), ["/elsewhere/layout.html"], "reload", ()),
        (report("/missing/", "/a.css"), ["b.css"], "reload", ()),  # a listing or a 404
        (report("/about/", "/a.css", status=404), ["b.css"], "reload", ()),
        # A tab that has not said (yet): its client swaps what it links, or reloads.
        (TabReport(), ["b.css", "a.css"], "css", ("b.css", "a.css")),
        (TabReport(), ["pic.png"], "images", ("pic.png",)),
        (TabReport(), ["b.css", "pic.png"], "reload", ()),
        (TabReport(), ["app.js"], "reload", ()),
        (TabReport(), ["/elsewhere/site.css"], "reload", ()),
        (TabReport(), ["a.css", "_headers"], "reload", ()),
        (report("/about/"), [], "none", ()),
    ],
)
def test_decide(tab: TabReport, changed: list[str], action: str, files: tuple[str, ...]) -> None:
    decision = decide(tab, changed, "/", EXISTING.__contains__)
    assert (decision.action, decision.files) == (action, files)


def test_decide_under_a_base_path_and_without_a_root() -> None:
    tab = report("/docs/about/", "/docs/a.css")
    assert decide(tab, ["a.css"], "/docs/", EXISTING.__contains__).action == "css"
    assert decide(tab, ["a.css"], "/docs/", None).action == "reload"


def test_a_tab_that_reports_too_much_is_treated_as_one_that_did_not_say() -> None:
    tab = report("/", *(f"/f{i}.css" for i in range(MAX_URLS + 1)))
    assert tab.overflow and not tab.resources
    assert decide(tab, ["app.js"], "/", EXISTING.__contains__).action == "reload"
    # A stylesheet may be one of those it loaded: its client swaps it if it links it.
    assert decide(tab, ["b.css"], "/", EXISTING.__contains__).action == "css"


def test_malformed_report_fields_are_ignored() -> None:
    tab = TabReport()
    tab.add(42, "200", ["/a.css", 7, "relative.css", None])
    tab.add("no-slash", 999, "not a list")
    assert (tab.page, tab.status, tab.resources) == (None, 0, {"/a.css"})


# -- changes --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "event",
    [
        Pending(12.5),
        Settled(("a.html", "b c.css"), 3, 10.0, 20.0),
        Settled((), 0, 1.0, 2.0),
        changes.PageSeen("/about/"),
    ],
)
def test_events_survive_the_relay(event: changes.ChangeEvent) -> None:
    line = changes.encode(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert changes.decode(line) == event


@pytest.mark.parametrize(
    "line", [b"", b"[]", b"{", b'{"type":"settled"}', b'{"type":"other"}', b'"pending"']
)
def test_malformed_relay_lines_are_dropped(line: bytes) -> None:
    assert changes.decode(line) is None


def test_a_late_subscriber_learns_the_latest_build_and_one_in_flight() -> None:
    feed = ChangeFeed()
    first = Settled(("a.html",), 1, 1.0, 2.0)
    feed.emit(first)
    feed.emit(Settled((), 1, 3.0, 4.0))  # identical rewrites: not the latest build
    seen: list[object] = []
    feed.subscribe(seen.append)
    assert seen == [first]
    feed.emit(Pending(5.0))
    late: list[object] = []
    feed.reset()  # as a forked worker does: subscribers go, what happened stays
    feed.subscribe(late.append)
    assert late == [first, Pending(5.0)]


def test_a_late_subscriber_learns_what_the_tabs_must_show() -> None:
    """Commands start with the server: a --run command failing at once, or a first
    build failing fast, can end before a worker model has made its handlers."""
    feed = ChangeFeed()
    exited = CompanionExited("npm run api", "run 'npm run api' ended (exit 1)", "EADDRINUSE")
    failed = BuildFinished(False, "build failed (exit 2) 0.1 s", "error")
    feed.emit(exited)
    feed.emit(BuildStarted())
    feed.emit(failed)
    seen: list[object] = []
    feed.subscribe(seen.append)
    assert seen == [failed, exited]
    # A build running after the failure: the failure's overlay, then the gate closed.
    feed.emit(BuildStarted())
    late: list[object] = []
    feed.subscribe(late.append)
    assert late == [failed, BuildStarted(), exited]
    # A good build clears the failure.
    feed.emit(BuildFinished(True, "build ok 0.1 s"))
    latest: list[object] = []
    feed.subscribe(latest.append)
    assert latest == [exited]


# -- the debouncer and builds -------------------------------------------------------------
class Batches:
    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[float, ChangeBatch]] = queue.Queue()
        self.starts = 0

    def on_start(self) -> None:
        self.starts += 1

    def on_settle(self, batch: ChangeBatch) -> None:
        self.queue.put((time.monotonic(), batch))

    def next(self, timeout: float = WAIT) -> tuple[float, ChangeBatch]:
        return self.queue.get(timeout=timeout)

    def none_within(self, seconds: float) -> bool:
        try:
            self.queue.get(timeout=seconds)
        except queue.Empty:
            return True
        return False


@pytest.fixture
def batches() -> Iterator[Batches]:
    before = set(threading.enumerate())
    yield Batches()
    left = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not left


def phases(debouncer: Debouncer, pause: float, *groups: list[str]) -> None:
    for i, group in enumerate(groups):
        if i:
            time.sleep(pause)  # the generator's pause between phases: the pattern
        for path in group:
            debouncer.add(path)


def test_a_lone_save_settles_after_the_short_delay(batches: Batches) -> None:
    debouncer = Debouncer(0.03, batches.on_start, batches.on_settle)
    try:
        began = time.monotonic()
        debouncer.add("css/site.css")
        at, batch = batches.next()
    finally:
        debouncer.close()
    assert batch.paths == ("css/site.css",)
    assert at - began < 0.03 + 0.05  # not a build's longer quiet period


def test_a_build_with_pauses_is_one_batch_and_its_pauses_are_learned(batches: Batches) -> None:
    debouncer = Debouncer(0.03, batches.on_start, batches.on_settle)
    try:
        assert debouncer.build_quiet == pytest.approx(0.03 + PAUSE_FACTOR * INITIAL_PAUSE)
        static = [f"_static/f{i}.js" for i in range(BUILD_PATHS)]
        # Pauses under the initial guess: one batch.
        phases(debouncer, 0.08, static, ["p1.html", "p2.html"], ["searchindex.js"])
        _, batch = batches.next()
        assert set(batch.paths) == {*static, "p1.html", "p2.html", "searchindex.js"}
        assert batches.none_within(0.3)
        assert debouncer.build_quiet >= 0.03 + PAUSE_FACTOR * 0.08
    finally:
        debouncer.close()


def test_a_build_split_by_a_longer_pause_teaches_the_next_build(batches: Batches) -> None:
    debouncer = Debouncer(0.03, batches.on_start, batches.on_settle)
    static = [f"_static/f{i}.js" for i in range(BUILD_PATHS)]
    pages = [f"p{i}.html" for i in range(BUILD_PATHS)]
    try:
        phases(debouncer, 0.45, static, pages)
        assert batches.next()[1].paths == tuple(static)  # the first build is split
        assert batches.next()[1].paths == tuple(pages)
        assert debouncer.build_quiet >= 0.03 + PAUSE_FACTOR * 0.45
        phases(debouncer, 0.45, static, pages)  # the next one with the same pause is not
        assert set(batches.next()[1].paths) == {*static, *pages}
        assert batches.none_within(0.5)
    finally:
        debouncer.close()


def test_a_deleted_page_holds_the_build_until_it_is_back(batches: Batches, tmp_path: Path) -> None:
    page = tmp_path / "index.html"
    page.write_text("old")
    debouncer = Debouncer(
        0.03, batches.on_start, batches.on_settle, exists=lambda p: (tmp_path / p).exists()
    )
    try:
        page.unlink()
        debouncer.add("index.html", "deleted")
        # Far longer than any quiet period: still held while the page is missing.
        assert batches.none_within(0.6)
        page.write_text("new")
        back = time.monotonic()
        debouncer.add("index.html")
        at, batch = batches.next()
    finally:
        debouncer.close()
    assert batch.paths == ("index.html",)
    assert at - back < 0.5


def test_a_page_deleted_for_good_is_released_after_the_hold(
    batches: Batches, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sitepeek import reload

    monkeypatch.setattr(reload, "DELETED_PAGE_HOLD", 0.3)
    debouncer = Debouncer(0.03, batches.on_start, batches.on_settle, exists=lambda p: False)
    try:
        began = time.monotonic()
        debouncer.add("gone.html", "deleted")
        debouncer.add("old-bundle.js", "deleted")
        at, batch = batches.next()
    finally:
        debouncer.close()
    assert batch.paths == ("gone.html", "old-bundle.js")
    assert 0.3 <= at - began < 2.0


def test_deleted_assets_alone_do_not_hold(batches: Batches) -> None:
    debouncer = Debouncer(0.03, batches.on_start, batches.on_settle, exists=lambda p: False)
    try:
        began = time.monotonic()
        debouncer.add("assets/index-OLD.js", "deleted")
        at, batch = batches.next()
    finally:
        debouncer.close()
    assert batch.paths == ("assets/index-OLD.js",)
    assert at - began < 1.0


def test_a_file_still_open_for_writing_holds_the_burst(batches: Batches) -> None:
    debouncer = Debouncer(0.03, batches.on_start, batches.on_settle)
    try:
        debouncer.add("index.html", "writing")  # truncated by an editor's save...
        assert batches.none_within(0.2)  # ...that stalls before writing
        closed = time.monotonic()
        debouncer.add("index.html", "closed")
        at, batch = batches.next()
    finally:
        debouncer.close()
    assert batch.paths == ("index.html",)
    assert at - closed < 0.03 + 0.1


def test_a_writer_that_keeps_its_file_open_is_released(
    batches: Batches, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sitepeek import reload

    monkeypatch.setattr(reload, "OPEN_HOLD", 0.2)
    debouncer = Debouncer(0.03, batches.on_start, batches.on_settle)
    try:
        began = time.monotonic()
        debouncer.add("site.log", "writing")
        at, batch = batches.next()
    finally:
        debouncer.close()
    assert batch.paths == ("site.log",)
    assert 0.2 <= at - began < 1.5


def test_watcher_reports_only_real_changes_of_served_files(tmp_path: Path) -> None:
    from sitepeek.reload import IgnoreFilter, Watcher

    root = tmp_path / "site"
    root.mkdir()
    (root / "sitemap.xml").write_text("<urlset/>\n")
    (root / "index.html").write_text("<p>home</p>\n")
    got: queue.Queue[ChangeBatch] = queue.Queue()
    watcher = Watcher(str(root), ignore=IgnoreFilter(), on_start=lambda: None, on_settle=got.put)
    watcher.start()
    try:
        (root / ".buildinfo").write_text("config: x\n")
        (root / ".doctrees").mkdir()
        (root / ".doctrees" / "environment.pickle").write_bytes(os.urandom(64))
        (root / "sitemap.xml").write_text("<urlset/>\n")
        assert got.get(timeout=WAIT).paths == ()  # a rewrite, no change
        (root / "index.html").write_text("<p>new</p>\n")
        assert got.get(timeout=WAIT).paths == ("index.html",)
    finally:
        watcher.stop()


def test_a_recreated_directory_compares_what_is_in_it(tree: Path) -> None:
    prints = Fingerprints(str(tree))
    prints.scan()
    (tree / "css" / "site.css").unlink()
    (tree / "css").rmdir()
    (tree / "css").mkdir()
    (tree / "css" / "site.css").write_text("body { color: blue }\n")
    (tree / "css" / "new.css").write_text("a {}\n")
    # Only the directory's event was seen: its files are compared all the same.
    assert prints.changed(["css"]) == ["css/new.css", "css/site.css"]
    (tree / "css" / "site.css").unlink()
    (tree / "css" / "new.css").unlink()
    (tree / "css").rmdir()
    assert prints.changed(["css"]) == ["css", "css/new.css", "css/site.css"]


def test_a_phase_right_after_a_build_is_a_build_too(batches: Batches) -> None:
    debouncer = Debouncer(0.03, batches.on_start, batches.on_settle)
    try:
        phases(debouncer, 0.4, [f"_static/f{i}.css" for i in range(BUILD_PATHS)])
        batches.next()
        debouncer.add("about.html")  # then a pause longer than the lone-save delay:
        time.sleep(0.1)  # the pattern (Sphinx writes its pages, then its indices)
        debouncer.add("searchindex.js")
        assert batches.next()[1].paths == ("about.html", "searchindex.js")
    finally:
        debouncer.close()


def test_outcomes_survive_the_relay_and_add_up() -> None:
    outcome = changes.Outcome(4, reloaded=1, css=2, images=0, unaffected=3)
    assert changes.decode_outcome(changes.encode_outcome(outcome)) == outcome
    assert changes.decode_outcome(b'{"type":"outcome","version":true}') is None
    assert changes.decode_outcome(changes.encode(Pending(1.0))) is None
    total = outcome + changes.Outcome(4, reloaded=1)
    assert total.summary() == "tabs: 2 reloaded, 2 css swapped, 3 unaffected"
    assert changes.Outcome(4).summary() == "no tabs"


def test_a_fifo_is_never_read(tree: Path) -> None:
    os.mkfifo(tree / "fifo")
    prints = Fingerprints(str(tree))
    prints.scan()  # would block forever reading the FIFO
    assert prints.changed(["fifo"]) == []
