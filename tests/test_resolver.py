"""Tests for sitepeek.resolver: URL path -> File | Redirect | NotFound | Forbidden | BadPath."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sitepeek.resolver import (
    BadPath,
    File,
    Forbidden,
    NotFound,
    Redirect,
    Resolution,
    Resolver,
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


# Expectations: "file:<path relative to the root, after symlinks>", "redirect:<location>",
# "404" (NotFound), "400" (BadPath).
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
    ("/empty/", "404"),
    ("/sub/deeper/", "404"),
    ("/dir_index/", "404"),  # an "index.html" that is a directory is no index
    ("/fifo_index/", "404"),
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
    ("/.well-known/", "404"),
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
    ("/index_out/", "404"),
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
]


def expected_resolution(site: Path, expectation: str) -> Resolution:
    kind, _, value = expectation.partition(":")
    if kind == "file":
        return File(os.path.realpath(site / value))
    if kind == "redirect":
        return Redirect(value)
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
    assert Resolver(site, index_names=()).resolve("/") == NotFound()


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


def assert_safe(site: Path, result: Resolution) -> None:
    root = os.path.realpath(site)
    assert isinstance(result, File | Redirect | NotFound | Forbidden | BadPath)
    if isinstance(result, File):
        real = os.path.realpath(result.fs_path)
        assert real == result.fs_path
        assert os.path.commonpath([root, real]) == root
        assert stat.S_ISREG(os.stat(real).st_mode)
        parts = Path(os.path.relpath(real, root)).parts
        assert not any(
            part.startswith(".") and not (i == 0 and part == ".well-known")
            for i, part in enumerate(parts)
        )
    elif isinstance(result, Redirect):
        assert result.location.startswith("/")
        assert not result.location.startswith("//")
        assert not any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in result.location)


@settings(deadline=None, max_examples=400)
@given(raw_path=raw_paths, query=queries)
def test_never_raises_and_never_escapes(
    resolver: Resolver, site: Path, raw_path: str, query: str | None
) -> None:
    assert_safe(site, resolver.resolve(raw_path, query))


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
