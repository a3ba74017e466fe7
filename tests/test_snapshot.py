"""The copy of the last good --build (sitepeek.snapshot), on a real file system.

What the server does with it (every worker model) is in test_build.py; here: the copy
is whole and real, only what changed is copied again, symlinks into the site point
into the copy, and it never outlives sitepeek.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from sitepeek.resolver import File, Resolver
from sitepeek.snapshot import PREFIX, Snapshot


@pytest.fixture
def temp(tmp_path: Path) -> Path:
    """The temporary directory the copies go to."""
    path = tmp_path / "tmp"
    path.mkdir()
    return path


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "index.html").write_text("<p>home</p>")
    (root / "docs" / "page.html").write_text("<p>page</p>")
    (root / "docs" / "deep" / "x.css").write_text("x{}")
    return root


def tree(root: Path) -> dict[str, str]:
    """Every entry below ``root``: file contents, "dir", or "-> target" for a link."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            found[rel] = "dir"
        else:
            found[rel] = path.read_text()
    return found


def test_the_copy_is_whole_and_real(site: Path, temp: Path) -> None:
    snapshot = Snapshot(site, temp_dir=str(temp))
    assert snapshot.directory is None
    assert snapshot.refresh() is None
    copy = Path(str(snapshot.directory))
    assert copy.parent == temp and copy.name.startswith(f"{PREFIX}{os.getpid()}-")
    assert tree(copy) == tree(site)
    # Not hard links: a generator rewriting a file in place leaves the copy alone.
    assert (copy / "index.html").stat().st_ino != (site / "index.html").stat().st_ino
    with (site / "index.html").open("r+") as f:
        f.write("<p>HALF")
    assert (copy / "index.html").read_text() == "<p>home</p>"


def test_only_what_changed_is_copied_again(site: Path, temp: Path) -> None:
    snapshot = Snapshot(site, temp_dir=str(temp))
    assert snapshot.refresh() is None
    assert snapshot.copied == 3
    assert snapshot.refresh() is None
    assert snapshot.copied == 0
    (site / "docs" / "page.html").write_text("<p>two</p>")
    assert snapshot.refresh() is None
    assert snapshot.copied == 1
    # Rewritten in place with the same size and its old mtime put back: ctime tells.
    page = site / "docs" / "page.html"
    before = page.stat()
    page.write_text("<p>3x3</p>")
    os.utime(page, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert page.stat().st_size == before.st_size and page.stat().st_mtime_ns == before.st_mtime_ns
    assert snapshot.refresh() is None
    assert snapshot.copied == 1
    assert tree(Path(str(snapshot.directory))) == tree(site)


def test_deletions_and_changes_of_kind_follow(site: Path, temp: Path) -> None:
    snapshot = Snapshot(site, temp_dir=str(temp))
    assert snapshot.refresh() is None
    (site / "index.html").unlink()
    (site / "docs" / "deep" / "x.css").unlink()
    (site / "docs" / "deep").rmdir()
    (site / "docs" / "deep").write_text("now a file")
    (site / "docs" / "page.html").unlink()
    (site / "docs" / "page.html").mkdir()
    (site / "docs" / "page.html" / "index.html").write_text("now a directory")
    assert snapshot.refresh() is None
    copy = Path(str(snapshot.directory))
    assert tree(copy) == tree(site)
    assert not [p for p in copy.rglob(".sitepeek-*")]  # no temporary file left


def test_symlinks_into_the_site_point_into_the_copy(site: Path, temp: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    (site / "rel.html").symlink_to("docs/page.html")
    (site / "abs.html").symlink_to(site / "docs" / "page.html")
    (site / "docs" / "up.html").symlink_to("../index.html")
    (site / "linked").symlink_to(site / "docs")  # a directory
    (site / "out.txt").symlink_to(outside)
    (site / "dangling.html").symlink_to("nowhere.html")
    snapshot = Snapshot(site, temp_dir=str(temp))
    assert snapshot.refresh() is None
    copy = Path(str(snapshot.directory))
    assert os.readlink(copy / "rel.html") == "docs/page.html"
    assert os.readlink(copy / "abs.html") == "docs/page.html"  # made relative
    assert os.readlink(copy / "docs" / "up.html") == "../index.html"
    assert os.readlink(copy / "linked") == "docs"
    assert os.readlink(copy / "out.txt") == str(outside)  # as it was
    assert os.readlink(copy / "dangling.html") == "nowhere.html"
    # Served from the copy as from the site: confined to it, outside links refused.
    resolver = Resolver(copy)
    for path in ("/rel.html", "/abs.html", "/linked/page.html"):
        found = resolver.resolve(path)
        assert isinstance(found, File) and Path(found.fs_path).read_text() == "<p>page</p>"
    assert not isinstance(resolver.resolve("/out.txt"), File)
    # A link retargeted is copied again.
    (site / "rel.html").unlink()
    (site / "rel.html").symlink_to("index.html")
    assert snapshot.refresh() is None
    assert os.readlink(copy / "rel.html") == "index.html"


def test_a_file_replaced_while_it_is_copied_costs_only_that_file(
    site: Path, temp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A companion writing into the site (write, then rename over) may remove a file
    between its copy and its times and mode being taken: the copy stays."""
    copy = shutil.copyfileobj
    page = site / "docs" / "page.html"
    inode = page.stat().st_ino

    def then_gone(reader: Any, writer: Any, length: int = 0) -> None:
        copy(reader, writer, length)
        if os.fstat(reader.fileno()).st_ino == inode:
            page.unlink()

    monkeypatch.setattr(shutil, "copyfileobj", then_gone)
    snapshot = Snapshot(site, temp_dir=str(temp))
    assert snapshot.refresh() is None
    assert snapshot.directory is not None
    monkeypatch.undo()
    assert tree(Path(snapshot.directory)) == {
        "docs": "dir",
        "docs/deep": "dir",
        "docs/deep/x.css": "x{}",
        "docs/page.html": "<p>page</p>",
        "index.html": "<p>home</p>",
    }
    assert snapshot.refresh() is None  # and the next refresh follows the source
    assert "docs/page.html" not in tree(Path(snapshot.directory))
    snapshot.remove()


def test_fifos_and_skipped_names_are_left_out(site: Path, temp: Path) -> None:
    os.mkfifo(site / "pipe")
    (site / ".sitepeek-fence-1-2").touch()
    snapshot = Snapshot(
        site, temp_dir=str(temp), skip=lambda name: name.startswith(".sitepeek-fence-")
    )
    assert snapshot.refresh() is None
    assert sorted(os.listdir(str(snapshot.directory))) == ["docs", "index.html"]


def test_a_site_over_the_limit_gets_no_copy(site: Path, temp: Path) -> None:
    snapshot = Snapshot(site, limit=40, temp_dir=str(temp))
    assert snapshot.refresh() is None  # 11 + 11 + 3 bytes
    (site / "big.bin").write_bytes(b"x" * 30)
    assert snapshot.refresh() == "the site is over 40 bytes"
    assert snapshot.directory is None
    assert os.listdir(temp) == []  # what was copied is gone
    (site / "big.bin").unlink()
    assert snapshot.refresh() is None
    assert tree(Path(str(snapshot.directory))) == tree(site)


def test_remove_leaves_nothing_and_stale_copies_go(site: Path, temp: Path) -> None:
    # A copy of a sitepeek that was killed (no process has this pid), and one of a
    # running sitepeek (this process): only the first is removed.
    stale = temp / f"{PREFIX}999999999-abc"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "page.html").write_text("old")
    running = temp / f"{PREFIX}{os.getpid()}-xyz"
    running.mkdir()
    snapshot = Snapshot(site, temp_dir=str(temp))
    assert snapshot.refresh() is None
    assert not stale.exists() and running.exists()
    copy = Path(str(snapshot.directory))
    snapshot.remove()
    assert not copy.exists() and snapshot.directory is None
    assert snapshot.refresh() == "sitepeek is stopping"
    assert sorted(os.listdir(temp)) == [running.name]


def test_a_missing_site_is_no_copy(tmp_path: Path, temp: Path) -> None:
    snapshot = Snapshot(tmp_path / "nothing", temp_dir=str(temp))
    problem = snapshot.refresh()
    assert problem is not None and problem.startswith("cannot read ")
    assert snapshot.directory is None and os.listdir(temp) == []
