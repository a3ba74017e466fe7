"""Tests for sitepeek.listing: scanning a directory, the HTML and JSON renderings."""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sitepeek.listing import Entry, human_size, render_html, render_json, scan, wants_json
from sitepeek.resolver import File, Listing, Resolver

HOSTILE_NAMES = [
    "<img src=x onerror=alert(1)>",
    '"quotes"',
    "'single'",
    "&amp;",
    "a#b",
    "a?b=c",
    "100%",
    "100%25",
    "a b",
    "a+b",
    "café",
    "日本語.txt",
    "a:b",  # would read as a URL scheme if not encoded
    "javascript:alert(1)",
    "//evil.com",  # impossible as a name ("/"); kept out below
    "</body>",
    "<!--",
    "\u202egnp.exe",  # right-to-left override
    "tab\there",
    "new\nline",
]
FILE_NAMES = [name for name in HOSTILE_NAMES if "/" not in name]
DIR_NAMES = ["sub dir#1", "<b>dir", "zeta", "Alpha"]


class Anchors(HTMLParser):
    """Collect (href, text) of every link, and every start tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []
        self.tags: list[str] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "a":
            self._href = dict(attrs)["href"]
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text)))
            self._href = None

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)


def parse(page: bytes) -> Anchors:
    parser = Anchors()
    parser.feed(page.decode("utf-8"))
    parser.close()
    return parser


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A root "site" with a directory "list" of hostile names, next to an outside "site2"."""
    base = tmp_path_factory.mktemp("listing")
    root = base / "site"
    outside = base / "site2"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    listed = root / "list"
    listed.mkdir(parents=True)
    for name in FILE_NAMES:
        (listed / name).write_text(name)
    for name in DIR_NAMES:
        (listed / name).mkdir()
    (listed / "sized.bin").write_bytes(b"x" * 1234)
    (listed / ".env").write_text("hidden")
    (listed / ".git").mkdir()
    (listed / "a\\b.txt").write_text("never served")
    os.close(os.open(os.fsencode(listed) + b"/bad-\xff.txt", os.O_CREAT | os.O_WRONLY))
    (listed / "link_in").symlink_to("sized.bin")
    (listed / "linkdir_in").symlink_to("zeta", target_is_directory=True)
    (listed / "link_root").symlink_to("..", target_is_directory=True)
    (listed / "link_out").symlink_to(outside / "secret.txt")
    (listed / "linkdir_out").symlink_to(outside, target_is_directory=True)
    (listed / "link_out_rel").symlink_to("../../site2/secret.txt")
    (listed / "dangling").symlink_to("missing")
    (listed / "loop").symlink_to("loop")
    os.mkfifo(listed / "fifo")
    cwd = os.getcwd()
    os.chdir(listed)  # a relative bind avoids the ~108-byte AF_UNIX path limit
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind("sock")
    finally:
        os.chdir(cwd)
    (root / "empty").mkdir()
    yield root


LISTED = {
    *FILE_NAMES,
    *DIR_NAMES,
    "sized.bin",
    "link_in",
    "linkdir_in",
    "link_root",
}


# Scanning ---------------------------------------------------------------------------------


def test_scan_lists_exactly_the_servable_names(tree: Path) -> None:
    entries = scan(str(tree / "list"), str(tree))
    assert entries is not None
    assert {entry.name for entry in entries} == LISTED
    by_name = {entry.name: entry for entry in entries}
    assert by_name["sized.bin"] == Entry(
        "sized.bin", False, 1234, os.stat(tree / "list" / "sized.bin").st_mtime
    )
    assert by_name["link_in"].size == 1234  # a symlink inside the root is followed
    assert by_name["linkdir_in"].is_dir
    assert by_name["link_root"].is_dir  # the root itself is inside the root
    assert by_name["zeta"].is_dir
    assert by_name["zeta"].size is None


@pytest.mark.parametrize(
    "name",
    [
        ".env",  # dotfiles
        ".git",
        "link_out",  # symlinks leaving the root
        "linkdir_out",
        "link_out_rel",
        "dangling",
        "loop",
        "fifo",  # neither file nor directory
        "sock",
        "a\\b.txt",  # names no URL reaches
        os.fsdecode(b"bad-\xff.txt"),
    ],
)
def test_scan_hides(tree: Path, name: str) -> None:
    entries = scan(str(tree / "list"), str(tree))
    assert entries is not None
    assert name not in {entry.name for entry in entries}


def test_scan_through_a_symlinked_root(tree: Path, tmp_path: Path) -> None:
    link = tmp_path / "root_link"
    link.symlink_to(tree, target_is_directory=True)
    entries = scan(str(tree / "list"), str(link))
    assert entries is not None
    assert {entry.name for entry in entries} == LISTED


def test_scan_an_empty_directory(tree: Path) -> None:
    assert scan(str(tree / "empty"), str(tree)) == []


@pytest.mark.parametrize("target", ["missing", "list/sized.bin"])
def test_scan_of_no_directory_is_none(tree: Path, target: str) -> None:
    assert scan(str(tree / target), str(tree)) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_scan_unreadable_is_none(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        assert scan(str(locked), str(tmp_path)) is None
    finally:
        locked.chmod(0o755)


def test_scan_unreadable_is_none_even_as_root(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(path: object) -> object:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "scandir", denied)
    assert scan(str(tree / "list"), str(tree)) is None


# The HTML page ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(tree: Path) -> bytes:
    entries = scan(str(tree / "list"), str(tree))
    assert entries is not None
    return render_html("/list/", entries)


def test_every_name_is_text_and_its_link_decodes_to_it(page: bytes) -> None:
    links = parse(page).links
    assert links[0] == ("../", "../")
    listed = links[1:]
    assert len(listed) == len(LISTED)
    for href, text in listed:
        name = text.removesuffix("/")
        assert name in LISTED
        assert unquote(href.removesuffix("/"), errors="strict") == name
        assert href.endswith("/") == text.endswith("/")
        parts = urlsplit(href)
        assert (parts.scheme, parts.netloc, parts.query, parts.fragment) == ("", "", "", "")
        assert "/" not in href.removesuffix("/")  # one relative segment


def test_hostile_names_render_as_text(page: bytes) -> None:
    text = page.decode("utf-8")
    assert "<img" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "<b>" not in text
    assert "&lt;b&gt;dir/" in text
    assert "&quot;quotes&quot;" in text
    assert "&amp;amp;" in text  # the name "&amp;" is shown as typed
    assert text.count("</body>") == 1
    assert "<!--" not in text
    tags = set(parse(page).tags)
    assert tags <= {
        "html", "head", "meta", "title", "style", "body", "main", "h1", "table",
        "thead", "tbody", "tr", "th", "td", "a", "bdi", "footer",
    }  # fmt: skip


def test_links_resolve_to_the_listed_entries(tree: Path, page: bytes) -> None:
    """Percent-encoding and the resolver's decoding agree for every hostile name."""
    resolver = Resolver(tree)
    listing = resolver.resolve("/list/")
    assert listing == Listing(str(tree / "list"), "/list/")
    for href, text in parse(page).links[1:]:
        name = text.removesuffix("/")
        result = resolver.resolve(listing.url_path + href)
        target = os.path.realpath(tree / "list" / name)
        if text.endswith("/"):
            assert result == Listing(target, listing.url_path + href), name
        else:
            assert result == File(target), name


def test_page_shape(page: bytes) -> None:
    text = page.decode("utf-8")
    assert text.startswith("<!doctype html>")
    assert '<meta charset="utf-8">' in text
    assert "<title>Index of /list/</title>" in text
    assert "prefers-color-scheme:dark" in text
    assert "<script" not in text
    # Nothing loaded from anywhere: no src, no url(), no @import, no absolute link (in
    # the template: the names may say anything, as text).
    template = render_html("/list/", [Entry("x", False, 1, 0.0)]).decode()
    assert not re.search(r"\bsrc=|url\(|@import|https?:|//", template)
    assert text.rstrip().endswith("</html>")
    assert ">1.2 KiB<" in text  # sized.bin
    directories = len(DIR_NAMES) + 2  # + linkdir_in, link_root
    assert f"{directories} directories, {len(LISTED) - directories} files" in text


def test_root_has_no_parent_link() -> None:
    assert parse(render_html("/", [])).links == []
    assert parse(render_html("/a/", [])).links == [("../", "../")]


def test_title_shows_the_decoded_path_escaped() -> None:
    text = render_html("/caf%C3%A9/%3Cscript%3E/", []).decode()
    assert "<title>Index of /café/&lt;script&gt;/</title>" in text
    assert "<script>" not in text


def test_counts_and_dates() -> None:
    entries = [
        Entry("a", True, None, 0.0),
        Entry("b.txt", False, 5, 1_700_000_000.0),
        Entry("far", False, 1, 1e20),  # out of range: no date, no crash
    ]
    text = render_html("/x/", entries).decode()
    assert "1 directory, 2 files" in text
    assert "1970-01-01 00:00" in text
    assert "2023-11-14 22:13" in text
    assert ">5 B<" in text


def test_order_directories_first_natural_case_insensitive() -> None:
    names = ["b.txt", "file10", "File2", "file1", "a", "B", "_x", "10", "9", "Z"]
    dirs = ["zeta", "Alpha", "beta2", "beta10"]
    entries = [Entry(name, False, 1, 0.0) for name in names]
    entries += [Entry(name, True, None, 0.0) for name in dirs]
    links = [text for _, text in parse(render_html("/", entries)).links]
    assert links == [
        "Alpha/", "beta2/", "beta10/", "zeta/",
        "9", "10", "_x", "a", "B", "b.txt", "file1", "File2", "file10", "Z",
    ]  # fmt: skip
    document = json.loads(render_json("/", entries))
    assert [
        entry["name"] + "/" * (entry["type"] == "dir") for entry in document["entries"]
    ] == links


def test_same_name_in_two_cases_sorts_stably() -> None:
    entries = [Entry("a", False, 1, 0.0), Entry("A", False, 1, 0.0)]
    links = [text for _, text in parse(render_html("/", entries)).links]
    assert links == ["A", "a"]
    assert [text for _, text in parse(render_html("/", entries[::-1])).links] == links


@settings(deadline=None, max_examples=200)
@given(
    names=st.lists(
        st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=12),
        max_size=6,
        unique=True,
    ),
    is_dir=st.booleans(),
)
def test_any_name_round_trips(names: list[str], is_dir: bool) -> None:
    entries = [Entry(name, is_dir, None if is_dir else 1, 0.0) for name in names]
    page = render_html("/d/", entries)
    links = parse(page).links[1:]
    assert len(links) == len(names)
    suffix = "/" if is_dir else ""
    hrefs = {text: href for href, text in links}
    for name in names:
        href = hrefs[name + suffix]
        assert href.endswith(suffix)
        assert unquote(href.removesuffix("/"), errors="strict") == name
    assert page.count(b"</body>") == 1


# JSON ---------------------------------------------------------------------------------------


def test_json_shape(tree: Path) -> None:
    entries = scan(str(tree / "list"), str(tree))
    assert entries is not None
    document = json.loads(render_json("/list/", entries))
    assert set(document) == {"path", "entries"}
    assert document["path"] == "/list/"
    assert {entry["name"] for entry in document["entries"]} == LISTED
    for entry in document["entries"]:
        assert set(entry) == {"name", "type", "size", "mtime"}
        assert entry["type"] in ("dir", "file")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["mtime"])
        if entry["type"] == "dir":
            assert entry["size"] is None
        else:
            assert isinstance(entry["size"], int)
    types = [entry["type"] for entry in document["entries"]]
    assert types == sorted(types)  # "dir" before "file"
    sized = next(entry for entry in document["entries"] if entry["name"] == "sized.bin")
    assert sized["size"] == 1234


def test_json_values() -> None:
    entries = [Entry("é <x>", False, 7, 1_700_000_000.5), Entry("d", True, None, 1e20)]
    raw = render_json("/caf%C3%A9/", entries)
    raw.decode("ascii")  # escaped: valid whatever the names hold
    assert json.loads(raw) == {
        "path": "/caf%C3%A9/",
        "entries": [
            {"name": "d", "type": "dir", "size": None, "mtime": None},
            {"name": "é <x>", "type": "file", "size": 7, "mtime": "2023-11-14T22:13:20Z"},
        ],
    }


def test_renderers_never_raise_on_unencodable_names() -> None:
    entries = [Entry("\udcff\ud800", False, 1, 0.0)]
    assert b"</body>" in render_html("/", entries)
    assert json.loads(render_json("/", entries))["entries"][0]["name"] == "\udcff\ud800"


# Helpers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1234, "1.2 KiB"),
        (1_048_524, "1023.9 KiB"),
        (1_048_525, "1.0 MiB"),
        (5_767_168, "5.5 MiB"),
        (1 << 30, "1.0 GiB"),
        (3 << 40, "3.0 TiB"),
        (1000 << 60, "1000.0 EiB"),
    ],
)
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


@pytest.mark.parametrize(
    ("accept", "json_wanted"),
    [
        ("application/json", True),
        ("application/json, text/html;q=0.9", True),
        ("text/html;q=0.5, application/json", True),
        ("application/*", True),
        ("application/json, */*;q=0.1", True),
        ("text/*;q=0.1, application/json;q=0.2", True),
        ("", False),  # no Accept: the page
        ("*/*", False),
        ("text/html", False),
        ("text/html, application/json", False),  # a tie goes to HTML
        ("application/json;q=0.5, text/html;q=0.5", False),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),  # a browser
        ("application/json;q=0", False),
        ("application/json;q=0, */*", False),
        ("image/*", False),
        ("text/plain", False),
        ("application/json;q=2", False),  # malformed: ignored
        ("garbage", False),
    ],
)
def test_wants_json(accept: str, json_wanted: bool) -> None:
    assert wants_json(accept) is json_wanted


def test_entry_is_frozen() -> None:
    entry = Entry("a", False, 1, 0.0)
    with pytest.raises(AttributeError):
        entry.name = "b"  # type: ignore[misc]
