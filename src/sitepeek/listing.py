"""Directory listings: scan a directory, render it as HTML or JSON.

:func:`scan` is the only function that touches the file system; the renderers are pure,
so every escaping rule is testable without a directory. A listing shows exactly what the
resolver would serve: no dotfiles, no symlinks leaving the root, no FIFOs or sockets, no
names a URL cannot reach (a backslash, bytes that are not UTF-8).

Every name reaches the page twice, and each use has its own escaping: the link text is
HTML-escaped, the ``href`` is percent-encoded (every character but the RFC 3986
unreserved ones, so ``#``, ``?``, ``%`` and ``:`` cannot end the path, start a fragment
or look like a scheme) and then HTML-escaped for the attribute. The page has no script
and loads nothing; the server injects its reload client before ``</body>``.
"""

from __future__ import annotations

import html
import json
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from sitepeek.console import human_size
from sitepeek.resolver import media_type_weight

__all__ = ["Entry", "human_size", "render_html", "render_json", "scan", "wants_json"]

_DIGITS = re.compile(r"([0-9]+)")


@dataclass(frozen=True, slots=True)
class Entry:
    """One listed name. ``size`` is None for a directory; ``mtime`` is POSIX seconds."""

    name: str
    is_dir: bool
    size: int | None
    mtime: float


# --------------------------------------------------------------------------- scanning


def scan(fs_path: str, root: str) -> list[Entry] | None:
    """The servable entries of directory ``fs_path`` (unsorted), or None if unreadable.

    Symlinks are followed only when their real path stays inside ``root``; a dangling
    link, a dotfile, anything but a regular file or a directory, and a name no URL can
    reach are left out.
    """
    real_root = os.path.realpath(root)
    prefix = real_root if real_root.endswith(os.sep) else real_root + os.sep
    entries: list[Entry] = []
    try:
        with os.scandir(fs_path) as iterator:
            for dir_entry in iterator:
                entry = _entry(dir_entry, real_root, prefix)
                if entry is not None:
                    entries.append(entry)
    except OSError:  # unreadable, vanished, not a directory
        return None
    return entries


def _entry(dir_entry: os.DirEntry[str], real_root: str, prefix: str) -> Entry | None:
    name = dir_entry.name
    if name.startswith(".") or "\\" in name or not _is_utf8(name):
        return None
    try:
        if dir_entry.is_symlink():
            target = os.path.realpath(dir_entry.path)
            if target != real_root and not target.startswith(prefix):
                return None
        st = dir_entry.stat()  # follows an inside symlink; a dangling one raises
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return Entry(name, True, None, st.st_mtime)
    if stat.S_ISREG(st.st_mode):
        return Entry(name, False, st.st_size, st.st_mtime)
    return None


def _is_utf8(name: str) -> bool:
    """False for a name os.scandir decoded with surrogateescape: no URL reaches it."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------- order


def _sorted(entries: Iterable[Entry]) -> list[Entry]:
    """Directories first, then files; each in case-insensitive natural order."""
    return sorted(entries, key=lambda entry: (not entry.is_dir, _natural_key(entry.name)))


def _natural_key(name: str) -> tuple[list[tuple[str, int]], str]:
    """Sort "file2" before "file10" and "a" before "B"; the exact name breaks ties.

    Splitting on digit runs leaves text at even and digits at odd positions, so the key
    pairs each text with the number after it (-1 when none) and compares like with like.
    """
    parts = _DIGITS.split(name.casefold())
    numbers = [int(digits) for digits in parts[1::2]] + [-1]
    return list(zip(parts[0::2], numbers, strict=True)), name


# --------------------------------------------------------------------------- formats


def _utc(mtime: float) -> datetime | None:
    try:
        return datetime.fromtimestamp(mtime, UTC)
    except (OverflowError, OSError, ValueError):  # out of the platform's range
        return None


def _href(entry: Entry) -> str:
    """A relative reference to the entry: percent-encoded, so any name is one segment."""
    # errors="replace": a name scan would never return (a lone surrogate) must not raise.
    return quote(entry.name, safe="", errors="replace") + ("/" if entry.is_dir else "")


def _display_path(url_path: str) -> str:
    return unquote(url_path, errors="replace")


# --------------------------------------------------------------------------- HTML

_STYLE = """\
:root{color-scheme:light dark;--fg:#1f2328;--muted:#59636e;--bg:#fff;--hover:#f6f8fa;\
--line:#d1d9e0;--link:#0969da}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#9198a1;--bg:#0d1117;\
--hover:#151b23;--line:#3d444d;--link:#4493f8}}
body{margin:0;background:var(--bg);color:var(--fg);\
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:60rem;margin:0 auto;padding:1.5rem 1rem}
h1{font-size:1.2rem;font-weight:600;margin:0 0 1rem;overflow-wrap:anywhere}
table{width:100%;border-collapse:collapse}
th,td{padding:.35rem .6rem;text-align:left;border-bottom:1px solid var(--line)}
th{color:var(--muted);font-size:.8rem;font-weight:600;text-transform:uppercase}
tbody tr:hover{background:var(--hover)}
.size,.date{white-space:nowrap;font-variant-numeric:tabular-nums;color:var(--muted)}
.size{text-align:right}
a{color:var(--link);text-decoration:none;overflow-wrap:anywhere}
a:hover{text-decoration:underline}
.dir a{font-weight:600}
footer{margin-top:1rem;color:var(--muted);font-size:.85rem}
"""


def render_html(url_path: str, entries: list[Entry]) -> bytes:
    """A readable index page of ``url_path`` (the directory's URL path, ending in "/").

    The links are relative to the directory, so the page works under any base path.
    """
    title = html.escape(f"Index of {_display_path(url_path)}")
    rows = []
    if url_path != "/":
        rows.append('<tr class="dir"><td><a href="../">../</a></td><td></td><td></td></tr>')
    ordered = _sorted(entries)
    rows.extend(_row(entry) for entry in ordered)
    directories = sum(entry.is_dir for entry in ordered)
    summary = (
        f"{_count(directories, 'directory', 'directories')}, "
        f"{_count(len(ordered) - directories, 'file', 'files')}"
    )
    page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>{title}</title>
<style>
{_STYLE}</style>
</head>
<body>
<main>
<h1>{title}</h1>
<table>
<thead><tr><th>Name</th><th class="size">Size</th><th>Modified (UTC)</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
<footer>{summary}</footer>
</main>
</body>
</html>
"""
    return page.encode("utf-8", errors="replace")


def _row(entry: Entry) -> str:
    href = html.escape(_href(entry), quote=True)
    label = html.escape(entry.name + ("/" if entry.is_dir else ""), quote=True)
    size = "" if entry.size is None else human_size(entry.size)
    when = _utc(entry.mtime)
    date = "" if when is None else when.strftime("%Y-%m-%d %H:%M")
    css = "dir" if entry.is_dir else "file"
    # <bdi> keeps a right-to-left name from reordering the rest of the row.
    return (
        f'<tr class="{css}"><td><a href="{href}"><bdi>{label}</bdi></a></td>'
        f'<td class="size">{size}</td><td class="date">{date}</td></tr>'
    )


def _count(number: int, singular: str, plural: str) -> str:
    return f"{number} {singular if number == 1 else plural}"


# --------------------------------------------------------------------------- JSON


def render_json(url_path: str, entries: list[Entry]) -> bytes:
    """``{"path": url_path, "entries": [{"name", "type", "size", "mtime"}]}``.

    ``path`` is the URL path (percent-encoded), ``name`` the file name (not encoded),
    ``type`` "dir" or "file", ``size`` bytes or null for a directory, ``mtime`` ISO 8601
    in UTC ("2024-05-01T12:34:56Z") or null when out of range. Same order as the page.
    """
    document = {
        "path": url_path,
        "entries": [
            {
                "name": entry.name,
                "type": "dir" if entry.is_dir else "file",
                "size": entry.size,
                "mtime": _iso_utc(entry.mtime),
            }
            for entry in _sorted(entries)
        ],
    }
    # ASCII output: valid UTF-8 whatever the names hold.
    return (json.dumps(document, indent=2) + "\n").encode("ascii")


def _iso_utc(mtime: float) -> str | None:
    when = _utc(mtime)
    return None if when is None else when.isoformat(timespec="seconds").replace("+00:00", "Z")


def wants_json(accept: str) -> bool:
    """Does ``Accept`` prefer application/json to text/html (RFC 9110 §12.5.1)?

    Ties go to HTML, so browsers and an empty field get the page.
    """
    return media_type_weight(accept, "application/json") > media_type_weight(accept, "text/html")
