"""The --build runner in-process, with real commands: what it says and emits about the
copy of the last good build (test_build.py has the server around it, every model)."""

from __future__ import annotations

import io
import queue
import re
from pathlib import Path

from sitepeek.build import BuildRunner
from sitepeek.changes import BuildFinished, BuildStarted, ChangeEvent, Serving
from sitepeek.commands import Terminal
from sitepeek.snapshot import Snapshot

WAIT = 20.0


class Run:
    """A runner building ``site`` with a command that fails while ``fail`` exists."""

    def __init__(self, tmp_path: Path, limit: int) -> None:
        self.site = tmp_path / "site"
        self.site.mkdir()
        (self.site / "index.html").write_text("<p>good</p>")
        self.fail = tmp_path / "fail"
        self.out = io.StringIO()
        self.events: queue.Queue[ChangeEvent] = queue.Queue()
        self.snapshot = Snapshot(self.site, limit=limit, temp_dir=str(tmp_path))
        command = f"test ! -e {self.fail}"
        self.runner = BuildRunner(
            command, Terminal(self.out), self.events.put, tmp_path, None, snapshot=self.snapshot
        )

    def build(self) -> list[ChangeEvent]:
        """The events of the next build, up to its BuildFinished."""
        got: list[ChangeEvent] = []
        while not got or not isinstance(got[-1], BuildFinished):
            got.append(self.events.get(timeout=WAIT))
        assert isinstance(got[0], BuildStarted), got
        return got[1:]

    def again(self, failing: bool) -> list[ChangeEvent]:
        if failing:
            self.fail.touch()
        else:
            self.fail.unlink(missing_ok=True)
        self.runner.request(["source.txt"])
        return self.build()

    def lines(self, pattern: str) -> list[str]:
        return [line for line in self.out.getvalue().splitlines() if re.search(pattern, line)]


def test_a_failed_build_switches_to_the_copy_and_a_good_one_back(tmp_path: Path) -> None:
    run = Run(tmp_path, limit=1 << 20)
    run.fail.touch()
    run.runner.start()
    try:
        # The first build fails: nothing to fall back on, nothing switches.
        (finished,) = run.build()
        assert isinstance(finished, BuildFinished) and not finished.ok
        assert run.lines(r"^build failed \(exit 1\) \d+\.\d s · no good build yet: serving the")
        assert run.again(failing=False) == [BuildFinished(True, run.lines("^build ok")[-1])]
        # A failure switches to the copy before the gate opens; a second one stays.
        serving, finished = run.again(failing=True)
        assert isinstance(serving, Serving) and isinstance(finished, BuildFinished)
        assert not finished.ok
        copy = serving.snapshot
        assert copy == run.snapshot.directory
        assert Path(copy, "index.html").read_text() == "<p>good</p>"
        (finished,) = run.again(failing=True)
        assert isinstance(finished, BuildFinished) and not finished.ok
        # A good build switches back, before its BuildFinished.
        serving, finished = run.again(failing=False)
        assert serving == Serving("") and isinstance(finished, BuildFinished) and finished.ok
    finally:
        run.runner.stop()
    assert len(run.lines(r"^build failed \(exit 1\) \d+\.\d s · serving the last good build$")) == 2
    assert not Path(copy).exists()  # removed with the runner


def test_a_site_too_big_to_copy_is_said_once_and_served_as_it_is(tmp_path: Path) -> None:
    run = Run(tmp_path, limit=4)
    run.runner.start()
    try:
        assert [type(e) for e in run.build()] == [BuildFinished]
        assert run.again(failing=False)[-1] == BuildFinished(True, run.lines("^build ok")[-1])
        (finished,) = run.again(failing=True)  # no Serving: nothing to switch to
        assert isinstance(finished, BuildFinished) and not finished.ok
        assert run.snapshot.directory is None
    finally:
        run.runner.stop()
    note = (
        "build · no copy of the last good build (the site is over 4 bytes): while a build "
        "has failed, its output is served as it is"
    )
    assert run.lines(re.escape(note)) == [note]  # once, not after every good build
    assert run.lines(
        r"^build failed \(exit 1\) \d+\.\d s · serving the output as it is "
        r"\(the site is over 4 bytes\)$"
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("sitepeek-")] == []
