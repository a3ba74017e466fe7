"""The hot cache (issue 9): whole answers to repeated request bytes, never stale.

A repeated request is answered from the bytes sent last time, but only after checking
everything the answer depends on. These tests cache an answer (the file and its
directories must be older than the settle window first: that is a wait for the clock,
not for an event), change one dependency, and ask again on the same connection (so a
process-model worker that holds the entry answers): the change must show at once.
"""

from __future__ import annotations

import gzip
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import H11Client, Response, Server, start_server, stop_cleanly
from sitepeek import hotcache
from sitepeek.changes import ChangeFeed, Serving
from sitepeek.config import Config
from sitepeek.entities import identity
from sitepeek.handler import Handler
from sitepeek.workers.threads import ThreadIo
from test_site import parse

SETTLE_S = hotcache.SETTLE_NS / 1e9 + 0.02


def settle() -> None:
    """Let the clock pass the settle window: only then is an answer cached."""
    time.sleep(SETTLE_S)


def now() -> int:
    return time.time_ns()


# -- the cache itself ------------------------------------------------------------------
def test_recently_changed_files_are_not_captured(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("a")
    assert (
        hotcache.capture(str(tmp_path), str(target), "", identity(os.lstat(target)), now()) is None
    )


def test_capture_lists_every_directory_up_to_the_root(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    target = tmp_path / "a" / "b" / "c.txt"
    target.write_text("c")
    settle()
    dirs = hotcache.capture(str(tmp_path), str(target), "/a/b", identity(os.lstat(target)), now())
    assert dirs is not None
    assert [path for path, _ in dirs] == [
        str(tmp_path / "a" / "b"),
        str(tmp_path / "a"),
        str(tmp_path),
    ]


def test_capture_refuses_another_version_or_a_symlinked_directory(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "f.txt"
    target.write_text("f")
    (tmp_path / "link").symlink_to("real")
    settle()
    ident = identity(os.lstat(target))
    stale = (*ident[:4], ident[4] + 1)
    assert hotcache.capture(str(tmp_path), str(target), "/real", stale, now()) is None
    # /link/f.txt resolves to real/f.txt: the directories checked would not be the
    # ones the URL goes through, so it is not cached.
    assert hotcache.capture(str(tmp_path), str(target), "/link", ident, now()) is None
    assert hotcache.capture(str(tmp_path), str(target), "/real", ident, now()) is not None


def test_a_change_made_while_the_request_was_answered_is_not_captured(
    tmp_path: Path,
) -> None:
    """The directories are read after the answer is sent; one changed after the
    request began must not be taken for the state the answer reflects."""
    target = tmp_path / "a.txt"
    target.write_text("a")
    settle()
    began = now()
    settle()  # a slow answer
    (tmp_path / "new.html").write_text("appeared meanwhile")
    settle()
    ident = identity(os.lstat(target))
    assert hotcache.capture(str(tmp_path), str(target), "", ident, began) is None
    assert hotcache.capture(str(tmp_path), str(target), "", ident, now()) is not None


def test_whole_second_timestamps_need_a_longer_settle() -> None:
    """File systems with 1-2 s timestamps (FAT, ext3) would hide a change made in the
    same second as the captured state."""

    def stamps(mtime: int, ctime: int) -> os.stat_result:
        return SimpleNamespace(st_mtime_ns=mtime, st_ctime_ns=ctime)  # type: ignore[return-value]

    began = now()
    fine = began - hotcache.SETTLE_NS - 1_000_001  # nanosecond timestamps, 51 ms before
    assert hotcache._settled(stamps(fine, fine), began)
    whole = (began - 1_000_000_000) // 1_000_000_000 * 1_000_000_000  # 1-2 s before
    assert not hotcache._settled(stamps(whole, fine), began)
    assert hotcache._settled(stamps(whole - 2_000_000_000, fine), began)


def _entry(tmp_path: Path, target: Path, logical: str) -> hotcache.Entry:
    ident = identity(os.lstat(target))
    dirs = hotcache.capture(str(tmp_path), str(target), logical, ident, now())
    assert dirs is not None
    return hotcache.Entry(
        b"HTTP/1.1 200 OK\r\n", True, "1.1", b"\r\n", str(target), ident, dirs, None, False,
        "GET", "/",
        frozenset(),
    )  # fmt: skip


def test_fresh_sees_content_rewritten_with_the_same_size_and_mtime(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("aaaa")
    settle()
    entry = _entry(tmp_path, target, "")
    assert hotcache.fresh(entry)
    st = os.stat(target)
    target.write_text("bbbb")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # only ctime tells
    assert not hotcache.fresh(entry)


@pytest.mark.parametrize("change", ["create", "remove", "rename"])
def test_fresh_sees_entries_come_and_go_in_any_directory_above(tmp_path: Path, change: str) -> None:
    (tmp_path / "a").mkdir()
    target = tmp_path / "a" / "page.html"
    target.write_text("x")
    (tmp_path / "other").write_text("o")
    settle()
    entry = _entry(tmp_path, target, "/a")
    if change == "create":
        (tmp_path / "a" / "index.html").write_text("new")
    elif change == "remove":
        (tmp_path / "other").unlink()
    else:
        (tmp_path / "other").rename(tmp_path / "renamed")
    assert not hotcache.fresh(entry)


def test_fresh_is_false_once_the_file_is_gone(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("a")
    settle()
    entry = _entry(tmp_path, target, "")
    target.unlink()
    assert not hotcache.fresh(entry)


def test_the_cache_stays_within_its_budget_oldest_first() -> None:
    cache = hotcache.HotCache(budget=4000)

    def entry(size: int) -> hotcache.Entry:
        return hotcache.Entry(
            b"HTTP/1.1 200 OK\r\n", True, "1.1", b"x" * size, "/f", (0, 0, 0, 0, 0), (),
            None, False, "GET", "/", frozenset(),
        )  # fmt: skip

    entries = {b"k%d" % i: entry(900) for i in range(6)}
    for key, value in entries.items():
        cache.put(key, value)
        assert sum(e.size for e in map(cache.get, entries) if e is not None) <= 4000
    assert cache.get(b"k0") is None and cache.get(b"k5") is entries[b"k5"]
    cache.put(b"huge", entry(5000))  # larger than the whole budget: not kept
    assert cache.get(b"huge") is None
    cache.discard(b"k5", entry(1))  # not the entry stored under that key
    assert cache.get(b"k5") is entries[b"k5"]
    cache.discard(b"k5", entries[b"k5"])
    assert cache.get(b"k5") is None


def test_only_requests_seen_before_are_worth_an_entry() -> None:
    cache = hotcache.HotCache(doorkeeper=3)  # bytes of remembered keys
    assert not cache.wanted(b"a") and cache.wanted(b"a") and cache.wanted(b"a")
    for key in (b"b", b"c", b"d"):  # the remembered keys are bounded
        assert not cache.wanted(key)
    assert not cache.wanted(b"a")
    huge = b"x" * (hotcache.MAX_KEY + 1)  # a request head that large is never kept
    assert not cache.wanted(huge) and not cache.wanted(huge)


# -- in the handler ----------------------------------------------------------------------
BASE = "GET /a.txt HTTP/1.1\nHost: h"


@pytest.mark.parametrize(
    "other",
    [
        "GET /a.txt?n=1 HTTP/1.1\nHost: h",
        "GET /a.txt?n=2&x HTTP/1.1\nHost: h",
        "GET /a.txt HTTP/1.1\nHost: h\nCookie: c=1\nUser-Agent: x",
        "GET /a.txt HTTP/1.1\nHost: h\nAccept: text/html",
        "GET /a.txt HTTP/1.1\nHost: h\nConnection: keep-alive",
    ],
)
def test_request_key_ignores_what_a_files_answer_ignores(other: str) -> None:
    assert hotcache.request_key(parse(other)) == hotcache.request_key(parse(BASE)) is not None


@pytest.mark.parametrize(
    "other",
    [
        "HEAD /a.txt HTTP/1.1\nHost: h",
        "GET /b.txt HTTP/1.1\nHost: h",
        "GET /a.txt HTTP/1.0\nHost: h",
        "GET /a.txt HTTP/1.1\nHost: h\nConnection: close",
        "GET /a.txt HTTP/1.1\nHost: other",
        "GET /a.txt HTTP/1.0",
        "GET /a.txt HTTP/1.1\nHost: h\nAccept-Encoding: gzip",
        "GET /a.txt HTTP/1.1\nHost: h\nAccept-Encoding: ",
        'GET /a.txt HTTP/1.1\nHost: h\nIf-None-Match: "x"',
        "GET /a.txt HTTP/1.1\nHost: h\nIf-Modified-Since: Thu, 01 Jan 2026 00:00:00 GMT",
    ],
)
def test_request_key_tells_apart_what_a_files_answer_depends_on(other: str) -> None:
    key = hotcache.request_key(parse(other))
    assert key is not None and key != hotcache.request_key(parse(BASE))


@pytest.mark.parametrize(
    "head",
    [
        "POST /a.txt HTTP/1.1\nHost: h\nContent-Length: 0",
        "OPTIONS /a.txt HTTP/1.1\nHost: h",
        "GET /a.txt HTTP/1.1\nHost: h\nContent-Length: 1",
        "GET /a.txt HTTP/1.1\nHost: h\nRange: bytes=0-1",
        'GET /a.txt HTTP/1.1\nHost: h\nIf-Range: "x"\nRange: bytes=0-1',
        'GET /a.txt HTTP/1.1\nHost: h\nIf-Match: "x"',
        "GET /a.txt HTTP/1.1\nHost: h\nIf-Unmodified-Since: Thu, 01 Jan 2026 00:00:00 GMT",
        "GET /a.txt HTTP/1.1\nHost: h\nUpgrade: websocket\nConnection: Upgrade",
    ],
)
def test_requests_a_shared_answer_cannot_serve_have_no_key(head: str) -> None:
    assert hotcache.request_key(parse(head)) is None


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[tuple[Handler, H11Client, Path]]:
    """A handler serving one socket pair in a thread (threads-model primitives)."""
    root = tmp_path / "root"
    root.mkdir()
    handler = Handler(Config(root=root, reload=False), ThreadIo())
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    thread = threading.Thread(target=handler.serve, args=(theirs,), daemon=True)
    thread.start()
    yield handler, H11Client(ours), root
    ours.close()
    thread.join(5)
    handler.begin_shutdown()
    handler.close()


def counting_resolves(handler: Handler, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    resolved: list[str] = []
    resolver = handler._responder.site.resolver

    class Counting:
        root = resolver.root

        def resolve(self, path: str, query: str | None = None) -> object:
            resolved.append(path)
            return resolver.resolve(path, query)

    monkeypatch.setattr(handler._responder.site, "resolver", Counting())
    return resolved


def test_a_repeated_request_skips_resolving(
    in_process: tuple[Handler, H11Client, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, client, root = in_process
    (root / "a.css").write_text("body{color:red}\n" * 40)
    settle()
    resolved = counting_resolves(handler, monkeypatch)
    first = client.request("GET", "/a.css", {"Accept-Encoding": "gzip"})
    again = [client.request("GET", "/a.css", {"Accept-Encoding": "gzip"}) for _ in range(4)]
    # The first sighting only remembers the key; the second makes the entry.
    assert resolved == ["/a.css"] * 2
    for response in again:
        assert (response.status, response.raw_headers, response.body) == (
            first.status,
            first.raw_headers,
            first.body,
        )
    assert gzip.decompress(first.body) == (root / "a.css").read_bytes()
    # Other bytes (another Accept-Encoding) are another key.
    plain = client.request("GET", "/a.css")
    assert plain.body == (root / "a.css").read_bytes() and resolved == ["/a.css"] * 3


def test_requests_differing_in_the_query_share_the_answer_made_for_the_file(
    in_process: tuple[Handler, H11Client, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, client, root = in_process
    (root / "a.css").write_text("body{color:red}\n" * 40)
    settle()
    resolved = counting_resolves(handler, monkeypatch)
    headers = {"Accept-Encoding": "gzip"}
    answers = [client.request("GET", f"/a.css?v={n}", headers) for n in range(6)]
    # The first sighting of the file's key only remembers it; the second makes the
    # answer every later request is given, whatever its query.
    assert resolved == ["/a.css"] * 2
    first = answers[0]
    for answer in answers[1:]:
        assert (answer.status, answer.raw_headers, answer.body) == (
            first.status,
            first.raw_headers,
            first.body,
        )
    assert gzip.decompress(first.body) == (root / "a.css").read_bytes()
    # A stale validator is another key: the full path, and the whole file.
    stale = client.request("GET", "/a.css?v=9", {**headers, "If-None-Match": '"old"'})
    assert stale.status == 200 and resolved == ["/a.css"] * 3
    # The current one: 304, once made, shared too.
    current = {**headers, "If-None-Match": first.header("etag")}
    for n in range(3):
        assert client.request("GET", f"/a.css?w={n}", current).status == 304
    assert resolved == ["/a.css"] * 5


def test_a_forced_rule_on_the_query_keeps_files_from_sharing_answers(
    in_process: tuple[Handler, H11Client, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, client, root = in_process
    (root / "a.txt").write_text("a")
    (root / "b.txt").write_text("b")
    (root / "_redirects").write_text("/a.txt  v=old  /b.txt  301!\n")
    settle()
    resolved = counting_resolves(handler, monkeypatch)
    for n in range(4):
        assert client.request("GET", f"/a.txt?v={n}").body == b"a"
    assert len(resolved) == 4  # nothing shared: the query decides whether the rule applies
    moved = client.request("GET", "/a.txt?v=old")
    assert (moved.status, moved.header("location")) == (301, "/b.txt?v=old")


def test_after_a_cached_answer_the_next_one_is_filtered_and_logged_as_its_own(
    in_process: tuple[Handler, H11Client, Path],
) -> None:
    _, client, root = in_process
    (root / "a.css").write_text("a{}")
    (root / "b.css").write_text("b{}")
    (root / "_headers").write_text("/*\n  Cache-Control: max-age=60\n")
    settle()
    for _ in range(3):  # the third answer comes from the cache
        client.request("GET", "/a.css")
    after = client.request("GET", "/b.css")
    assert after.body == b"b{}"
    # _headers replaces sitepeek's own Cache-Control in this answer too.
    assert [name.lower() for name, _ in after.raw_headers].count("cache-control") == 1
    assert after.header("cache-control") == "max-age=60"


def test_stopping_answers_with_connection_close(
    in_process: tuple[Handler, H11Client, Path],
) -> None:
    handler, client, root = in_process
    (root / "a.txt").write_text("a")
    settle()
    for _ in range(3):
        assert client.request("GET", "/a.txt").header("connection") is None
    # Once the server waits for the next request (else it would close the idle
    # connection without reading it), it starts stopping: the hit must not be used.
    deadline = time.monotonic() + 5
    while not all(conn.reading for conn in handler._table):
        assert time.monotonic() < deadline
        time.sleep(0.001)
    handler.stopping = True
    assert client.request("GET", "/a.txt").header("connection") == "close"


@pytest.mark.parametrize("rules", [True, False], ids=["rules", "no-rules"])
def test_switching_to_a_build_snapshot_and_back_leaves_no_answer_behind(
    tmp_path: Path, rules: bool
) -> None:
    """While a --build has failed, answers come from the copy of the last good build
    (a Serving event): no cached answer of the other directory may survive a switch,
    although its file is unchanged (and so fresh), with or without the rules files."""
    live, copy = tmp_path / "site", tmp_path / "copy"
    for root, text in ((live, "live"), (copy, "copy")):
        root.mkdir()
        (root / "a.css").write_text(text)
    (copy / "_headers").write_text("/*\n  X-From: copy\n")
    settle()
    feed = ChangeFeed()
    handler = Handler(Config(root=live, reload=False, rules=rules), ThreadIo(), feed)
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    thread = threading.Thread(target=handler.serve, args=(theirs,), daemon=True)
    thread.start()
    client = H11Client(ours)
    try:
        copied = "copy" if rules else None
        for snapshot, text, header in (("", b"live", None), (str(copy), b"copy", copied)) * 2:
            feed.emit(Serving(snapshot))
            for _ in range(3):  # the third answer would come from the cache
                response = client.request("GET", "/a.css")
                assert (response.body, response.header("x-from")) == (text, header)
    finally:
        ours.close()
        thread.join(5)
        handler.begin_shutdown()
        handler.close()


# -- end to end, every worker model ------------------------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, worker_model: str) -> Iterator[Server]:
    root = tmp_path_factory.mktemp(f"hot-{worker_model}") / "root"
    root.mkdir()
    srv = start_server(root, worker_model)
    yield srv
    stop_cleanly(srv)


@pytest.fixture
def site(live: Server, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A directory of its own for each test, below the live server's root."""
    name = request.node.name.replace("[", "-").replace("]", "")
    root = live.root / name
    root.mkdir()
    yield root


def twice(client: H11Client, target: str, headers: dict[str, str] | None = None) -> Response:
    """Ask until the answer comes from the cache (the first sighting of the bytes only
    remembers them, the second makes the entry, the third is a hit); all must agree."""
    first = client.request("GET", target, headers)
    for _ in range(2):
        again = client.request("GET", target, headers)
        assert (again.status, again.body) == (first.status, first.body)
    return again


def test_rewritten_file_is_served_fresh(live: Server, site: Path) -> None:
    page = site / "a.txt"
    page.write_text("version one\n")
    settle()
    with live.connect() as sock:
        client = H11Client(sock)
        old = twice(client, f"/{site.name}/a.txt")
        st = os.stat(page)
        page.write_text("version two\n")  # same size, same mtime: only ctime moves
        os.utime(page, ns=(st.st_atime_ns, st.st_mtime_ns))
        new = client.request("GET", f"/{site.name}/a.txt")
        assert new.body == b"version two\n"
        assert new.header("etag") != old.header("etag")


def test_a_file_rewritten_after_its_answer_was_shared_is_served_fresh(
    live: Server, site: Path
) -> None:
    page = site / "shared.txt"
    page.write_text("version one\n")
    settle()
    target = f"/{site.name}/shared.txt"
    with live.connect() as sock:
        client = H11Client(sock)
        for n in range(4):
            assert client.request("GET", f"{target}?n={n}").body == b"version one\n"
        page.write_text("version 2\n")
        assert client.request("GET", f"{target}?n=9").body == b"version 2\n"
        settle()
        for n in range(4):
            assert client.request("GET", f"{target}?m={n}").body == b"version 2\n"
        page.unlink()
        assert client.request("GET", f"{target}?m=9").status == 404


def test_304_head_and_gzip_answers_follow_the_file(live: Server, site: Path) -> None:
    page = site / "app.js"
    page.write_text("console.log('one');\n" * 50)
    settle()
    target = f"/{site.name}/app.js"
    with live.connect() as sock:
        client = H11Client(sock)
        etag = twice(client, target).header("etag")
        assert etag
        assert twice(client, target, {"If-None-Match": etag}).status == 304
        zipped = twice(client, target, {"Accept-Encoding": "gzip"})
        assert zipped.header("content-encoding") == "gzip"
        client.request("HEAD", target)
        client.request("HEAD", target)
        head = client.request("HEAD", target)
        page.write_text("console.log('two!');\n" * 50)
        assert client.request("GET", target, {"If-None-Match": etag}).status == 200
        zipped = client.request("GET", target, {"Accept-Encoding": "gzip"})
        assert gzip.decompress(zipped.body) == page.read_bytes()
        length = client.request("HEAD", target).header("content-length")
        assert length == str(page.stat().st_size) != head.header("content-length")


@pytest.mark.parametrize(
    ("existing", "url", "appearing"),
    [
        ("index.htm", "", "index.html"),  # index.html comes first
        ("about.html", "about", "about"),  # a file named like the clean URL wins
    ],
)
def test_a_new_file_that_takes_precedence_is_served_at_once(
    live: Server, site: Path, existing: str, url: str, appearing: str
) -> None:
    (site / existing).write_text("<p>before</p>")
    settle()
    with live.connect() as sock:
        client = H11Client(sock)
        assert b"before</p>" in twice(client, f"/{site.name}/{url}").body
        (site / appearing).write_text("<p>after</p>")
        assert b"after</p>" in client.request("GET", f"/{site.name}/{url}").body


def test_removed_file_is_404_at_once(live: Server, site: Path) -> None:
    (site / "gone.txt").write_text("here")
    settle()
    with live.connect() as sock:
        client = H11Client(sock)
        twice(client, f"/{site.name}/gone.txt")
        (site / "gone.txt").unlink()
        assert client.request("GET", f"/{site.name}/gone.txt").status == 404


def test_directory_swapped_for_a_symlink_out_of_the_root(
    live: Server, site: Path, tmp_path: Path
) -> None:
    (site / "sub").mkdir()
    (site / "sub" / "f.txt").write_text("inside")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_text("SECRET")
    settle()
    with live.connect() as sock:
        client = H11Client(sock)
        assert twice(client, f"/{site.name}/sub/f.txt").body == b"inside"
        (site / "sub").rename(site / "old")
        (site / "sub").symlink_to(outside)
        assert client.request("GET", f"/{site.name}/sub/f.txt").status == 404


def test_headers_rules_apply_to_cached_answers_at_once(live: Server) -> None:
    root = live.root
    (root / "ruled.txt").write_text("ruled")
    settle()
    rules = root / "_headers"
    try:
        with live.connect() as sock:
            client = H11Client(sock)
            assert twice(client, "/ruled.txt").header("x-test") is None
            rules.write_text("/ruled.txt\n  X-Test: one\n")
            assert client.request("GET", "/ruled.txt").header("x-test") == "one"
            settle()
            twice(client, "/ruled.txt")
            with rules.open("a") as edit:  # in place: the root directory does not change
                edit.write("  X-Other: two\n  Cache-Control: max-age=60\n")
            assert client.request("GET", "/ruled.txt").header("x-other") == "two"
            settle()
            hit = twice(client, "/ruled.txt")
            # A field _headers sets replaces ours, in a cached answer too.
            fields = [name.lower() for name, _ in hit.raw_headers]
            assert fields.count("cache-control") == 1
            assert hit.header("cache-control") == "max-age=60"
    finally:
        rules.unlink()


def test_pipelined_repeats_are_each_answered(live: Server, site: Path) -> None:
    (site / "p.txt").write_text("pipelined")
    settle()
    raw = f"GET /{site.name}/p.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    with live.connect() as sock:
        client = H11Client(sock)
        client.send_raw(raw)
        client.read_response()
        client.send_raw(raw * 3)  # several in one read: answered one by one
        for _ in range(3):
            assert client.read_response().body == b"pipelined"
        client.send_raw(raw[:10])  # one request over two reads
        client.send_raw(raw[10:])
        assert client.read_response().body == b"pipelined"


def test_after_shared_answers_every_kind_of_next_request_is_answered(
    live: Server, site: Path
) -> None:
    """Once answers come from the event loop (parsed there), what follows them still
    gets its own answer: pipelined requests, one in pieces, one with a body, a HEAD."""
    (site / "q.txt").write_text("queried")
    settle()
    target = f"/{site.name}/q.txt"

    def raw(n: int, extra: str = "") -> bytes:
        return f"GET {target}?n={n} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()

    with live.connect() as sock:
        client = H11Client(sock)
        for n in range(4):  # the last ones are answered from the loop
            client.send_raw(raw(n))
            assert client.read_response().body == b"queried"
        client.send_raw(raw(10) + raw(11) + raw(12))
        for _ in range(3):
            assert client.read_response().body == b"queried"
        client.send_raw(raw(20)[:9])
        client.send_raw(raw(20)[9:])
        assert client.read_response().body == b"queried"
        client.send_raw(raw(30, "Content-Length: 5\r\n") + b"hello" + raw(31))
        assert client.read_response().body == b"queried"
        assert client.read_response().body == b"queried"
        client.send_raw(f"HEAD {target}?n=40 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = client.read_response("HEAD")
        assert (head.status, head.body, head.header("content-length")) == (200, b"", "7")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Field: x\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /x HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", 505),
    ],
    ids=["bad-field", "no-host", "http2"],
)
def test_after_shared_answers_a_malformed_request_gets_its_status(
    live: Server, site: Path, request_bytes: bytes, status: int
) -> None:
    (site / "m.txt").write_text("m")
    settle()
    with live.connect() as sock:
        client = H11Client(sock)
        for n in range(4):
            assert client.request("GET", f"/{site.name}/m.txt?n={n}").body == b"m"
        sock.sendall(request_bytes)
        answer = b""
        while chunk := sock.recv(65536):  # the error page, then the server closes
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 %d " % status)
        assert b"connection: close" in answer.lower()


@pytest.mark.parametrize("close", [False, True])
def test_a_cached_answer_larger_than_the_socket_takes_is_sent_whole(
    tmp_path: Path, close: bool
) -> None:
    """The event loop sends a hot answer without waiting; what the socket cannot take
    at once is sent by a greenlet, and only then is the connection reused or closed.

    In process, to make the server's send buffer small (a TCP socket's is megabytes).
    """
    import gevent.socket

    from sitepeek.workers.greenlets import GeventIo

    body = os.urandom(60 * 1024)  # small enough to be kept in memory, and cached
    (tmp_path / "big.bin").write_bytes(body)
    settle()
    handler = Handler(Config(root=tmp_path, reload=False), GeventIo())
    extra = "Connection: close\r\n" if close else ""
    raw = f"GET /big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()
    try:
        for _ in range(3):  # the third answer comes from the cache
            ours, theirs = socket.socketpair()
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            handler.adopt(gevent.socket.socket(fileno=theirs.detach()))
            with gevent.socket.socket(fileno=ours.detach()) as sock:
                sock.settimeout(5)
                client = H11Client(sock)  # gevent's recv lets the server run meanwhile
                client.send_raw(raw)
                response = client.read_response()
                assert response.body == body
                if close:
                    assert response.header("connection") == "close"
                    assert sock.recv(1) == b""
                else:
                    client.send_raw(raw)
                    assert client.read_response().body == body
        assert handler.wait_closed(5)
    finally:
        handler.begin_shutdown()
        handler.close()
