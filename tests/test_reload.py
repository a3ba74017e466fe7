"""The watcher: ignore filter, change batches, debounce, and real watchdog observers.

Watcher tests never sleep to wait for an event: callbacks feed a queue that the test
reads with a timeout. watchdog arms its watches inside ``Observer.start()`` (inotify
watches are added, the polling snapshot is taken, before it returns), so a change made
after ``Watcher.start()`` returns is always seen.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sitepeek import reload
from sitepeek.reload import (
    DEFAULT_IGNORES,
    FENCE_PREFIX,
    ChangeBatch,
    Debouncer,
    IgnoreFilter,
    Watcher,
    WatchError,
)

WAIT = 5.0  # generous upper bound for any awaited callback


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    """Fail a test that leaves a thread running (given a bounded grace period)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    for thread in set(threading.enumerate()) - before:
        thread.join(max(0.0, deadline - time.monotonic()))
    left = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not left, f"threads left running: {left}"


# -- IgnoreFilter ------------------------------------------------------------------------
# One path that each default pattern must ignore, and nothing else in the list must be
# needed to ignore it.
IGNORED_SAMPLES = {
    ".git/": "a/.git/HEAD",
    ".hg/": ".hg/store/data",
    ".svn/": "lib/.svn/entries",
    "node_modules/": "a/node_modules/b.js",
    "__pycache__/": "tools/__pycache__/x.cpython-311.pyc",
    "*.swp": "css/.site.css.swp",
    "*.swo": ".index.html.swo",
    "*.swx": ".index.html.swx",
    "4913": "blog/4913",
    "*~": "index.html~",
    ".#*": "posts/.#draft.md",
    "#*#": "#index.html#",
    "*.tmp": "index.html.tmp",
    "*___jb_tmp___": "index.html___jb_tmp___",
    "*___jb_old___": "css/site.css___jb_old___",
    ".goutputstream-*": ".goutputstream-XYZ123",
    "*.kate-swp": "index.html.kate-swp",
    ".DS_Store": "img/.DS_Store",
}

KEPT = [
    "index.html",
    "css/site.css",
    ".github/workflows/x.yml",
    ".gitignore",
    "git/x.html",
    "node_modules.html",
    "my_node_modules/a.js",
    "a.swp.html",
    "49130",
    "tmp/page.html",
    ".well-known/security.txt",
    "template.html",
]


def test_every_default_pattern_has_a_sample() -> None:
    assert set(IGNORED_SAMPLES) == set(DEFAULT_IGNORES)


@pytest.mark.parametrize(("pattern", "path"), sorted(IGNORED_SAMPLES.items()))
def test_default_pattern_ignores(pattern: str, path: str) -> None:
    assert IgnoreFilter().ignored(path, "/site")
    assert IgnoreFilter([pattern]).ignored(path, "/site")
    others = [p for p in DEFAULT_IGNORES if p != pattern]
    assert not IgnoreFilter(others).ignored(path, "/site")


@pytest.mark.parametrize("path", KEPT)
def test_default_filter_keeps(path: str) -> None:
    assert not IgnoreFilter().ignored(path, "/site")


def test_component_anywhere_and_absolute_paths() -> None:
    f = IgnoreFilter()
    assert f.ignored("/site/node_modules", "/site")  # the directory itself
    assert f.ignored("/site/a/node_modules/b/c.js", "/site")
    assert f.ignored("/site/deep/er/.git/objects/ab/cd", "/site")
    assert not f.ignored("/site/deep/er/page.html", "/site")
    assert not f.ignored("/site", "/site")
    assert not f.ignored(".", "/site")
    # The root's own name is not part of the relative path.
    assert not f.ignored("/work/node_modules/site/x.html", "/work/node_modules/site")


def test_extra_and_path_patterns() -> None:
    f = IgnoreFilter(extra=["drafts/", "build/*.map", "/private/", "*.bak"])
    assert f.ignored("drafts/a.md", "/s")
    assert f.ignored("blog/drafts/a.md", "/s")  # a directory pattern matches anywhere
    assert f.ignored("build/app.js.map", "/s")
    assert not f.ignored("src/build/app.js.map", "/s")  # a path pattern is root-relative
    assert not f.ignored("build/app.js", "/s")
    assert f.ignored("private/x/y.html", "/s")
    assert f.ignored("private", "/s")
    assert not f.ignored("public/private.html", "/s")
    assert f.ignored("old.bak", "/s")
    assert f.ignored(".git/config", "/s")  # the defaults still apply
    assert IgnoreFilter([]).ignored(".git/config", "/s") is False


def test_bad_pattern_rejected() -> None:
    with pytest.raises(ValueError):
        IgnoreFilter(["/"])


# -- ChangeBatch -------------------------------------------------------------------------
def test_summary() -> None:
    three = ChangeBatch(("css/site.css", "css/a.css", "img/x.png"))
    assert three.summary() == "3 files · css/site.css, css/a.css, img/x.png"
    assert ChangeBatch(("index.html",)).summary() == "1 file · index.html"
    many = ChangeBatch(tuple(f"p{i}" for i in range(300)))
    assert many.summary() == "300 files · p0, p1, p2 …"
    assert many.summary(limit=1) == "300 files · p0 …"
    assert ChangeBatch(()).summary() == "0 files"


# -- Debouncer ---------------------------------------------------------------------------
@dataclass
class Recorder:
    """Collects callbacks from another thread; tests await them with a timeout."""

    starts: int = 0
    batches: queue.Queue[ChangeBatch] = field(default_factory=queue.Queue)
    started: threading.Event = field(default_factory=threading.Event)

    def on_start(self) -> None:
        self.starts += 1
        self.started.set()

    def on_settle(self, batch: ChangeBatch) -> None:
        self.batches.put(batch)

    def next_batch(self, timeout: float = WAIT) -> ChangeBatch:
        try:
            return self.batches.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no change batch within {timeout} s")

    def paths_until(self, *expected: str, timeout: float = WAIT) -> set[str]:
        """Every path reported until all of ``expected`` have been seen."""
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        while not set(expected) <= seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"waited for {sorted(expected)}, saw {sorted(seen)}")
            seen.update(self.next_batch(remaining).paths)
        return seen


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def test_burst_is_one_batch(recorder: Recorder) -> None:
    debouncer = Debouncer(0.25, recorder.on_start, recorder.on_settle)
    try:
        paths = [f"dist/f{i}.html" for i in range(300)]
        for path in paths + paths[::-1]:  # duplicates keep their first-seen place
            debouncer.add(path)
        batch = recorder.next_batch()
    finally:
        debouncer.close()  # joins the thread: no callback can come later
    assert batch.paths == tuple(paths)
    assert recorder.starts == 1
    assert recorder.batches.empty()


def test_event_after_settle_is_a_new_batch(recorder: Recorder) -> None:
    # Two paths are a hand edit, ended by this quiet period alone: long enough that the
    # test's two adds below stay one burst even if it stalls between them.
    debouncer = Debouncer(0.5, recorder.on_start, recorder.on_settle)
    try:
        debouncer.add("a.html")
        assert recorder.next_batch().paths == ("a.html",)
        debouncer.add("a.html")
        debouncer.add("b.css")
        assert recorder.next_batch().paths == ("a.html", "b.css")
    finally:
        debouncer.close()
    assert recorder.starts == 2


def test_on_start_comes_at_the_start_of_a_burst(recorder: Recorder) -> None:
    debouncer = Debouncer(10.0, recorder.on_start, recorder.on_settle)
    try:
        debouncer.add("a.html")
        assert recorder.started.wait(WAIT)  # long before the 10 s quiet period ends
        assert recorder.batches.empty()
    finally:
        debouncer.close()
    assert recorder.batches.empty()  # close() drops what is pending


def test_continuous_stream_is_flushed_after_max_wait(recorder: Recorder) -> None:
    debouncer = Debouncer(0.1, recorder.on_start, recorder.on_settle, max_wait=0.3)
    try:
        began = time.monotonic()
        i = 0
        # Events every 10 ms never leave a 100 ms quiet gap; only max_wait can flush.
        while recorder.batches.empty() and time.monotonic() - began < WAIT:
            debouncer.add(f"f{i}")
            i += 1
            time.sleep(0.01)  # paces the writer; nothing is awaited here
        elapsed = time.monotonic() - began
        batch = recorder.next_batch(0)
    finally:
        debouncer.close()
    assert 0.25 <= elapsed < 2.0
    assert batch.paths[0] == "f0"


def test_failing_callback_does_not_stop_the_debouncer(
    recorder: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = threading.Event()

    def on_settle(batch: ChangeBatch) -> None:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("boom")
        recorder.on_settle(batch)

    debouncer = Debouncer(0.01, recorder.on_start, on_settle)
    try:
        debouncer.add("a")
        assert failed.wait(WAIT)
        debouncer.add("b")
        assert recorder.next_batch().paths == ("b",)
    finally:
        debouncer.close()
    assert "RuntimeError: boom" in capsys.readouterr().err


def test_close_joins_its_thread(recorder: Recorder) -> None:
    before = set(threading.enumerate())
    debouncer = Debouncer(0.01, recorder.on_start, recorder.on_settle)
    (thread,) = set(threading.enumerate()) - before
    assert thread.daemon
    debouncer.add("x")
    debouncer.close()
    assert not thread.is_alive()
    debouncer.add("y")  # after close: ignored, no error
    debouncer.close()  # idempotent


def test_debouncer_rejects_bad_timing(recorder: Recorder) -> None:
    with pytest.raises(ValueError):
        Debouncer(-1, recorder.on_start, recorder.on_settle)
    with pytest.raises(ValueError):
        Debouncer(0.1, recorder.on_start, recorder.on_settle, max_wait=0)


# -- Watcher (real observers) ------------------------------------------------------------
MakeWatcher = Callable[..., Watcher]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("<p>home</p>\n")
    (root / "css").mkdir()
    (root / "css" / "site.css").write_text("body {}\n")
    return root


@pytest.fixture
def make_watcher(recorder: Recorder) -> Iterator[MakeWatcher]:
    watchers: list[Watcher] = []

    def make(root: Path, **kwargs: object) -> Watcher:
        options: dict[str, object] = {
            "ignore": IgnoreFilter(),
            "delay": 0.03,
            "on_start": recorder.on_start,
            "on_settle": recorder.on_settle,
        }
        options.update(kwargs)
        watcher = Watcher(str(root), **options)  # type: ignore[arg-type]
        watchers.append(watcher)
        watcher.start()
        return watcher

    yield make
    for watcher in watchers:
        watcher.stop()


both_observers = pytest.mark.parametrize("poll", [False, True], ids=["native", "polling"])


@both_observers
def test_create_reported(
    site: Path, make_watcher: MakeWatcher, recorder: Recorder, poll: bool
) -> None:
    watcher = make_watcher(site, poll=poll)
    assert watcher.polling is poll
    (site / "css" / "new.css").write_text("a {}\n")
    assert recorder.paths_until("css/new.css") == {"css/new.css"}
    assert recorder.starts >= 1


@both_observers
def test_modify_reported(
    site: Path, make_watcher: MakeWatcher, recorder: Recorder, poll: bool
) -> None:
    make_watcher(site, poll=poll)
    (site / "css" / "site.css").write_text("body { color: red }\n")
    # The directory's own modified event is not reported, only the file.
    assert recorder.paths_until("css/site.css") == {"css/site.css"}


@both_observers
def test_delete_reported(
    site: Path, make_watcher: MakeWatcher, recorder: Recorder, poll: bool
) -> None:
    make_watcher(site, poll=poll)
    (site / "css" / "site.css").unlink()
    assert recorder.paths_until("css/site.css") == {"css/site.css"}


@both_observers
def test_move_reports_both_paths(
    site: Path, make_watcher: MakeWatcher, recorder: Recorder, poll: bool
) -> None:
    make_watcher(site, poll=poll)
    (site / "index.html").rename(site / "home.html")
    assert recorder.paths_until("index.html", "home.html") == {"index.html", "home.html"}


@both_observers
def test_atomic_save_reports_the_target(
    site: Path, make_watcher: MakeWatcher, recorder: Recorder, poll: bool
) -> None:
    make_watcher(site, poll=poll)
    tmp = site / "index.html.tmp"
    tmp.write_text("<p>new</p>\n")
    os.replace(tmp, site / "index.html")
    assert recorder.paths_until("index.html") == {"index.html"}


def test_vim_style_save_reports_only_the_file(
    site: Path, make_watcher: MakeWatcher, recorder: Recorder
) -> None:
    make_watcher(site)
    page = site / "index.html"
    (site / "4913").write_text("")  # vim checks the directory is writable
    (site / "4913").unlink()
    (site / ".index.html.swp").write_bytes(b"b0VIM")
    page.rename(site / "index.html~")  # backup, then write the file anew
    page.write_text("<p>vim</p>\n")
    (site / "index.html~").unlink()
    (site / ".index.html.swp").unlink()
    (site / "marker.txt").write_text("done\n")
    assert recorder.paths_until("marker.txt") == {"index.html", "marker.txt"}


@both_observers
def test_ignored_paths_not_reported(
    site: Path, make_watcher: MakeWatcher, recorder: Recorder, poll: bool
) -> None:
    make_watcher(site, poll=poll)
    (site / ".git").mkdir()
    (site / ".git" / "index").write_text("x")
    (site / "node_modules" / "pkg").mkdir(parents=True)
    (site / "node_modules" / "pkg" / "index.js").write_text("x")
    (site / ".index.html.swp").write_text("x")
    (site / "css" / "site.css~").write_text("x")
    (site / "real.html").write_text("<p>real</p>\n")
    assert recorder.paths_until("real.html") == {"real.html"}


@both_observers
def test_the_build_fence_is_reported_whatever_is_ignored(
    site: Path, make_watcher: MakeWatcher, recorder: Recorder, poll: bool
) -> None:
    # --ignore '.*' (or '.sitepeek-*') would otherwise hide the --build runner's fence,
    # and every build would wait out the fence timeout for its reload.
    make_watcher(site, poll=poll, ignore=IgnoreFilter(extra=[".*"]))
    (site / f"{FENCE_PREFIX}1-1").touch()
    (site / ".hidden.html").write_text("x")
    assert recorder.paths_until(f"{FENCE_PREFIX}1-1") == {f"{FENCE_PREFIX}1-1"}


def test_reading_files_is_not_a_change(
    site: Path, make_watcher: MakeWatcher, recorder: Recorder
) -> None:
    make_watcher(site)
    for _ in range(3):  # what the server does all day: open, read, close
        (site / "index.html").read_bytes()
    (site / "marker.txt").write_text("done\n")
    assert recorder.paths_until("marker.txt") == {"marker.txt"}


def test_new_directory_and_its_file(
    site: Path, make_watcher: MakeWatcher, recorder: Recorder
) -> None:
    make_watcher(site)
    (site / "blog").mkdir()
    (site / "blog" / "post.html").write_text("<p>post</p>\n")
    seen = recorder.paths_until("blog")
    if "blog/post.html" not in seen:  # a file written before its new dir got a watch
        (site / "blog" / "post.html").write_text("<p>post 2</p>\n")
        seen |= recorder.paths_until("blog/post.html")
    assert seen == {"blog", "blog/post.html"}


def test_nested_mkdir_keeps_watching(
    site: Path, make_watcher: MakeWatcher, recorder: Recorder
) -> None:
    # watchdog registers a directory made by `mkdir -p` twice in a race and warns from its
    # reader thread; under warnings-as-errors that used to end all later events.
    make_watcher(site)
    for i in range(100):
        (site / f"n{i}" / "x" / "y").mkdir(parents=True)
    (site / "marker.txt").write_text("done\n")
    seen = recorder.paths_until("marker.txt")
    assert {"n0", "n99"} <= seen


def test_extra_paths_outside_root_report_absolute_paths(
    tmp_path: Path, site: Path, make_watcher: MakeWatcher, recorder: Recorder
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    config = tmp_path / "site.toml"
    config.write_text("x = 1\n")
    (tmp_path / "unrelated.txt").write_text("x\n")
    make_watcher(site, extra_paths=[str(templates), str(config)])
    (templates / "base.html").write_text("<p>base</p>\n")
    (templates / "node_modules").mkdir()
    (tmp_path / "unrelated.txt").write_text("y\n")  # next to a watched file, not watched
    new_config = tmp_path / "site.toml.new"
    new_config.write_text("x = 2\n")
    os.replace(new_config, config)  # atomic save onto the watched file
    expected = {str(templates / "base.html"), str(config)}
    assert recorder.paths_until(*expected) == expected


def test_extra_path_inside_root_reports_root_relative(
    site: Path, make_watcher: MakeWatcher, recorder: Recorder
) -> None:
    vendored = site / "node_modules" / "lib"
    vendored.mkdir(parents=True)
    make_watcher(site, extra_paths=[str(vendored)])
    (vendored / "lib.js").write_text("x\n")  # watched on purpose, though under node_modules
    assert recorder.paths_until("node_modules/lib/lib.js") == {"node_modules/lib/lib.js"}


def test_missing_extra_path_raises(site: Path, tmp_path: Path, recorder: Recorder) -> None:
    missing = tmp_path / "nope"
    watcher = Watcher(
        str(site),
        extra_paths=[str(missing)],
        ignore=IgnoreFilter(),
        on_start=recorder.on_start,
        on_settle=recorder.on_settle,
    )
    with pytest.raises(WatchError, match="nope: no such file or directory"):
        watcher.start()
    watcher.stop()  # harmless after a failed start


def test_missing_root_raises(tmp_path: Path, recorder: Recorder) -> None:
    watcher = Watcher(
        str(tmp_path / "gone"),
        ignore=IgnoreFilter(),
        on_start=recorder.on_start,
        on_settle=recorder.on_settle,
    )
    with pytest.raises(WatchError, match="gone"):
        watcher.start()


def test_falls_back_to_polling(
    site: Path,
    make_watcher: MakeWatcher,
    recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_inotify() -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(reload, "Observer", no_inotify)
    logged: list[str] = []
    watcher = make_watcher(site, log=logged.append)
    assert watcher.polling
    assert logged == [
        "sitepeek: cannot use native file events (inotify watch limit reached); polling instead"
    ]
    (site / "index.html").write_text("<p>polled</p>\n")
    assert recorder.paths_until("index.html") == {"index.html"}


def test_polling_does_not_follow_symlinks_out(
    tmp_path: Path, site: Path, make_watcher: MakeWatcher, recorder: Recorder
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (site / "link-out").symlink_to(outside)
    (site / "loop").symlink_to(site)
    make_watcher(site, poll=True)
    (outside / "secret.txt").write_text("x\n")
    (site / "marker.txt").write_text("done\n")
    assert recorder.paths_until("marker.txt") == {"marker.txt"}


def test_stop_joins_all_threads(site: Path, recorder: Recorder) -> None:
    before = set(threading.enumerate())
    with Watcher(
        str(site), ignore=IgnoreFilter(), on_start=recorder.on_start, on_settle=recorder.on_settle
    ):
        assert set(threading.enumerate()) - before
    assert set(threading.enumerate()) - before == set()
