"""Tests for sitepeek.resolver: URL path -> File | Listing | Redirect | NotFound | Forbidden |
BadPath, and its pure helpers (SPA eligibility, Accept weights, base paths)."""

from __future__ import annotations

import itertools
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict
from urllib.parse import quote, unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sitepeek import livereload
from sitepeek import resolver as resolver_module
from sitepeek.resolver import (
    BadPath,
    File,
    Forbidden,
    Listing,
    NotFound,
    Redirect,
    Resolution,
    Resolver,
    media_type_weight,
    normalise_base,
    spa_eligible,
    strip_base,
)

CR_LF_DIR = "cr\r\nlf"
SAFE_NAME = "keep!$&'()*+,;=:@~"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A document root "site" next to a sibling "site2" that must never be served."""
    base = tmp_path_factory.mktemp("resolver")
    root = base / "site"
    outside = base / "site2"  # shares the string prefix of the root on purpose
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (outside / "index.html").write_text("outside index")

    files = [
        "index.html",
        "page.html",
        "café.html",
        "a b.txt",
        "a+b.txt",
        "x y.txt",
        "100%.txt",
        ".secret",
        ".git/config",
        ".well-known/x",
        ".well-known/.secret",
        "sub/index.html",
        "sub/page.html",
        "sub/.hidden",
        "sub/.well-known/y",
        "sub/deeper/x.txt",
        "htm_only/index.htm",
        "both/index.html",
        "both/index.htm",
        "evil.com/index.html",
        f"{CR_LF_DIR}/index.html",
        "dé/index.html",
        "sp ace/index.html",
        "pct%dir/index.html",
        f"{SAFE_NAME}/index.html",
        "a/b.txt",
        "a\\b.txt",  # exists on POSIX, still never served
        "index_out/placeholder.txt",
        "fifo_index/placeholder.txt",
        "dir_index/index.html/placeholder.txt",
        "link_index/page.html",
        # Clean URLs.
        "solo.html",  # a page alone
        "guide.html",  # a page next to a directory without an index
        "guide/part.txt",
        "combo.html",  # a page next to a directory with an index
        "combo/index.html",
        "bin",  # an extensionless file next to its page
        "bin.html",
        "docs/intro.html",
        "dir.html/index.html",  # a directory named like a page
        "twice.html.html",
    ]
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    (root / "empty").mkdir()

    (root / "link_in").symlink_to("page.html")
    (root / "linkdir_in").symlink_to("sub", target_is_directory=True)
    (root / "link_out").symlink_to(outside, target_is_directory=True)
    (root / "link_out_rel").symlink_to("../site2", target_is_directory=True)
    (root / "file_out").symlink_to(outside / "secret.txt")
    (root / "sub" / "deep_out").symlink_to("../../site2", target_is_directory=True)
    (root / "index_out" / "index.html").symlink_to(outside / "index.html")
    (root / "link_index" / "index.html").symlink_to("page.html")
    (root / "loop").symlink_to("loop")
    (root / "loop_trick").symlink_to("loop/../../site2/secret.txt")
    (root / "dangling").symlink_to("does-not-exist")
    (root / "leak.html").symlink_to(outside / "secret.txt")
    (root / "dangle.html").symlink_to("does-not-exist.html")
    os.mkfifo(root / "fifo")
    os.mkfifo(root / "fifo_index" / "index.html")

    cwd = os.getcwd()
    os.chdir(root)  # a relative bind avoids the ~108-byte AF_UNIX path limit
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind("sock")
    finally:
        os.chdir(cwd)

    locked = root / "locked"
    locked.mkdir()
    (locked / "f.txt").write_text("locked")
    locked.chmod(0)
    yield root
    locked.chmod(0o755)


@pytest.fixture(scope="module")
def resolver(site: Path) -> Resolver:
    return Resolver(site)


# Expectations: "file:<path relative to the root, after symlinks>", "redirect:<location>"
# (301), "redirect308:<location>", "listing:<directory relative to the root>" (with the
# default listing=True; NotFound with listing=False), "404" (NotFound), "400" (BadPath).
CASES: list[tuple[str, str]] = [
    # Files, directories, index files.
    ("/", "file:index.html"),
    ("/index.html", "file:index.html"),
    ("/page.html", "file:page.html"),
    ("/sub", "redirect:/sub/"),
    ("/sub/", "file:sub/index.html"),
    ("/sub/page.html", "file:sub/page.html"),
    ("/htm_only/", "file:htm_only/index.htm"),
    ("/both/", "file:both/index.html"),
    ("/empty/", "listing:empty"),
    ("/sub/deeper/", "listing:sub/deeper"),
    ("/dir_index/", "listing:dir_index"),  # an "index.html" that is a directory is no index
    ("/fifo_index/", "listing:fifo_index"),
    ("/missing.html", "404"),
    ("/missing/", "404"),
    ("/index.html/", "404"),
    ("/index.html/x", "404"),
    ("/index.html.", "404"),  # trailing dots and spaces are ordinary characters
    ("/index.html%20", "404"),
    ("/index.html%2e", "404"),
    # Percent-decoding: once, per segment, strict UTF-8, "+" is not a space.
    ("/caf%C3%A9.html", "file:café.html"),
    ("/caf%c3%a9.html", "file:café.html"),
    ("/a%20b.txt", "file:a b.txt"),
    ("/a+b.txt", "file:a+b.txt"),
    ("/a%2Bb.txt", "file:a+b.txt"),
    ("/x+y.txt", "404"),
    ("/100%25.txt", "file:100%.txt"),
    ("/100%2525.txt", "404"),  # decoded once: "100%25.txt"
    ("/%zz", "400"),
    ("/%4", "400"),
    ("/a%4g", "400"),
    ("/%", "400"),
    ("/%c3", "400"),
    ("/%ff", "400"),
    ("/%ed%a0%80", "400"),  # an encoded UTF-16 surrogate
    ("/%c0%ae%c0%ae/", "400"),  # overlong "..": invalid UTF-8
    ("/%c0%ae%c0%ae/etc/passwd", "400"),
    ("/%e0%80%ae", "400"),
    ("/%c0%af", "400"),  # overlong "/"
    ("/a%00.html", "400"),
    ("/%00", "400"),
    ("/sub/%00/..", "400"),
    # Raw characters that are not allowed in a path.
    ("/a\x00.html", "400"),
    ("/a b.txt", "400"),
    ("/a\tb", "400"),
    ("/a\r\nb", "400"),
    ("/a\x7f", "400"),
    ("/caf\u00e9.html", "400"),
    ("/a#b", "400"),
    ("/a?b", "400"),
    ("index.html", "400"),
    ("", "400"),
    ("*", "400"),
    ("http://example.com/", "400"),
    # Dot segments (RFC 3986 §5.2.4), also percent-encoded.
    ("/sub/../page.html", "file:page.html"),
    ("/sub/./page.html", "file:sub/page.html"),
    ("/sub/%2e%2e/page.html", "file:page.html"),
    ("/sub/%2E/page.html", "file:sub/page.html"),
    ("/sub/..", "file:index.html"),
    ("/sub/.", "file:sub/index.html"),
    ("/sub/%2e%2e/sub", "redirect:/sub/"),
    ("/missing/../page.html", "file:page.html"),
    ("/..", "400"),
    ("/../index.html", "400"),
    ("/%2e%2e/", "400"),
    ("/%2E%2E/index.html", "400"),
    ("/a/%2e%2e/%2e%2e/x", "400"),
    ("/sub/../../x", "400"),
    ("/sub/../../site2/secret.txt", "400"),
    ("/./../index.html", "400"),
    # Encoded separators never separate.
    ("/..%2f..%2fetc/passwd", "404"),
    ("/%2e%2e%2fsite2%2fsecret.txt", "404"),
    ("/sub%2fpage.html", "404"),
    ("/sub%2Fpage.html", "404"),
    ("/x%2f/../page.html", "404"),
    ("/..\\..\\x", "404"),
    ("/sub%5c..%5cindex.html", "404"),
    ("/a\\b.txt", "404"),
    ("/a%5cb.txt", "404"),
    ("/a%5Cb.txt", "404"),
    ("/\\evil.com", "404"),
    ("/%5cevil.com", "404"),
    # Empty segments merge; "//host" is a local path, never another host.
    ("//evil.com", "redirect:/evil.com/"),
    ("///evil.com", "redirect:/evil.com/"),
    ("//evil.com/", "file:evil.com/index.html"),
    ("/./evil.com", "redirect:/evil.com/"),
    ("/.//evil.com", "redirect:/evil.com/"),
    ("/sub/..//evil.com", "redirect:/evil.com/"),
    ("/%2fevil.com", "404"),
    ("//", "file:index.html"),
    ("/sub//page.html", "file:sub/page.html"),
    ("/sub///", "file:sub/index.html"),
    # Dotfiles, except a top-level /.well-known/.
    ("/.secret", "404"),
    ("/%2esecret", "404"),
    ("/.git/config", "404"),
    ("/.git/", "404"),
    ("/.git", "404"),
    ("/sub/.hidden", "404"),
    ("/...", "404"),
    ("/.well-known/x", "file:.well-known/x"),
    ("/%2ewell-known/x", "file:.well-known/x"),
    ("/.well-known", "redirect:/.well-known/"),
    ("/.well-known/", "listing:.well-known"),
    ("/.well-known/.secret", "404"),
    ("/.well-known/../.secret", "404"),
    ("/sub/.well-known/y", "404"),
    ("/.WELL-KNOWN/x", "404"),
    # Symlinks: followed inside the root, never out of it.
    ("/link_in", "file:page.html"),
    ("/linkdir_in", "redirect:/linkdir_in/"),
    ("/linkdir_in/", "file:sub/index.html"),
    ("/linkdir_in/page.html", "file:sub/page.html"),
    ("/link_index/", "file:link_index/page.html"),
    ("/link_out", "404"),
    ("/link_out/", "404"),
    ("/link_out/secret.txt", "404"),
    ("/link_out_rel/secret.txt", "404"),
    ("/file_out", "404"),
    ("/sub/deep_out/secret.txt", "404"),
    ("/linkdir_in/deep_out/secret.txt", "404"),
    ("/index_out/", "listing:index_out"),
    ("/loop", "404"),
    ("/loop/x", "404"),
    ("/loop_trick", "404"),
    ("/dangling", "404"),
    # Only regular files.
    ("/fifo", "404"),
    ("/fifo/", "404"),
    ("/sock", "404"),
    # Redirect locations are re-encoded from the normalised segments.
    ("/cr%0D%0Alf", "redirect:/cr%0D%0Alf/"),
    ("/cr%0d%0alf", "redirect:/cr%0D%0Alf/"),
    ("/d%c3%a9", "redirect:/d%C3%A9/"),
    ("/d%C3%A9/", "file:dé/index.html"),
    ("/sp%20ace", "redirect:/sp%20ace/"),
    ("/pct%25dir", "redirect:/pct%25dir/"),
    (f"/{quote(SAFE_NAME, safe='')}", f"redirect:/{SAFE_NAME}/"),
    (f"/{SAFE_NAME}", f"redirect:/{SAFE_NAME}/"),
    # Names too long for the file system.
    ("/" + "a" * 300, "404"),
    ("/" + "%C3%A9" * 200, "404"),
    ("/a" * 3000, "404"),
    # Clean URLs (on by default): "/x" is x.html when nothing is named "x".
    ("/page", "file:page.html"),
    ("/page/", "redirect308:/page"),
    ("/page.html", "file:page.html"),
    ("/sub/page", "file:sub/page.html"),
    ("/linkdir_in/page", "file:sub/page.html"),
    ("/caf%C3%A9", "file:café.html"),
    ("/caf%C3%A9/", "redirect308:/caf%C3%A9"),
    ("/index", "file:index.html"),
    ("/solo", "file:solo.html"),
    ("/solo/", "redirect308:/solo"),
    ("/solo//", "redirect308:/solo"),
    ("/solo/.", "redirect308:/solo"),
    ("/solo/x", "404"),
    ("/guide", "file:guide.html"),  # a page wins over a directory without index
    ("/guide/", "redirect308:/guide"),
    ("/guide/part.txt", "file:guide/part.txt"),
    ("/combo", "file:combo.html"),  # and over a directory with one
    ("/combo/", "file:combo/index.html"),
    ("/bin", "file:bin"),  # an existing name is never replaced
    ("/bin/", "404"),
    ("/bin.html", "file:bin.html"),
    ("/docs/intro", "file:docs/intro.html"),
    ("/docs/intro/", "redirect308:/docs/intro"),
    ("/docs", "redirect:/docs/"),
    ("/docs/", "listing:docs"),
    ("/dir.html", "redirect:/dir.html/"),
    ("/dir", "404"),  # "dir.html" is a directory, not a page
    ("/twice.html", "404"),  # never "x.html.html"
    ("/missing", "404"),
    ("/missing/", "404"),
    ("/missing/page", "404"),
    ("/page.html/x", "404"),
    ("/leak", "404"),  # the page is a symlink out of the root
    ("/leak/", "404"),
    ("/leak.html", "404"),
    ("/dangle", "404"),
    ("/link_out", "404"),  # a symlink out of the root is no miss: no fallback
    ("/.secret", "404"),
    ("/%2Esecret", "404"),
    ("/" + "a" * 300 + "/", "404"),
]


def expected_resolution(site: Path, expectation: str) -> Resolution:
    kind, _, value = expectation.partition(":")
    if kind == "file":
        return File(os.path.realpath(site / value))
    if kind == "redirect":
        return Redirect(value)
    if kind == "redirect308":
        return Redirect(value, 308)
    if kind == "listing":
        real = os.path.realpath(site / value)
        return Listing(real, "/" + quote(value, safe="/!$&'()*+,;=:@-._~") + "/")
    assert kind == "404", expectation
    return NotFound()


@pytest.mark.parametrize(("raw_path", "expectation"), CASES, ids=[repr(c[0]) for c in CASES])
def test_resolve_table(resolver: Resolver, site: Path, raw_path: str, expectation: str) -> None:
    result = resolver.resolve(raw_path)
    if expectation == "400":
        assert isinstance(result, BadPath)
        assert result.reason
    else:
        assert result == expected_resolution(site, expectation)


@pytest.mark.parametrize(
    ("query", "location"),
    [
        (None, "/sub/"),
        ("", "/sub/?"),
        ("x=1&y=%20z", "/sub/?x=1&y=%20z"),
        ("next=//evil.com", "/sub/?next=//evil.com"),
        ("a=1\r\nSet-Cookie:x", "/sub/"),
        ("a b", "/sub/"),
        ("a\x00", "/sub/"),
        ("a\x7f", "/sub/"),
        ("caf\u00e9", "/sub/"),
        ("a#frag", "/sub/"),
    ],
)
def test_redirect_keeps_only_a_safe_query(
    resolver: Resolver, query: str | None, location: str
) -> None:
    assert resolver.resolve("/sub", query) == Redirect(location)


def test_query_does_not_change_files(resolver: Resolver, site: Path) -> None:
    assert resolver.resolve("/page.html", "x=1") == File(os.path.realpath(site / "page.html"))


def test_files_are_real_paths(resolver: Resolver, site: Path) -> None:
    result = resolver.resolve("/linkdir_in/page.html")
    assert isinstance(result, File)
    assert result.fs_path == os.path.realpath(site / "sub" / "page.html")
    assert os.path.isabs(result.fs_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unsearchable_directory_is_forbidden(resolver: Resolver) -> None:
    assert resolver.resolve("/locked/f.txt") == Forbidden()
    assert resolver.resolve("/locked/") == Forbidden()


def test_permission_error_on_stat_is_forbidden(
    resolver: Resolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(path: object, *args: object, **kwargs: object) -> os.stat_result:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "stat", denied)
    monkeypatch.setattr(os, "lstat", denied)
    assert resolver.resolve("/page.html") == Forbidden()


def test_permission_error_on_index_is_forbidden(
    resolver: Resolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(path: object, *args: object, **kwargs: object) -> os.stat_result:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "lstat", denied)
    assert resolver.resolve("/sub/") == Forbidden()


@pytest.mark.parametrize("error", [OSError(5, "I/O error"), OSError(40, "loop"), ValueError()])
def test_other_stat_errors_are_not_found(
    resolver: Resolver, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def failing(path: object, *args: object, **kwargs: object) -> os.stat_result:
        raise error

    monkeypatch.setattr(os, "stat", failing)
    monkeypatch.setattr(os, "lstat", failing)
    assert resolver.resolve("/page.html") == NotFound()


def test_custom_index_names(site: Path) -> None:
    resolver = Resolver(site, index_names=("index.htm", "index.html"))
    assert resolver.resolve("/both/") == File(os.path.realpath(site / "both" / "index.htm"))
    assert resolver.resolve("/sub/") == File(os.path.realpath(site / "sub" / "index.html"))
    assert Resolver(site, index_names=()).resolve("/") == Listing(os.path.realpath(site), "/")
    assert Resolver(site, index_names=(), listing=False).resolve("/") == NotFound()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\x00"])
def test_index_names_must_be_plain_names(site: Path, name: str) -> None:
    with pytest.raises(ValueError, match="index name"):
        Resolver(site, index_names=(name,))


def test_root_through_a_symlink(site: Path, tmp_path: Path) -> None:
    link = tmp_path / "root_link"
    link.symlink_to(site, target_is_directory=True)
    resolver = Resolver(str(link))
    assert resolver.root == os.path.realpath(site)
    assert resolver.resolve("/page.html") == File(os.path.realpath(site / "page.html"))
    assert resolver.resolve("/link_out/secret.txt") == NotFound()


def test_root_must_be_a_directory(site: Path) -> None:
    with pytest.raises(NotADirectoryError):
        Resolver(site / "page.html")
    with pytest.raises(NotADirectoryError):
        Resolver(site / "missing")


@pytest.mark.parametrize(
    "location", ["", "sub/", "//evil.com/", "/\\evil.com/", "/a\r\nb/", "/a b/", "/é/", "/a#b"]
)
def test_redirect_rejects_unsafe_locations(location: str) -> None:
    with pytest.raises(ValueError, match="location"):
        Redirect(location)


def test_redirect_rejects_non_redirect_status() -> None:
    with pytest.raises(ValueError, match="status"):
        Redirect("/a/", status=200)


# Properties --------------------------------------------------------------------------

ATTACK_SEGMENTS = [
    "..",
    ".",
    "%2e%2e",
    "%2f",
    "",
    "a",
    "sub",
    "link_out",
    "%00",
    "\\",
    "%c0%ae",
    "secret.txt",
    "index.html",
    "fifo",
    "linkdir_in",
    "deep_out",
    ".well-known",
    "evil.com",
    "loop_trick",
    # Clean URLs and listings.
    "page",
    "solo",
    "guide",
    "combo",
    "bin",
    "leak",
    "leak.html",
    "dangle",
    "docs",
    "intro",
    "empty",
    "index_out",
    "dir",
    "twice.html",
    "index",
]

raw_paths = st.one_of(
    st.text(),
    st.text().map(lambda text: "/" + text),
    st.text(alphabet="/.%2eEfFcC0a\\\x00 ", max_size=30).map(lambda text: "/" + text),
    st.lists(st.sampled_from(ATTACK_SEGMENTS), max_size=8).map(
        lambda segments: "/" + "/".join(segments)
    ),
)
queries = st.none() | st.text(max_size=20)


# Every combination of the feature flags; the properties run against each.
class Flags(TypedDict):
    clean_urls: bool
    listing: bool
    redirect_html: bool


CONFIGS = [
    Flags(clean_urls=clean_urls, listing=listing, redirect_html=redirect_html)
    for clean_urls, listing, redirect_html in itertools.product((True, False), repeat=3)
]


@pytest.fixture(scope="module")
def resolvers(site: Path) -> list[Resolver]:
    return [Resolver(site, **config) for config in CONFIGS]


def assert_inside(root: str, real: str) -> None:
    """``real`` is a real path below ``root``, and no part of it is hidden."""
    assert os.path.realpath(real) == real
    assert os.path.commonpath([root, real]) == root
    parts = Path(os.path.relpath(real, root)).parts
    assert not any(
        part.startswith(".") and part != "." and not (i == 0 and part == ".well-known")
        for i, part in enumerate(parts)
    )


def assert_safe(site: Path, result: Resolution) -> None:
    root = os.path.realpath(site)
    assert isinstance(result, File | Listing | Redirect | NotFound | Forbidden | BadPath)
    if isinstance(result, File):
        assert_inside(root, result.fs_path)
        assert stat.S_ISREG(os.stat(result.fs_path).st_mode)
    elif isinstance(result, Listing):
        assert_inside(root, result.fs_path)
        assert stat.S_ISDIR(os.stat(result.fs_path).st_mode)
        assert result.url_path.startswith("/")
        assert result.url_path.endswith("/")
        assert not result.url_path.startswith("//")
        assert all(0x21 <= ord(ch) < 0x7F and ch not in "?#" for ch in result.url_path)
    elif isinstance(result, Redirect):
        assert result.location.startswith("/")
        assert not result.location.startswith("//")
        assert not any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in result.location)


@settings(deadline=None, max_examples=400)
@given(raw_path=raw_paths, query=queries, index=st.integers(0, len(CONFIGS) - 1))
def test_never_raises_and_never_escapes(
    resolvers: list[Resolver], site: Path, raw_path: str, query: str | None, index: int
) -> None:
    assert_safe(site, resolvers[index].resolve(raw_path, query))


@settings(deadline=None, max_examples=400)
@given(raw_path=raw_paths, query=queries, index=st.integers(0, len(CONFIGS) - 1))
def test_a_redirect_target_never_redirects(
    resolvers: list[Resolver], site: Path, raw_path: str, query: str | None, index: int
) -> None:
    resolver = resolvers[index]
    result = resolver.resolve(raw_path, query)
    if isinstance(result, Redirect):
        path, mark, target_query = result.location.partition("?")
        target = resolver.resolve(path, target_query if mark else None)
        assert_safe(site, target)
        assert not isinstance(target, Redirect | BadPath), (raw_path, result, target)


dir_names = st.text(
    st.characters(codec="utf-8", exclude_characters="/\\\x00"),
    min_size=1,
    max_size=12,
).filter(lambda name: not name.startswith("."))


@settings(deadline=None, max_examples=150)
@given(name=dir_names, query=queries)
def test_redirect_round_trips_any_directory_name(
    resolver: Resolver, site: Path, name: str, query: str | None
) -> None:
    directory = site / "gen" / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "index.html").write_text("x")

    result = resolver.resolve("/gen/" + quote(name, safe=""), query)
    assert_safe(site, result)
    assert isinstance(result, Redirect)
    path, _, _ = result.location.partition("?")
    assert path == "/gen/" + quote(name, safe="!$&'()*+,;=:@-._~") + "/"
    assert unquote(path.split("/")[2], errors="strict") == name
    assert resolver.resolve(path) == File(os.path.realpath(directory / "index.html"))


def test_listing_rows_are_not_found_without_listings(site: Path) -> None:
    resolver = Resolver(site, listing=False)
    rows = [path for path, expectation in CASES if expectation.startswith("listing:")]
    assert len(rows) >= 6
    for path in rows:
        assert resolver.resolve(path) == NotFound(), path


@pytest.mark.parametrize(
    ("raw_path", "expectation"),
    [
        ("/page", "404"),
        ("/page/", "404"),
        ("/page.html", "file:page.html"),
        ("/solo", "404"),
        ("/guide", "redirect:/guide/"),
        ("/guide/", "listing:guide"),
        ("/combo", "redirect:/combo/"),
        ("/combo/", "file:combo/index.html"),
        ("/bin", "file:bin"),
        ("/docs/intro", "404"),
    ],
)
def test_clean_urls_off(site: Path, raw_path: str, expectation: str) -> None:
    resolver = Resolver(site, clean_urls=False)
    assert resolver.resolve(raw_path) == expected_resolution(site, expectation)


@pytest.mark.parametrize(
    ("raw_path", "expectation"),
    [
        ("/solo.html", "redirect308:/solo"),
        ("/page.html", "redirect308:/page"),
        ("/caf%C3%A9.html", "redirect308:/caf%C3%A9"),
        ("/docs/intro.html", "redirect308:/docs/intro"),
        ("/guide.html", "redirect308:/guide"),
        ("/combo.html", "redirect308:/combo"),
        ("/index.html", "redirect308:/"),
        ("/sub/index.html", "redirect308:/sub/"),
        ("/combo/index.html", "redirect308:/combo/"),
        ("/htm_only/index.htm", "redirect308:/htm_only/"),
        ("/linkdir_in/index.html", "redirect308:/linkdir_in/"),
        ("/link_index/index.html", "redirect308:/link_index/"),
        # Left alone when the shorter URL means something else.
        ("/bin.html", "file:bin.html"),  # "/bin" is the file "bin"
        ("/both/index.htm", "file:both/index.htm"),  # "/both/" serves index.html
        ("/twice.html.html", "file:twice.html.html"),
        ("/link_in", "file:page.html"),
        ("/solo", "file:solo.html"),
        ("/sub/page.txt", "404"),
    ],
)
def test_redirect_html(site: Path, raw_path: str, expectation: str) -> None:
    resolver = Resolver(site, redirect_html=True)
    assert resolver.resolve(raw_path) == expected_resolution(site, expectation)


def test_clean_url_redirects_keep_a_safe_query(resolver: Resolver) -> None:
    assert resolver.resolve("/solo/", "a=1&b=%20") == Redirect("/solo?a=1&b=%20", 308)
    assert resolver.resolve("/guide/", "a\r\nb") == Redirect("/guide", 308)
    html_redirects = Resolver(resolver.root, redirect_html=True)
    assert html_redirects.resolve("/solo.html", "x") == Redirect("/solo?x", 308)
    assert html_redirects.resolve("/sub/index.html", "x") == Redirect("/sub/?x", 308)


def test_listing_of_a_directory_reached_through_a_symlink(site: Path, resolver: Resolver) -> None:
    (site / "linked_empty").symlink_to("empty", target_is_directory=True)
    try:
        assert resolver.resolve("/linked_empty/") == Listing(
            os.path.realpath(site / "empty"), "/linked_empty/"
        )
    finally:
        (site / "linked_empty").unlink()


def test_listing_url_path_is_percent_encoded(site: Path, resolver: Resolver) -> None:
    directory = site / "list é#?%"
    directory.mkdir()
    try:
        result = resolver.resolve("/list%20%C3%A9%23%3F%25/")
        assert result == Listing(os.path.realpath(directory), "/list%20%C3%A9%23%3F%25/")
    finally:
        directory.rmdir()


# The hot path: an existing file costs one lstat per segment, nothing more --------------


class SyscallCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        for name in ("stat", "lstat"):
            real = getattr(os, name)
            monkeypatch.setattr(os, name, self._counting(name, real))

    def _counting(self, name: str, real: object) -> object:
        def counted(*args: object, **kwargs: object) -> object:
            self.calls.append(name)
            return real(*args, **kwargs)  # type: ignore[operator]

        return counted


SYSCALL_CASES = [
    ("/page.html", ["lstat"]),
    ("/sub/page.html", ["lstat", "lstat"]),
    ("/sub/deeper/x.txt", ["lstat", "lstat", "lstat"]),
    ("/", ["stat", "lstat"]),  # the root, its index.html
    ("/sub/", ["lstat", "lstat"]),
    ("/page", ["lstat", "lstat"]),  # a miss, then page.html
]


@pytest.mark.parametrize(
    ("raw_path", "calls", "redirect_html"),
    [(path, calls, False) for path, calls in SYSCALL_CASES]
    # redirect_html looks up the shorter URL of an .html file, by design.
    + [(path, calls, True) for path, calls in SYSCALL_CASES if not path.endswith(".html")],
)
def test_syscalls_per_request(
    site: Path,
    monkeypatch: pytest.MonkeyPatch,
    raw_path: str,
    calls: list[str],
    redirect_html: bool,
) -> None:
    resolver = Resolver(site, redirect_html=redirect_html)
    counter = SyscallCounter(monkeypatch)
    assert isinstance(resolver.resolve(raw_path), File)
    assert counter.calls == calls


# The clean-URL matrix ---------------------------------------------------------------------
#
# Four facts about the name "about": a file "about", a directory "about/" with an
# index.html, a directory "about/" without one, a file "about.html". Of their 16
# combinations 8 can exist on disk ("about" is a file, a directory with an index, a
# directory without, or absent; "about.html" exists or not); the others ask one name
# to be two things. Each state is built at the root and one level down, and requested
# as /about, /about/, /about.html and /about/index.html under every flag combination.

FACTS = ("file", "dir_index", "dir_empty", "html")
REQUESTS = ("about", "about/", "about.html", "about/index.html")


def realizable(facts: tuple[bool, ...]) -> bool:
    file, dir_index, dir_empty, _ = facts
    return file + dir_index + dir_empty <= 1


STATES = [facts for facts in itertools.product((False, True), repeat=4) if realizable(facts)]


def state_id(facts: tuple[bool, ...]) -> str:
    return "+".join(name for name, present in zip(FACTS, facts, strict=True) if present) or "none"


def test_the_matrix_covers_every_realizable_state() -> None:
    assert len(STATES) == 8
    impossible = [f for f in itertools.product((False, True), repeat=4) if not realizable(f)]
    assert len(impossible) == 8
    assert all(sum(f[:3]) >= 2 for f in impossible)  # "about" would be two things


# With the defaults (clean_urls, listing, no redirect_html): the docstring's table, plus
# /about/index.html. "NNN>x" is one redirect with status NNN, then x. Columns: /about,
# /about/, /about.html, /about/index.html.
DEFAULT_MATRIX: dict[str, tuple[str, str, str, str]] = {
    "none": ("404", "404", "404", "404"),
    "html": ("about.html", "308>about.html", "about.html", "404"),
    "file": ("about", "404", "404", "404"),
    "file+html": ("about", "404", "about.html", "404"),
    "dir_index": ("301>about/index.html", "about/index.html", "404", "about/index.html"),
    "dir_index+html": ("about.html", "about/index.html", "about.html", "about/index.html"),
    "dir_empty": ("301>listing", "listing", "404", "404"),
    "dir_empty+html": ("about.html", "308>about.html", "about.html", "404"),
}


def expected_matrix(state: str, config: Flags) -> tuple[str, ...]:
    """The default table, adjusted by the documented effect of each flag."""
    row = list(DEFAULT_MATRIX[state])
    has_html = state.endswith("html")
    if not config["clean_urls"]:  # "about.html" is only ever reached by its own name
        row[:2] = DEFAULT_MATRIX[state.removesuffix("+html").removesuffix("html") or "none"][:2]
    if config["redirect_html"]:
        if has_html and row[0] == "about.html":  # "/about" serves this very page
            row[2] = "308>about.html"
        if state.startswith("dir_index"):
            row[3] = "308>about/index.html"
    if not config["listing"]:
        row = [step.replace("listing", "404") for step in row]
    return tuple(row)


@pytest.fixture(scope="module")
def matrix_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One root per state, holding the state at its top and below "nested/"."""
    base = tmp_path_factory.mktemp("matrix")
    for facts in STATES:
        for where in (base / state_id(facts), base / state_id(facts) / "nested"):
            where.mkdir(parents=True, exist_ok=True)
            file, dir_index, dir_empty, html = facts
            if file:
                (where / "about").write_text("about")
            if dir_index or dir_empty:
                (where / "about").mkdir()
                (where / "about" / "other.txt").write_text("other")
            if dir_index:
                (where / "about" / "index.html").write_text("about/index.html")
            if html:
                (where / "about.html").write_text("about.html")
    return base


def follow(resolver: Resolver, raw_path: str) -> tuple[list[int], Resolution]:
    """Resolve, following redirects (at most 5); fail on a loop."""
    statuses: list[int] = []
    seen = {raw_path}
    result = resolver.resolve(raw_path)
    while isinstance(result, Redirect):
        statuses.append(result.status)
        assert len(statuses) <= 5, f"too many redirects from {raw_path}"
        location = result.location
        assert location not in seen, f"redirect loop: {seen} -> {location}"
        seen.add(location)
        result = resolver.resolve(location)
    return statuses, result


def describe(result: Resolution, where: Path) -> str:
    if isinstance(result, File):
        return os.path.relpath(result.fs_path, where)
    if isinstance(result, Listing):
        assert result.fs_path == str(where / "about")
        return "listing"
    assert result == NotFound(), result
    return "404"


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: ",".join(k for k, v in c.items() if v) or "all-off"
)
@pytest.mark.parametrize("facts", STATES, ids=state_id)
@pytest.mark.parametrize("nested", [False, True], ids=["top", "nested"])
def test_clean_url_matrix(
    matrix_root: Path, config: Flags, facts: tuple[bool, ...], nested: bool
) -> None:
    state = state_id(facts)
    root = matrix_root / state
    resolver = Resolver(root, **config)
    where = root / "nested" if nested else root
    prefix = "/nested/" if nested else "/"
    for request, expected in zip(REQUESTS, expected_matrix(state, config), strict=True):
        statuses, final = follow(resolver, prefix + request)
        assert len(statuses) <= 1  # every redirect target resolves to a non-redirect
        got = "".join(f"{status}>" for status in statuses) + describe(final, where)
        assert got == expected, (state, config, request)
        assert_safe(root, final)


# Configured files: --spa FILE, 404.html ------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "expectation"),
    [
        ("index.html", "index.html"),
        ("/index.html", "index.html"),
        ("./sub//page.html", "sub/page.html"),
        ("sub/page.html", "sub/page.html"),
        ("café.html", "café.html"),
        ("100%.txt", "100%.txt"),  # a file name: never percent-decoded
        ("100%25.txt", None),
        ("a b.txt", "a b.txt"),
        (".well-known/x", ".well-known/x"),
        ("link_in", "page.html"),
        ("link_index/index.html", "link_index/page.html"),
        ("linkdir_in/page.html", "sub/page.html"),
        ("", None),
        ("/", None),
        (".", None),
        ("sub", None),  # a directory
        ("sub/", None),
        ("missing.html", None),
        ("page", None),  # no clean URLs: configuration names files exactly
        ("../site2/secret.txt", None),
        ("sub/../page.html", None),
        ("..", None),
        (".secret", None),
        (".git/config", None),
        ("sub/.hidden", None),
        ("sub/.well-known/y", None),
        ("file_out", None),
        ("link_out/secret.txt", None),
        ("index_out/index.html", None),
        ("loop", None),
        ("dangling", None),
        ("fifo", None),
        ("sock", None),
        ("a\\b.txt", None),
        ("a\x00b", None),
        ("a" * 300, None),
    ],
)
def test_resolve_file(
    resolver: Resolver, site: Path, relative: str, expectation: str | None
) -> None:
    found = resolver.resolve_file(relative)
    if expectation is None:
        assert found is None
    else:
        assert found == File(os.path.realpath(site / expectation))
        assert found.stat is not None


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_resolve_file_unreadable_is_none(resolver: Resolver) -> None:
    assert resolver.resolve_file("locked/f.txt") is None


# SPA eligibility --------------------------------------------------------------------------

HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize(
    ("raw_path", "method", "accept", "eligible"),
    [
        ("/app/route", "GET", HTML, True),
        ("/app/route", "HEAD", HTML, True),
        ("/", "GET", HTML, True),
        ("/app/", "GET", HTML, True),
        ("/users/42", "GET", HTML, True),
        ("/v1.2/page", "GET", HTML, True),  # only the last segment's extension counts
        ("/docs.v2/", "GET", HTML, True),
        ("/a%20b", "GET", HTML, True),
        ("/caf%C3%A9", "GET", HTML, True),
        ("//x", "GET", HTML, True),
        # Accept.
        ("/x", "GET", "", True),  # no Accept counts as */*
        ("/x", "GET", "*/*", True),
        ("/x", "GET", "text/*", True),
        ("/x", "GET", "text/html", True),
        ("/x", "GET", "application/json, */*;q=0.1", True),
        ("/x", "GET", "TEXT/HTML", True),
        ("/x", "GET", "garbage", True),  # nothing parses: as if absent
        ("/x", "GET", "application/json", False),
        ("/x", "GET", "image/*", False),
        ("/x", "GET", "image/avif,image/webp,image/*", False),
        ("/x", "GET", "text/css,*/*;q=0.1", True),
        ("/x", "GET", "text/css", False),
        ("/x", "GET", "text/html;q=0", False),
        ("/x", "GET", "*/*;q=0", False),
        ("/x", "GET", "text/html;q=0, */*", False),  # the most specific range decides
        ("/x", "GET", "text/*;q=0, */*", False),
        ("/x", "GET", "text/*;q=0, text/html", True),
        # Methods.
        ("/x", "POST", HTML, False),
        ("/x", "PUT", HTML, False),
        ("/x", "OPTIONS", HTML, False),
        ("/x", "get", HTML, False),  # methods are case-sensitive (RFC 9110 §9.1)
        # Paths.
        ("/app.js", "GET", HTML, False),
        ("/assets/app.css", "GET", HTML, False),
        ("/favicon.ico", "GET", HTML, False),
        ("/data.JSON", "GET", HTML, False),  # extensions match case-insensitively
        ("/app.js.map", "GET", HTML, False),
        ("/app%2Ejs", "GET", HTML, False),
        # A last segment named like no asset type is an app route (issue 19).
        ("/users/john.doe", "GET", HTML, True),
        ("/v1.2", "GET", HTML, True),
        ("/page.html", "GET", HTML, True),  # a page, not an asset: the app decides
        ("/x.", "GET", HTML, True),
        ("/archive.php", "GET", HTML, True),
        ("/.env", "GET", HTML, False),
        ("/%2Eenv", "GET", HTML, False),
        ("/a/.git/config", "GET", HTML, False),
        ("/.well-known/acme", "GET", HTML, False),
        ("/.well-known/", "GET", HTML, False),
        ("/a/../b", "GET", HTML, False),
        ("/a/./b", "GET", HTML, False),
        ("/a/%2e%2e/b", "GET", HTML, False),
        ("/a/..", "GET", HTML, False),
        ("/..", "GET", HTML, False),
        ("/__sitepeek__/x", "GET", HTML, False),
        ("/__sitepeek__", "GET", HTML, False),
        ("//__sitepeek__/ws", "GET", HTML, False),
        ("/__SITEPEEK__/x", "GET", HTML, False),
        ("/a%2Fb", "GET", HTML, False),
        ("/a\\b", "GET", HTML, False),
        ("/%zz", "GET", HTML, False),
        ("/a b", "GET", HTML, False),
        ("a", "GET", HTML, False),
        ("*", "OPTIONS", HTML, False),
        ("", "GET", HTML, False),
    ],
)
def test_spa_eligible(raw_path: str, method: str, accept: str, eligible: bool) -> None:
    assert spa_eligible(raw_path, method, accept) is eligible


def test_internal_prefix_matches_livereload() -> None:
    assert f"/{resolver_module._INTERNAL_SEGMENT}/" == livereload.PREFIX


@pytest.mark.parametrize(
    ("accept", "media_type", "weight"),
    [
        ("", "text/html", 1000),
        ("  ", "text/html", 1000),
        ("text/html", "text/html", 1000),
        ("text/html;q=0.5", "text/html", 500),
        ("text/html; q=0.5", "text/html", 500),
        ("text/html ;Q=0.25", "text/html", 250),
        ("text/html;charset=utf-8;q=0.3", "text/html", 300),
        ("text/html;q=0.3;ext=1", "text/html", 300),
        ("text/html;q=1.000", "text/html", 1000),
        ("text/html;q=0.", "text/html", 0),
        ("text/*;q=0.4", "text/html", 400),
        ("*/*;q=0.2", "text/html", 200),
        ("text/html;q=0.1, text/*;q=0.9, */*", "text/html", 100),
        ("*/*, text/*;q=0.3", "text/html", 300),
        ("text/html;level=1;q=0, text/html;q=0.7", "text/html", 700),
        ("application/json", "text/html", 0),
        ("application/json", "application/json", 1000),
        ("application/*", "application/json", 1000),
        ("text/plain, application/json;q=0.1", "application/json", 100),
        # Malformed elements are ignored.
        ("text/html;q=2, application/json", "text/html", 0),
        ("text/html;q=0.1234, application/json", "text/html", 0),
        ("text/html;q=abc, */*;q=0.1", "text/html", 100),
        ("*/html, application/json", "text/html", 0),
        ("text, application/json", "text/html", 0),
        ("text/html/x, application/json", "text/html", 0),
        ("te xt/html, application/json", "text/html", 0),
        ('text/html;a="x,y", application/json', "text/html", 1000),
        (",,,", "text/html", 1000),
        ("garbage", "application/json", 1000),
    ],
)
def test_media_type_weight(accept: str, media_type: str, weight: int) -> None:
    assert media_type_weight(accept, media_type) == weight


@given(accept=st.text(max_size=60), media_type=st.sampled_from(["text/html", "application/json"]))
def test_media_type_weight_never_raises(accept: str, media_type: str) -> None:
    assert 0 <= media_type_weight(accept, media_type) <= 1000


# Base path --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "normalised"),
    [
        ("repo", "/repo/"),
        ("/repo", "/repo/"),
        ("/repo/", "/repo/"),
        ("repo/", "/repo/"),
        ("//repo//", "/repo/"),
        ("/", "/"),
        ("", "/"),
        ("//", "/"),
        ("/a/b", "/a/b/"),
        ("/my-repo_1.0~x/", "/my-repo_1.0~x/"),
        ("/a:b@c!$&'()*+,;=/", "/a:b@c!$&'()*+,;=/"),
        ("/.repo/", "/.repo/"),
    ],
)
def test_normalise_base(base: str, normalised: str) -> None:
    assert normalise_base(base) == normalised
    assert normalise_base(normalised) == normalised


@pytest.mark.parametrize(
    "base",
    [
        "/a//b/",
        "/./",
        "/../",
        "/a/../b/",
        "/a/./b/",
        "/my repo/",
        "/a%20b/",
        "/a?b/",
        "/a#b/",
        "/a\\b/",
        "/café/",
        "/a\tb/",
        "/a\r\n/",
        "/a\x00/",
        "/a<b>/",
        '/a"b/',
        "/__sitepeek__/",
        "/__SITEPEEK__/x/",
        "\\\\evil.com",
    ],
)
def test_normalise_base_rejects(base: str) -> None:
    with pytest.raises(ValueError, match="base path"):
        normalise_base(base)


@pytest.mark.parametrize(
    ("raw_path", "base", "stripped"),
    [
        ("/repo/x", "/repo/", "/x"),
        ("/repo/", "/repo/", "/"),
        ("/repo/a/b.html", "/repo/", "/a/b.html"),
        ("/repo//x", "/repo/", "//x"),
        ("/repo/../x", "/repo/", "/../x"),  # the resolver rejects the climb (400)
        ("/repo", "/repo/", None),  # the handler redirects it to /repo/
        ("/", "/repo/", None),
        ("/repox", "/repo/", None),
        ("/repo.html", "/repo/", None),
        ("/other/x", "/repo/", None),
        ("/REPO/x", "/repo/", None),
        ("/rep%6F/x", "/repo/", None),  # matched literally, as browsers send it
        ("//repo/x", "/repo/", None),
        ("/a/b/c", "/a/b/", "/c"),
        ("/a/c", "/a/b/", None),
        ("/x", "/", "/x"),
        ("/", "/", "/"),
    ],
)
def test_strip_base(raw_path: str, base: str, stripped: str | None) -> None:
    assert strip_base(raw_path, base) == stripped


@given(base=st.sampled_from(["/repo/", "/a/b/", "/"]), rest=st.text(max_size=20))
def test_strip_base_then_resolve_stays_in_the_root(
    resolver: Resolver, site: Path, base: str, rest: str
) -> None:
    stripped = strip_base(base + rest, base)
    assert stripped == "/" + rest
    assert_safe(site, resolver.resolve(stripped))
