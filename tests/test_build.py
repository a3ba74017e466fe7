"""--build and --run against a real generator (tests/sitegen.py), in every worker model.

The generator writes in phases with pauses and records each run in builds.log, so the
tests can tell builds apart; the reload WebSocket and plain HTTP requests see what a
browser would. Every wait is on a condition (a log line, a message), never a sleep.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import WORKER_MODELS, Server, children, request, start_server, stop_cleanly
from sitegen import page
from test_livereload import OP_TEXT, WsClient, connect_ws, one_per_worker

SITEGEN = Path(__file__).with_name("sitegen.py")
BUILD = f"{shlex.quote(sys.executable)} {shlex.quote(str(SITEGEN))}"
WAIT = 20.0  # upper bound for any awaited condition (builds run on a busy machine)
PAGES = {"a": "alpha", "b": "beta", "c": "gamma"}
# The terminal line of a failed build answered from the copy of the last good one.
SERVING_LAST_GOOD = r"^build failed \(exit {}\) \d+\.\d s · serving the last good build$"
PAGE = re.compile(rb'<h1 data-text="([^"]*)">.*<p data-end="([^"]*)">end</p>.*</body></html>', re.S)


@pytest.fixture(params=WORKER_MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_project(tmp_path: Path, style: str = "h1 { color: red }\n") -> Path:
    """The sources tests/sitegen.py builds the site from: pages and a stylesheet."""
    root = tmp_path / "project"
    (root / "pages").mkdir(parents=True)
    for name, text in PAGES.items():
        (root / "pages" / f"{name}.txt").write_text(text)
    (root / "style.txt").write_text(style)
    (tmp_path / "builds.log").write_text("")
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def go_file(project: Path) -> Path:
    return project.parent / "go"


def start_building(
    project: Path,
    model: str,
    *args: str,
    pause: float = 0.2,
    clean: bool = False,
    env: dict[str, str] | None = None,
) -> Server:
    """A server building ``project`` with sitegen; its first build waits for the go file
    (see :func:`first_build_seen`)."""
    env = {"GEN_PAUSE": str(pause), "GEN_CLEAN": "1" if clean else "0", **(env or {})}
    env["GEN_GO"] = str(go_file(project))
    env["GEN_LOG"] = str(project.parent / "builds.log")
    return start_server(project / "site", model, "--build", BUILD, *args, env=env, cwd=project)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def builds(project: Path) -> list[str]:
    return (project.parent / "builds.log").read_text().splitlines()


def wait_for_log(project: Path, line: str) -> None:
    wait_for(lambda: line in builds(project), f"{line!r} in builds.log")


def output_lines(server: Server, pattern: str) -> list[str]:
    return [line.rstrip("\n") for line in server.stdout_lines if re.search(pattern, line)]


def edit(project: Path, name: str, text: str) -> None:
    (project / "pages" / f"{name}.txt").write_text(text)


def complete_page(body: bytes) -> str:
    """The text of a page served whole: both halves from the same build."""
    match = PAGE.search(body)
    assert match is not None, body
    assert match.group(1) == match.group(2), body
    return match.group(1).decode()


class Hammer:
    """GET a page again and again on fresh connections until stopped."""

    def __init__(self, server: Server, target: str) -> None:
        self.responses: list[tuple[int, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(server, target), daemon=True)
        self._thread.start()

    def _run(self, server: Server, target: str) -> None:
        while not self._stop.is_set():
            response = request(server, "GET", target)
            self.responses.append((response.status, response.body))

    def stop(self) -> list[tuple[int, bytes]]:
        self._stop.set()
        self._thread.join(WAIT)
        return self.responses


def first_build_seen(server: Server, project: Path) -> WsClient:
    """A reload WebSocket connected before the first build writes anything, and the one
    reload that build gives (the site did not exist before it)."""
    ws = connect_ws(server)
    go_file(project).touch()
    assert set(ws.recv_reload(WAIT)) == {"a.html", "b.html", "c.html", "style.css"}
    assert builds(project) == ["start 1", "end 1"]
    return ws


# -- builds, reloads and the gate ------------------------------------------------------
def test_one_reload_per_build_and_no_page_from_a_half_written_site(
    project: Path, model: str
) -> None:
    server = start_building(project, model, pause=0.3, clean=True)
    try:
        ws = first_build_seen(server, project)
        hammer = Hammer(server, "/a.html")
        wait_for(lambda: len(hammer.responses) >= 3, "pages served between builds")
        for number, text in ((2, "alpha two"), (3, "alpha three")):
            edit(project, "a", text)
            paths = ws.recv_reload(WAIT)
            # One reload, sent after the build ended, never during it: the next message
            # (if a build sent two) would arrive before the next build has even started.
            assert builds(project)[-1] == f"end {number}", builds(project)
            # The build rewrote every file; only a.html has other bytes (the rest is
            # not a change, so no reason to reload a tab for it).
            assert paths == ["a.html"]
            wait_for(lambda t=text: any(t.encode() in b for _, b in hammer.responses), text)
        responses = hammer.stop()
        # Every request was answered from a whole site: MkDocs-like cleaning and pages
        # written in halves never showed through.
        assert {status for status, _ in responses} == {200}, responses
        texts = [complete_page(body) for _, body in responses]
        assert texts[0] == "alpha" and texts[-1] == "alpha three"
        assert set(texts) <= {"alpha", "alpha two", "alpha three"}
        ws.close()
    finally:
        stop_cleanly(server)
    assert builds(project) == ["start 1", "end 1", "start 2", "end 2", "start 3", "end 3"]
    summaries = output_lines(server, r"^build (ok|failed)")
    assert len(summaries) == 3
    assert all(re.fullmatch(r"build ok \d+\.\d s", line) for line in summaries), summaries
    assert output_lines(server, r"^build \| built #3: 3 pages$")  # the prefixed output
    assert output_lines(server, r"reloads?\.$")[-1].endswith(" 3 reloads."), server.stdout_lines


def test_changes_during_a_build_give_exactly_one_follow_up(project: Path, model: str) -> None:
    hold = project.parent / "hold"  # while it exists, a started build waits
    server = start_building(project, model, env={"GEN_HOLD": str(hold)})
    go_file(project).touch()
    try:
        wait_for_log(project, "end 1")
        hold.touch()
        edit(project, "a", "alpha two")
        wait_for_log(project, "start 2")
        for name in ("b", "c"):
            edit(project, name, f"{PAGES[name]} two")
            wait_for(
                lambda n=name: output_lines(server, rf"^build · queued next · .*pages/{n}\.txt"),
                f"the change to {name} queued",
            )
        hold.unlink()
        wait_for_log(project, "end 3")
        wait_for(lambda: len(output_lines(server, "^reload · ")) == 3, "build 3's reload")
        edit(project, "a", "alpha three")
        wait_for(lambda: len(output_lines(server, "^reload · ")) == 4, "build 4's reload")
    finally:
        stop_cleanly(server)
    # Never two at once, and the burst during build 2 became one build, not two.
    assert builds(project) == [f"{w} {n}" for n in range(1, 5) for w in ("start", "end")]
    starts = output_lines(server, r"^build · (?!queued next)")
    assert len(starts) == 4, starts
    assert starts[1].endswith("1 file changed · pages/a.txt")
    assert starts[2].endswith("2 files changed · pages/b.txt, pages/c.txt")
    assert starts[3].endswith("1 file changed · pages/a.txt")
    # Incremental builds: each reload names what the build changed, and only that.
    # (Each line ends with what the tabs did: no tab is open here.)
    reloads = output_lines(server, "^reload · ")
    assert reloads[1:] == [
        "reload · 1 file · a.html · no tabs",
        "reload · 2 files · b.html, c.html · no tabs",
        "reload · 1 file · a.html · no tabs",
    ]


def test_a_build_that_deletes_a_page_is_its_own_reload(project: Path, model: str) -> None:
    # The watcher holds a batch that deleted a page (it may come back) for a while after
    # the build ended; the gate must stay until the watcher saw the fence go by, or the
    # follow-up build starts early and takes the deletion into its own reload.
    hold = project.parent / "hold"
    server = start_building(project, model, clean=True, env={"GEN_HOLD": str(hold)})
    go_file(project).touch()
    try:
        wait_for(lambda: len(output_lines(server, "^reload · ")) == 1, "build 1's reload")
        hold.touch()
        (project / "pages" / "c.txt").unlink()
        wait_for_log(project, "start 2")
        edit(project, "a", "alpha two")
        wait_for(
            lambda: output_lines(server, r"^build · queued next · .*pages/a\.txt"),
            "the change to a queued",
        )
        hold.unlink()
        wait_for_log(project, "end 3")
        wait_for(lambda: len(output_lines(server, "^reload · ")) == 3, "build 3's reload")
    finally:
        stop_cleanly(server)
    assert builds(project) == [f"{w} {n}" for n in range(1, 4) for w in ("start", "end")]
    assert output_lines(server, "^reload · ")[1:] == [
        "reload · 1 file · c.html · no tabs",
        "reload · 1 file · a.html · no tabs",
    ]


def test_css_only_output_is_a_css_reload(project: Path, model: str) -> None:
    server = start_building(project, model)
    try:
        ws = first_build_seen(server, project)
        (project / "style.txt").write_text("h1 { color: blue }\n")
        assert ws.recv_reload(WAIT) == ["style.css"]
        ws.close()
    finally:
        stop_cleanly(server)


def test_with_polling_the_fence_stays_until_seen(project: Path, model: str) -> None:
    # A poll sees only what exists at poll time: the fence must outlive one poll, and
    # never show up in a reload or stay behind.
    server = start_building(project, model, "--poll")
    try:
        ws = first_build_seen(server, project)
        edit(project, "b", "beta two")
        assert ws.recv_reload(WAIT) == ["b.html"]
        ws.close()
    finally:
        stop_cleanly(server)
    assert sorted(p.name for p in (project / "site").iterdir()) == [
        "a.html",
        "b.html",
        "c.html",
        "style.css",
    ]
    assert not output_lines(server, re.escape(".sitepeek-fence-"))


def test_without_reload_the_build_still_runs(project: Path, model: str) -> None:
    server = start_building(project, model, "--no-reload")
    go_file(project).touch()
    try:
        wait_for_log(project, "end 1")
        edit(project, "a", "alpha two")
        wait_for_log(project, "end 2")
        wait_for(lambda: len(output_lines(server, "^build ok")) == 2, "build 2's summary")
        assert complete_page(request(server, "GET", "/a.html").body) == "alpha two"
    finally:
        stop_cleanly(server)


# -- failures and the overlay ----------------------------------------------------------
def test_failed_build_keeps_the_site_and_shows_an_overlay(project: Path, model: str) -> None:
    server = start_building(project, model)
    try:
        ws = first_build_seen(server, project)
        edit(project, "a", "FAIL here")
        message = ws.recv_json(WAIT)
        assert message["type"] == "overlay" and message["id"] == "build", message
        assert re.fullmatch(r"build failed \(exit 2\) \d+\.\d s", str(message["title"]))
        assert "\x1b[31merror:\x1b[0m page <a> says FAIL" in str(message["output"])
        assert builds(project)[-1] == "fail 2"
        # The previous output is still served, and a tab opened now sees the overlay.
        assert complete_page(request(server, "GET", "/a.html").body) == "alpha"
        late = connect_ws(server)
        assert late.recv_json(WAIT) == message
        late.close()
        everywhere = one_per_worker(server)
        edit(project, "a", "alpha fixed")
        assert ws.recv_json(WAIT) == {"type": "overlay-clear", "id": "build"}
        assert ws.recv_reload(WAIT) == ["a.html"]
        for each in everywhere:  # every worker process is past the failure, so ...
            seen = []
            while (got := each.recv_json(WAIT))["type"] != "reload":
                seen.append(got["type"])
            assert seen[-1:] == ["overlay-clear"], seen
            each.close()
        assert complete_page(request(server, "GET", "/a.html").body) == "alpha fixed"
        fresh = connect_ws(server)  # ... nothing to show any more: no greeting after hello
        with pytest.raises(TimeoutError):
            fresh.recv_frame(0.3)
        fresh.close()
        ws.close()
    finally:
        stop_cleanly(server)
    assert output_lines(server, r"^build \| .*error:.* page <a> says FAIL$")
    assert output_lines(server, SERVING_LAST_GOOD.format(2))


def test_a_companion_that_exits_is_reported(tmp_path: Path, model: str) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<p>hi</p>")
    command = "echo starting; echo 'port taken' >&2; exit 3"
    server = start_server(site, model, "--run", command, "--run", "sleep 30")
    try:
        # Live, or in the greeting if it ended first (even before the worker model
        # made its handlers: the feed tells them what ended).
        with contextlib.closing(connect_ws(server)) as ws:
            message = ws.recv_json(WAIT)
        assert message == {
            "type": "overlay",
            "id": f"run:{command}",
            "title": f"run {command!r} ended (exit 3)",
            "output": "starting\nport taken",
        }
    finally:
        stop_cleanly(server)
    assert output_lines(server, r"^echo \| port taken$")
    assert output_lines(server, re.escape(f"run {command!r} ended (exit 3)"))
    assert not output_lines(server, "sleep 30.* ended")


# -- a build failing half-way: the last good build is served --------------------------
# sitegen's HALF pages: the output emptied, the pages before it written, half of it, exit 1.
PATHS = ("/a.html", "/b.html", "/c.html", "/style.css")


def answers(server: Server, times: int = 3) -> dict[str, list[tuple[int, bytes]]]:
    """Each path asked ``times`` times with the same bytes (so the hot cache answers
    the later ones)."""
    got: dict[str, list[tuple[int, bytes]]] = {}
    for path in PATHS:
        responses = [request(server, "GET", path) for _ in range(times)]
        got[path] = [(response.status, response.body) for response in responses]
    return got


def same_as(good: dict[str, bytes], got: dict[str, list[tuple[int, bytes]]]) -> None:
    for path, body in good.items():
        assert got[path] == [(200, body)] * len(got[path]), (path, got[path])


def test_a_build_failing_half_way_leaves_the_last_good_build_served(
    project: Path, model: str
) -> None:
    server = start_building(project, model, pause=0.05, clean=True)
    site = project / "site"
    try:
        ws = first_build_seen(server, project)
        first = {path: answer[0][1] for path, answer in answers(server).items()}
        assert [complete_page(first[p]) for p in PATHS[:3]] == ["alpha", "beta", "gamma"]

        edit(project, "b", "beta HALF")
        message = ws.recv_json(WAIT)
        assert message["type"] == "overlay", message
        assert builds(project)[-1] == "fail 2"
        # What the generator left: c.html deleted, b.html half-written.
        assert not (site / "c.html").exists()
        assert (site / "b.html").read_text() == page("beta HALF")[0]
        same_as(first, answers(server))  # every page, byte for byte, no 404

        # The next good build is served (and copied: the next failure shows it).
        edit(project, "b", "beta two")
        assert ws.recv_json(WAIT) == {"type": "overlay-clear", "id": "build"}
        assert "b.html" in ws.recv_reload(WAIT)
        second = {path: answer[0][1] for path, answer in answers(server).items()}
        assert [complete_page(second[p]) for p in PATHS[:3]] == ["alpha", "beta two", "gamma"]
        assert second["/b.html"] != first["/b.html"]
        assert (site / "b.html").read_text() == "".join(page("beta two"))

        edit(project, "c", "gamma HALF")
        assert ws.recv_json(WAIT)["type"] == "overlay"
        assert builds(project)[-1] == "fail 4"
        assert (site / "c.html").read_text() == page("gamma HALF")[0]
        same_as(second, answers(server))
        ws.close()
    finally:
        stop_cleanly(server)
    assert len(output_lines(server, SERVING_LAST_GOOD.format(1))) == 2, server.stdout_lines


def test_without_reload_a_failed_build_is_answered_from_the_last_good(
    project: Path, model: str
) -> None:
    # No watcher, no gate: the switch comes when the build has ended, and stays.
    server = start_building(project, model, "--no-reload", pause=0.05, clean=True)
    go_file(project).touch()
    try:
        wait_for_log(project, "end 1")
        wait_for(lambda: output_lines(server, "^build ok"), "build 1's summary")
        first = {path: answer[0][1] for path, answer in answers(server, 1).items()}
        edit(project, "b", "beta HALF")
        wait_for(lambda: output_lines(server, SERVING_LAST_GOOD.format(1)), "the failure")
        wait_for(lambda: answers(server, 1)["/c.html"][0][0] == 200, "c.html from the copy")
        same_as(first, answers(server))
    finally:
        stop_cleanly(server)


def test_a_tab_on_a_page_the_failed_build_deleted_gets_it_at_once(
    project: Path, model: str
) -> None:
    """A page a tab loaded is held while its file is missing (a build will write it
    again): after a failed build it exists, in the copy, and is not held."""
    server = start_building(project, model, pause=0.05, clean=True)
    try:
        ws = first_build_seen(server, project)
        good = request(server, "GET", "/c.html").body
        loaded = {"type": "loaded", "page": "/c.html", "status": 200, "urls": []}
        ws.send(OP_TEXT, json.dumps(loaded).encode())
        assert ws.recv_json(WAIT)["type"] == "noted"
        edit(project, "b", "beta HALF")
        assert ws.recv_json(WAIT)["type"] == "overlay"
        assert not (project / "site" / "c.html").exists()
        response = request(server, "GET", "/c.html")
        assert (response.status, response.body) == (200, good)
        ws.close()
    finally:
        stop_cleanly(server)


def test_a_first_build_that_fails_leaves_its_output_served_as_it_is(
    project: Path, model: str
) -> None:
    edit(project, "b", "beta HALF")
    server = start_building(project, model, pause=0.05, clean=True)
    try:
        ws = connect_ws(server)
        (project.parent / "go").touch()
        assert ws.recv_json(WAIT)["type"] == "overlay"
        # No good build to fall back on: what the generator wrote is what there is.
        assert complete_page(request(server, "GET", "/a.html").body) == "alpha"
        half = request(server, "GET", "/b.html")
        assert half.status == 200 and b'<h1 data-text="beta HALF">' in half.body
        assert b"data-end" not in half.body
        assert request(server, "GET", "/c.html").status == 404
        edit(project, "b", "beta")
        assert ws.recv_json(WAIT) == {"type": "overlay-clear", "id": "build"}
        ws.recv_reload(WAIT)
        assert complete_page(request(server, "GET", "/c.html").body) == "gamma"
        ws.close()
    finally:
        stop_cleanly(server)
    line = r"^build failed \(exit 1\) \d+\.\d s · no good build yet: serving the output as it is$"
    assert output_lines(server, line), server.stdout_lines


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=str)
def test_the_copy_is_removed_on_exit(project: Path, model: str, sig: int, tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    # The copy of a sitepeek that was SIGKILLed (no process has this pid) goes too.
    stale = temp / "sitepeek-snapshot-999999999-abc"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "page.html").write_text("old")
    server = start_building(project, model, env={"TMPDIR": str(temp)})
    try:
        first_build_seen(server, project).close()

        def copies() -> list[str]:
            return sorted(p.name for p in temp.iterdir() if p.name.startswith("sitepeek-snap"))

        # One listing decides and names the copy: the stale copy goes just before ours
        # is made, so "one copy, and the stale one gone" checked in two reads could see
        # the stale one, then neither.
        listed: list[str] = []

        def made() -> bool:
            listed[:] = copies()
            return len(listed) == 1 and listed[0] != stale.name

        wait_for(made, "the copy made, the stale one removed")
        (copy,) = listed
        assert not stale.exists()
        assert re.fullmatch(rf"sitepeek-snapshot-{server.proc.pid}-\w+", copy)
        files = ["a.html", "b.html", "c.html", "style.css"]
        wait_for(lambda: sorted(os.listdir(temp / copy)) == files, "the copy complete")
        server.proc.send_signal(sig)
        assert server.proc.wait(WAIT) == 0
    finally:
        stop_cleanly(server)
    assert not [p for p in temp.iterdir() if p.name.startswith("sitepeek-")]


# -- stopping leaves nothing behind ----------------------------------------------------
def sessions_of(server: Server) -> set[int]:
    """The sessions of the commands sitepeek started: their wrappers lead them."""
    return {
        pid
        for pid in children(server.proc.pid)
        if "_lifeline.py" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    }


def members(sessions: set[int]) -> list[int]:
    """Every live process in these sessions (by /proc/PID/stat's session field)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[3]) in sessions and fields[0] != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=str)
def test_stopping_leaves_no_process_behind(tmp_path: Path, model: str, sig: int) -> None:
    site = tmp_path / "site"
    site.mkdir()
    # A build that ignores SIGTERM (and started a child of its own), and companions
    # with children: everything must go, SIGKILLed after the grace period if need be.
    build = "trap '' TERM; sleep 61 & sleep 62; wait"
    server = start_server(
        site, model, "--build", build, "--run", "sleep 63 & sleep 64", cwd=tmp_path
    )
    try:
        wait_for(lambda: len(members(sessions_of(server))) >= 7, "the commands running")
        sessions = sessions_of(server)
        assert len(sessions) == 2
        started = time.monotonic()
        server.proc.send_signal(sig)
        code = server.proc.wait(WAIT)
        wait_for(lambda: not members(sessions), "every command gone", timeout=10)
        # SIGTERM, then SIGKILL after the 2 s grace: bounded.
        assert time.monotonic() - started < 8
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
        server.close_pipes()
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == 0, server.stderr_text()
        assert "Traceback" not in server.stderr_text()


def pipes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("pipe:"):
                found.add(target)
    return found


def test_a_restarted_worker_holds_no_lifeline(tmp_path: Path) -> None:
    """A worker forked after the commands started must not keep their lifelines open
    (after a SIGKILLed supervisor the commands would wait for that worker)."""
    site = tmp_path / "site"
    site.mkdir()
    server = start_server(site, "processes", "--run", "sleep 60", cwd=tmp_path)
    try:
        wait_for(lambda: len(sessions_of(server)) == 1, "the companion")
        (wrapper,) = sessions_of(server)
        # The wrapper's first argument is the descriptor of the lifeline's read end.
        fd = Path(f"/proc/{wrapper}/cmdline").read_bytes().split(b"\0")[-6].decode()
        lifeline = os.readlink(f"/proc/{wrapper}/fd/{fd}")
        assert lifeline.startswith("pipe:")
        assert lifeline in pipes(server.proc.pid)  # the supervisor holds the write end
        workers = set(children(server.proc.pid)) - {wrapper}
        os.kill(min(workers), signal.SIGKILL)

        def new_workers() -> set[int]:
            return set(children(server.proc.pid)) - {wrapper, *workers}

        wait_for(lambda: len(new_workers()) == 1, "a new worker")
        (new,) = new_workers()
        # The fork's own hook closes it as the child starts (without that hook it would
        # stay open for the worker's life, and this would time out).
        wait_for(lambda: lifeline not in pipes(new), "the new worker without the lifeline", 5)
        assert new in children(server.proc.pid)
    finally:
        stop_cleanly(server)


def test_a_build_that_changes_its_own_sources_gets_a_hint(tmp_path: Path, model: str) -> None:
    (tmp_path / "site").mkdir()
    # stamp.txt is in the current directory, so it is a source: every build starts the next.
    server = start_server(tmp_path / "site", model, "--build", "date +%N > stamp.txt", cwd=tmp_path)
    try:
        hint = "build · each build changes stamp.txt, which starts the next: name the sources"
        wait_for(lambda: output_lines(server, re.escape(hint)), "the hint")
        builds_then = len(output_lines(server, "^build ok"))
        wait_for(lambda: len(output_lines(server, "^build ok")) > builds_then + 3, "more builds")
    finally:
        stop_cleanly(server)
    assert len(output_lines(server, re.escape(hint))) == 1  # said once


def test_without_build_nothing_of_it_is_loaded() -> None:
    code = (
        "import sys\n"
        "import sitepeek.cli, sitepeek.server\n"
        "loaded = {'sitepeek.build', 'sitepeek.commands', 'sitepeek.snapshot'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_build_needs_sources_apart_from_the_site(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sitepeek", "serve", ".", "--port", "0", "--build", "true"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={**os.environ},
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: --build: the served directory holds the current directory, so the build "
        "would trigger itself; name its sources with --watch"
    ]


@pytest.fixture(autouse=True)
def _no_commands_left(tmp_path: Path) -> Iterator[None]:
    """No test leaves a process running in its directory (a worker of a SIGKILLed
    server takes a moment to notice: wait for that, bounded)."""
    yield

    def strays() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cwd = os.readlink(entry / "cwd")
                except OSError:
                    continue
                if cwd.startswith(str(tmp_path)):
                    found.append(int(entry.name))
        return found

    wait_for(lambda: not strays(), f"no process left in {tmp_path}: {strays()}", timeout=5)


# -- a real generator ------------------------------------------------------------------
MKDOCS_YML = "site_name: Build test\n"


@pytest.mark.skipif(not shutil.which("mkdocs"), reason="mkdocs is in the test extra")
def test_mkdocs_builds_reload_once_and_a_broken_config_shows_its_error(
    tmp_path: Path, model: str
) -> None:
    project = tmp_path / "docs-project"
    (project / "docs").mkdir(parents=True)
    (project / "mkdocs.yml").write_text(MKDOCS_YML)
    (project / "docs" / "index.md").write_text("# First\n")
    go = tmp_path / "go"
    # The first build waits for the reload client, as sitegen does with GEN_GO.
    command = f"while [ ! -e {shlex.quote(str(go))} ]; do sleep 0.01; done; mkdocs build"
    args = ("--build", command, "--watch", "docs", "--watch", "mkdocs.yml")
    server = start_server(project / "site", model, *args, cwd=project)
    try:
        ws = connect_ws(server)
        go.touch()
        assert "index.html" in ws.recv_reload(WAIT)
        for number, heading in enumerate(("Second", "Third"), start=2):
            (project / "docs" / "index.md").write_text(f"# {heading}\n")
            # MkDocs cleans the site, then writes it: one reload, after all of it.
            paths = ws.recv_reload(WAIT)
            # MkDocs rewrites 404.html with the same bytes every time: not a change.
            assert "index.html" in paths and "404.html" not in paths, paths
            assert len(output_lines(server, r"^build ok ")) == number
            assert f">{heading}</h1>".encode() in request(server, "GET", "/").body
        (project / "mkdocs.yml").write_text(MKDOCS_YML + "theme:\n  name: nosuchtheme\n")
        message = ws.recv_json(WAIT)
        assert message["type"] == "overlay", message
        assert str(message["title"]).startswith("build failed (exit 1) ")
        assert "Unrecognised theme name: 'nosuchtheme'" in str(message["output"])
        assert b">Third</h1>" in request(server, "GET", "/").body  # the last good site
        (project / "mkdocs.yml").write_text(MKDOCS_YML)
        assert ws.recv_json(WAIT) == {"type": "overlay-clear", "id": "build"}
        assert "index.html" in ws.recv_reload(WAIT)
        ws.close()
    finally:
        stop_cleanly(server)
    # One reload per good build, never one during a build: the summary counts them all.
    assert len(output_lines(server, r"^build ok ")) == 4
    assert output_lines(server, r"reloads?\.$")[-1].endswith(" 4 reloads."), server.stdout_lines


# -- the terminal ----------------------------------------------------------------------
def test_lines_from_the_runner_and_the_reloads_never_share_a_line() -> None:
    # The build runner's lines and the reload lines come from different threads; with
    # unbuffered output (PYTHONUNBUFFERED=1, as in Docker images) print() writes a text
    # and its newline apart, and "build · ...reload · ..." was one line in a terminal.
    from sitepeek.changes import Outcome
    from sitepeek.commands import Terminal
    from sitepeek.server import ReloadLines

    read_end, write_end = os.pipe()
    # What python -u makes of stdout: a text layer straight on the file descriptor.
    out = io.TextIOWrapper(io.FileIO(write_end, "w"), encoding="utf-8", write_through=True)
    received: list[str] = []

    def read() -> None:
        with open(read_end, encoding="utf-8") as stream:
            received.extend(stream)

    reader = threading.Thread(target=read)
    reader.start()
    count = 2000
    terminal, lines = Terminal(out), ReloadLines(out, reporters=1, wait=WAIT)

    def builds_lines() -> None:
        for number in range(count):
            terminal.line(f"build · make · {number}")

    def reload_lines() -> None:
        for version in range(count):
            lines.build(version, f"1 file · {version}.html")
            lines.add(Outcome(version))

    writers = [threading.Thread(target=builds_lines), threading.Thread(target=reload_lines)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    out.close()
    reader.join(WAIT)
    assert sorted(received) == sorted(
        [f"build · make · {n}\n" for n in range(count)]
        + [f"reload · 1 file · {n}.html · no tabs\n" for n in range(count)]
    )
