"""Map the path of a request URL to what should be served.

Pure path logic plus ``os.stat``/``os.lstat``/``os.path.realpath``: no HTTP framing, no
file reads. The handler turns each :data:`Resolution` into a status and headers.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import stat
from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias
from urllib.parse import quote, unquote_to_bytes

__all__ = [
    "BadPath",
    "File",
    "Forbidden",
    "NotFound",
    "Redirect",
    "Resolution",
    "Resolver",
]

# RFC 3986 §2.1: pct-encoded = "%" HEXDIG HEXDIG; any other "%" is malformed.
_MALFORMED_PCT_ENCODED = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Never valid raw in a path (RFC 3986 §3.3): controls, space, DEL, non-ASCII, and the "?"
# and "#" that end a path. Other printable ASCII ("|", "^", "\\") is tolerated because
# clients send it unescaped; the per-segment rules below judge it.
_NOT_PATH_CHAR = re.compile(r"[^\x21-\x7e]|[?#]")
# A query we echo into a Location: printable ASCII without "#" (RFC 3986 §3.4 query
# characters are a subset), so it can neither inject a header nor add a fragment.
_SAFE_QUERY = re.compile(r"[\x21\x22\x24-\x7e]*")
# A Location must be an absolute path: "//" or "/\" would be read by browsers as another
# host (the open redirect of CVE-2021-28861).
_ABSOLUTE_PATH_LOCATION = re.compile(r"/(?![/\\])[\x21\x22\x24-\x7e]*")
# RFC 3986 §3.3 pchar minus pct-encoded, minus ALPHA / DIGIT (which quote keeps anyway).
_PCHAR_SAFE = "!$&'()*+,;=:@-._~"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_WELL_KNOWN = ".well-known"  # RFC 8615: the one dot-directory a site may publish


@dataclass(frozen=True, slots=True)
class File:
    """A regular file inside the root; ``fs_path`` is its absolute real path.

    ``stat`` is what the resolver saw; the handler uses it only to find a cached
    response for exactly this version of the file, and otherwise trusts ``fstat`` of
    the descriptor it opens.
    """

    fs_path: str
    stat: os.stat_result | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Redirect:
    """Send the client to ``location``, an absolute path on this server."""

    location: str
    status: int = 301

    def __post_init__(self) -> None:
        if not _ABSOLUTE_PATH_LOCATION.fullmatch(self.location):
            raise ValueError(f"redirect location is not a safe absolute path: {self.location!r}")
        if self.status not in _REDIRECT_STATUSES:
            raise ValueError(f"not a redirect status: {self.status}")


@dataclass(frozen=True, slots=True)
class NotFound:
    """Nothing servable at this path (missing, hidden, outside the root, not a file)."""


@dataclass(frozen=True, slots=True)
class Forbidden:
    """The file system denied access."""


@dataclass(frozen=True, slots=True)
class BadPath:
    """The path is malformed; the server answers 400."""

    reason: str


Resolution: TypeAlias = File | Redirect | NotFound | Forbidden | BadPath


class _UrlPath(NamedTuple):
    """A decoded, normalised URL path."""

    segments: tuple[str, ...]
    trailing_slash: bool


class Resolver:
    """Resolve URL paths against one document root."""

    __slots__ = ("_index_names", "_root", "_root_prefix")

    def __init__(
        self,
        root: str | os.PathLike[str],
        index_names: tuple[str, ...] = ("index.html", "index.htm"),
    ) -> None:
        real_root = os.path.realpath(os.fspath(root))
        if not os.path.isdir(real_root):
            raise NotADirectoryError(errno.ENOTDIR, "document root is not a directory", real_root)
        for name in index_names:
            if name in ("", ".", "..") or "/" in name or os.sep in name or "\x00" in name:
                raise ValueError(f"index name must be a plain file name: {name!r}")
        self._root = real_root
        # Containment compares whole components: "/srv/site2" is not inside "/srv/site".
        self._root_prefix = real_root if real_root.endswith(os.sep) else real_root + os.sep
        self._index_names = tuple(index_names)

    @property
    def root(self) -> str:
        """The real path of the document root."""
        return self._root

    def resolve(self, raw_path: str, query: str | None = None) -> Resolution:
        """Resolve ``raw_path`` (percent-encoded, as on the wire); ``query`` has no "?"."""
        url = _parse(raw_path)
        if isinstance(url, BadPath | NotFound):
            return url
        try:
            found = self._walk(url.segments)
        except PermissionError:
            return Forbidden()
        except (OSError, ValueError):  # ENOENT, ENOTDIR, ENAMETOOLONG, ELOOP, ...
            return NotFound()
        if found is None:
            return NotFound()
        real, st = found
        if stat.S_ISDIR(st.st_mode):
            if not url.trailing_slash:
                # Relative links in the index resolve against the directory only with "/".
                return Redirect(_location(url.segments, query))
            return self._directory(real)
        if stat.S_ISREG(st.st_mode) and not url.trailing_slash:
            return File(real, st)
        # FIFOs (which would hang the reader), sockets, devices, and "file/".
        return NotFound()

    def _walk(self, segments: tuple[str, ...]) -> tuple[str, os.stat_result] | None:
        """The real path and stat of root/segments, or None if it leaves the root.

        One lstat per segment: a path without symlinks below the (real) root is already
        real and contained, so ``realpath`` is needed only where a symlink is met.
        """
        path = self._root
        if not segments:
            return path, os.stat(path)
        for segment in segments:
            path = f"{path}/{segment}" if path != "/" else f"/{segment}"
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                path = os.path.realpath(path)
                if not self._contains(path):
                    return None
                st = os.stat(path)
        return path, st

    def _directory(self, real_dir: str) -> Resolution:
        """Serve the first index file of a directory."""
        for name in self._index_names:
            found = self._index_file(os.path.join(real_dir, name))
            if found is not None:
                return found
        # Directory listings will return Listing(real_dir) here.
        return NotFound()

    def _index_file(self, path: str) -> File | Forbidden | None:
        """Return ``path`` if it is a regular file inside the root (symlinks followed)."""
        try:
            # ``path`` is already real unless its last component is a symlink: one lstat
            # usually settles it, without a full realpath walk.
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                path = os.path.realpath(path)
                if not self._contains(path):
                    return None
                st = os.stat(path)
        except PermissionError:
            return Forbidden()
        except (OSError, ValueError):
            return None
        return File(path, st) if stat.S_ISREG(st.st_mode) else None

    def _contains(self, real_path: str) -> bool:
        """Is ``real_path`` the root or below it (the prefix ends with a separator)?"""
        return real_path == self._root or real_path.startswith(self._root_prefix)


@functools.lru_cache(maxsize=4096)
def _parse(raw_path: str) -> _UrlPath | BadPath | NotFound:
    """Decode and normalise a raw URL path, or say why it cannot name a file."""
    if not raw_path.startswith("/"):
        return BadPath("path must start with '/'")
    if _NOT_PATH_CHAR.search(raw_path):
        return BadPath("character not allowed in a URL path")
    if _MALFORMED_PCT_ENCODED.search(raw_path):
        return BadPath("malformed percent-encoding")
    # Split before decoding, so "%2F" stays inside its segment and never separates.
    decoded: list[str] = []
    for raw_segment in raw_path[1:].split("/"):
        segment = _decode_segment(raw_segment)
        if isinstance(segment, BadPath):
            return segment
        decoded.append(segment)
    segments = _remove_dot_segments(decoded)
    if isinstance(segments, BadPath):
        return segments
    if any("/" in segment or "\\" in segment for segment in decoded):
        # A decoded "/" or a Windows separator never names a file here.
        return NotFound()
    if any(_is_hidden(i, segment) for i, segment in enumerate(segments)):
        return NotFound()
    # RFC 3986 §5.2.4 leaves a trailing "/" after a final "." or ".." ("/a/b/.." -> "/a/").
    return _UrlPath(tuple(segments), trailing_slash=decoded[-1] in ("", ".", ".."))


def _decode_segment(raw_segment: str) -> str | BadPath:
    """Percent-decode one segment (exactly once) as strict UTF-8."""
    if "%" not in raw_segment:
        return raw_segment
    try:
        # Strict UTF-8 rejects overlong forms ("%c0%ae" for ".") and encoded surrogates.
        segment = unquote_to_bytes(raw_segment).decode("utf-8")
    except UnicodeDecodeError:
        return BadPath("percent-encoded bytes are not valid UTF-8")
    if "\x00" in segment:
        return BadPath("NUL in path")
    return segment


def _remove_dot_segments(segments: list[str]) -> list[str] | BadPath:
    """Resolve "." and ".." as RFC 3986 §5.2.4 does, after merging empty segments.

    Where RFC 3986 silently drops a ".." above the root (as http.server does), we reject
    it: such a path is an attack or a bug, never a link on the site.
    """
    out: list[str] = []
    for segment in segments:
        if segment in ("", "."):
            continue
        if segment == "..":
            if not out:
                return BadPath("path climbs above the root")
            out.pop()
        else:
            out.append(segment)
    return out


def _is_hidden(index: int, segment: str) -> bool:
    """Dotfiles are private, except a top-level /.well-known/ (RFC 8615)."""
    return segment.startswith(".") and not (index == 0 and segment == _WELL_KNOWN)


def _location(segments: tuple[str, ...], query: str | None) -> str:
    """Build the redirect target: the normalised directory path with a trailing "/"."""
    location = "/" + "".join(quote(segment, safe=_PCHAR_SAFE) + "/" for segment in segments)
    if query is not None and _SAFE_QUERY.fullmatch(query):
        location += "?" + query
    return location
