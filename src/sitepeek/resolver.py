"""Map the path of a request URL to what should be served.

Pure path logic plus ``os.stat``/``os.lstat``/``os.path.realpath``: no HTTP framing, no
file reads. The handler turns each :data:`Resolution` into a status and headers.

Clean URLs (``clean_urls=True``, the default) mirror Netlify and Cloudflare Pages where
they agree: ``/about`` serves ``about.html`` when nothing named ``about`` exists, and a
page wins over a directory of the same name. Where the two hosts disagree we follow
Cloudflare for ``/about/`` (a directory with an index serves it; Netlify redirects to the
page) and Netlify, GitHub Pages and Vercel for ``/about.html`` (served as is, so the
links of a site built for a host without pretty URLs keep working; Cloudflare redirects
it, which ``redirect_html=True`` reproduces). For each state of the directory:

=================  ===============  ================  ===============
state              ``/about``       ``/about/``       ``/about.html``
=================  ===============  ================  ===============
nothing            404              404               404
about.html         about.html       308 ``/about``    about.html [1]_
about              about            404               404
about, about.html  about            404               about.html
about/index.html   301 ``/about/``  about/index.html  404
+ about.html       about.html       about/index.html  about.html [1]_
about/ (no index)  301 ``/about/``  listing [2]_      404
+ about.html       about.html       308 ``/about``    about.html [1]_
=================  ===============  ================  ===============

.. [1] With ``redirect_html=True``: 308 to ``/about``, which serves about.html. The
   redirect is made only when the target resolves to this very file, so it can never
   loop; likewise ``/about/index.html`` -> 308 ``/about/``.
.. [2] ``Listing`` when ``listing=True`` (the default), else 404.

Why one module of this size: decoding, confinement (symlinks included) and the table
above must agree on every path, and hypothesis checks them as one function.

Every redirect's target resolves to a non-redirect (a test follows them for every
state). With ``clean_urls=False`` the ``about.html`` rows behave as their rows without
it, except ``/about.html`` itself. The directory redirect keeps its historic 301 (nginx,
Apache, GitHub Pages); the clean-URL canonicalisations use 308 as Cloudflare Pages does.
An existing file costs what it did before: the clean-URL lookups run only on misses,
on directories and, with ``redirect_html``, on ``.html`` files.

``spa_eligible``, ``strip_base`` and ``normalise_base`` are pure helpers the handler
applies around :meth:`Resolver.resolve`; ``media_type_weight`` is the ``Accept`` parser
they and :mod:`sitepeek.listing` share.
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

from sitepeek.http11 import TOKEN
from sitepeek.qvalues import Weighted, weighted_elements
from sitepeek.representation import is_asset_name

__all__ = [
    "BadPath",
    "File",
    "Forbidden",
    "Listing",
    "NotFound",
    "Redirect",
    "Resolution",
    "Resolver",
    "media_type_weight",
    "normalise_base",
    "spa_eligible",
    "strip_base",
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
# A base path segment: RFC 3986 §3.3 segment-nz without pct-encoded, so the literal
# prefix test of strip_base matches what browsers send (they never encode these).
_BASE_SEGMENT = re.compile(r"[A-Za-z0-9!$&'()*+,;=:@\-._~]+")
# RFC 9110 §5.6.2 token (the type and subtype of a media range, §12.5.1).
_TOKEN = TOKEN
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_WELL_KNOWN = ".well-known"  # RFC 8615: the one dot-directory a site may publish
# sitepeek's own URLs (livereload.PREFIX is "/" + this + "/"); never a page of the site.
_INTERNAL_SEGMENT = "__sitepeek__"
_HTML_SUFFIX = ".html"
# The directory redirect keeps the 301 of nginx, Apache and GitHub Pages; clean-URL
# canonicalisations use Cloudflare Pages' 308.
_DIRECTORY_REDIRECT = 301
_CLEAN_URL_REDIRECT = 308


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
class Listing:
    """A directory without an index file, to be listed (``listing=True``).

    ``fs_path`` is the directory's absolute real path, for :func:`sitepeek.listing.scan`;
    ``url_path`` is its canonical URL path, percent-encoded, with a trailing "/" ("/"
    for the root).
    """

    fs_path: str
    url_path: str


@dataclass(frozen=True, slots=True)
class Redirect:
    """Send the client to ``location``, an absolute path on this server."""

    location: str
    status: int = _DIRECTORY_REDIRECT

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


Resolution: TypeAlias = File | Listing | Redirect | NotFound | Forbidden | BadPath


class _UrlPath(NamedTuple):
    """A decoded, normalised URL path."""

    segments: tuple[str, ...]
    trailing_slash: bool


class Resolver:
    """Resolve URL paths against one document root."""

    __slots__ = (
        "_clean_urls",
        "_index_names",
        "_listing",
        "_redirect_html",
        "_root",
        "_root_prefix",
    )

    def __init__(
        self,
        root: str | os.PathLike[str],
        index_names: tuple[str, ...] = ("index.html", "index.htm"),
        *,
        clean_urls: bool = True,
        listing: bool = True,
        redirect_html: bool = False,
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
        self._clean_urls = clean_urls
        self._listing = listing
        self._redirect_html = redirect_html

    @property
    def root(self) -> str:
        """The real path of the document root."""
        return self._root

    def resolve(self, raw_path: str, query: str | None = None) -> Resolution:
        """Resolve ``raw_path`` (percent-encoded, as on the wire); ``query`` has no "?"."""
        url = _parse(raw_path)
        if isinstance(url, BadPath | NotFound):
            return url
        return self._resolve(url, query)

    def resolve_file(self, relative: str) -> File | None:
        """Resolve a root-relative file name from the configuration (``--spa FILE``,
        ``404.html``): a regular file inside the root, or None.

        ``relative`` is a file-system name, not a URL: no percent-decoding. Leading "/",
        empty and "." segments are ignored; "..", dotfiles (except a top-level
        ``.well-known``), NUL and backslashes give None, as do a missing, unreadable or
        non-regular file and a symlink leaving the root.
        """
        if "\x00" in relative or "\\" in relative:
            return None
        segments: list[str] = []
        for segment in relative.split("/"):
            if segment in ("", "."):
                continue
            if segment == ".." or _is_hidden(len(segments), segment):
                return None
            segments.append(segment)
        if not segments:
            return None
        try:
            found = self._walk(tuple(segments))
        except (OSError, ValueError):
            return None
        if found is None or not stat.S_ISREG(found[1].st_mode):
            return None
        return File(*found)

    def _resolve(self, url: _UrlPath, query: str | None) -> Resolution:
        try:
            found = self._walk(url.segments)
        except FileNotFoundError:
            return self._clean_url(url, query)
        except PermissionError:
            return Forbidden()
        except (OSError, ValueError):  # ENOTDIR, ENAMETOOLONG, ELOOP, ...
            return NotFound()
        if found is None:
            return NotFound()
        real, st = found
        if stat.S_ISDIR(st.st_mode):
            if not url.trailing_slash:
                # A page wins over a directory of the same name (Netlify and Cloudflare).
                page = self._html_sibling(url.segments)
                if isinstance(page, File):
                    return page
                # Relative links in the index resolve against the directory only with "/".
                return Redirect(_location(url.segments, query))
            return self._directory(real, url, query)
        if stat.S_ISREG(st.st_mode) and not url.trailing_slash:
            if self._redirect_html:
                canonical = self._canonical_redirect(url, real, query)
                if canonical is not None:
                    return canonical
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

    def _directory(self, real_dir: str, url: _UrlPath, query: str | None) -> Resolution:
        """Serve the first index file of a directory; else its page, listing or 404."""
        for name in self._index_names:
            found = self._index_file(os.path.join(real_dir, name))
            if found is not None:
                return found
        # "/about/" names the page about.html when the directory has no index: both
        # Netlify and Cloudflare Pages redirect there, and "/about" serves the page.
        if isinstance(self._html_sibling(url.segments), File):
            return Redirect(_location(url.segments, query, slash=False), _CLEAN_URL_REDIRECT)
        if self._listing:
            return Listing(real_dir, _location(url.segments, None))
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

    def _clean_url(self, url: _UrlPath, query: str | None) -> Resolution:
        """Nothing is named like the last segment: "/about" may mean about.html."""
        page = self._html_sibling(url.segments)
        if not isinstance(page, File):
            return page
        if url.trailing_slash:
            return Redirect(_location(url.segments, query, slash=False), _CLEAN_URL_REDIRECT)
        return page

    def _html_sibling(self, segments: tuple[str, ...]) -> File | NotFound | Forbidden:
        """The page "<last segment>.html" next to the last segment, if clean URLs apply.

        The one place that decides whether "/about" is about.html: the redirects to
        "/about" are made only when this finds the page, which is what keeps them from
        looping.
        """
        if not self._clean_urls or not segments or segments[-1].endswith(_HTML_SUFFIX):
            return NotFound()
        try:
            found = self._walk((*segments[:-1], segments[-1] + _HTML_SUFFIX))
        except PermissionError:
            return Forbidden()
        except (OSError, ValueError):
            return NotFound()
        if found is None or not stat.S_ISREG(found[1].st_mode):
            return NotFound()
        return File(*found)

    def _canonical_redirect(self, url: _UrlPath, real: str, query: str | None) -> Redirect | None:
        """Cloudflare's "/about.html" -> "/about" and "/about/index.html" -> "/about/".

        Only when the shorter URL resolves to this very file, so the target is never a
        redirect and a name that means something else ("about" is a file) is left alone.
        """
        parent, name = url.segments[:-1], url.segments[-1]
        stem = name.removesuffix(_HTML_SUFFIX)
        if name in self._index_names:
            target, slash = _UrlPath(parent, trailing_slash=True), True
        elif stem != name and not stem.endswith(_HTML_SUFFIX):
            target, slash = _UrlPath((*parent, stem), trailing_slash=False), False
        else:
            return None
        if self._resolve(target, None) != File(real):
            return None
        return Redirect(_location(target.segments, query, slash=slash), _CLEAN_URL_REDIRECT)

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


def _location(segments: tuple[str, ...], query: str | None, *, slash: bool = True) -> str:
    """Build a redirect target from normalised segments, by default with a trailing "/"."""
    location = "/" + "/".join(quote(segment, safe=_PCHAR_SAFE) for segment in segments)
    if slash and segments:
        location += "/"
    if query is not None and _SAFE_QUERY.fullmatch(query):
        location += "?" + query
    return location


# --------------------------------------------------------------------------- SPA fallback


def spa_eligible(raw_path: str, method: str, accept: str) -> bool:
    """May a miss at ``raw_path`` be answered with the single-page app's HTML file?

    Only for a GET or HEAD whose ``Accept`` allows text/html (an empty field counts as
    "*/*"), and a path that looks like an app route: a valid path whose last segment
    is not named like an asset, that is, does not end in the extension of a type in
    sitepeek's Content-Type table other than HTML (``/app.js``, ``/logo.png`` and
    ``/data.json`` stay 404s a developer can see; ``/users/john.doe``, ``/v1.2`` and
    ``/about.html`` get the app), with no dot-segments or dotfiles (which covers
    ``/.well-known/``), and outside sitepeek's own ``/__sitepeek__/``.
    """
    if method not in ("GET", "HEAD") or media_type_weight(accept, "text/html") == 0:
        return False
    return _is_app_route(raw_path)


@functools.lru_cache(maxsize=1024)
def _is_app_route(raw_path: str) -> bool:
    url = _parse(raw_path)
    if not isinstance(url, _UrlPath):
        return False  # malformed, hidden, or a decoded separator
    if url.segments and url.segments[0].lower() == _INTERNAL_SEGMENT:
        return False
    last = ""
    for raw_segment in raw_path[1:].split("/"):
        segment = _decode_segment(raw_segment)
        if isinstance(segment, BadPath) or segment.startswith("."):
            return False  # ".", "..", dotfiles, .well-known
        last = segment
    return not is_asset_name(last)


def media_type_weight(accept: str, media_type: str) -> int:
    """How much an ``Accept`` field wants ``media_type``, in thousandths (0..1000).

    RFC 9110 §12.5.1: the most specific matching range decides (``text/html`` over
    ``text/*`` over ``*/*``); an absent or blank field, or one in which no element
    parses, counts as ``*/*``. Media-type parameters are not compared: of several
    ranges equally specific (``text/html;level=1;q=0, text/html``), the highest weight
    wins, since a parameter refuses only one flavour. Elements with a malformed
    range or qvalue are ignored, as if absent. Never raises.
    """
    wanted_type, _, wanted_subtype = media_type.lower().partition("/")
    best: dict[int, int] = {}  # specificity (2 exact, 1 type/*, 0 */*) -> weight
    parsed_any = False
    for element in weighted_elements(accept):
        parsed = _media_range(element)
        if parsed is None:
            continue
        parsed_any = True
        range_type, range_subtype, weight = parsed
        if range_type == "*":
            specificity = 0
        elif range_type != wanted_type:
            continue
        elif range_subtype == "*":
            specificity = 1
        elif range_subtype == wanted_subtype:
            specificity = 2
        else:
            continue
        best[specificity] = max(weight, best.get(specificity, 0))
    if not parsed_any:
        return 1000
    return best[max(best)] if best else 0


def _media_range(element: Weighted) -> tuple[str, str, int] | None:
    """The ``media-range`` of one element (RFC 9110 §12.5.1) and its weight, or None.

    Its parameters are not compared (see media_type_weight), and what follows the
    weight is ignored (RFC 7231's accept-ext, which clients may still send)."""
    range_type, slash, range_subtype = element.value.partition("/")
    if not (slash and _TOKEN.fullmatch(range_type) and _TOKEN.fullmatch(range_subtype)):
        return None
    if range_type == "*" and range_subtype != "*":
        return None
    return range_type.lower(), range_subtype.lower(), element.weight


# --------------------------------------------------------------------------- base path


def normalise_base(base: str) -> str:
    """The canonical form of a ``--base`` path: "repo", "/repo", "/repo/" -> "/repo/".

    "" and "/" give "/" (no base). Raises ValueError for empty, "." or ".." segments,
    sitepeek's own ``__sitepeek__``, and any character outside an RFC 3986 path
    segment (space, "%", "?", "#", "\\", non-ASCII...): a base is matched literally.
    """
    inner = base.strip("/")
    if not inner:
        return "/"
    segments = inner.split("/")
    for segment in segments:
        if segment in (".", "..") or not _BASE_SEGMENT.fullmatch(segment):
            raise ValueError(f"not a valid base path: {base!r}")
    if segments[0].lower() == _INTERNAL_SEGMENT:
        raise ValueError(f"base path collides with sitepeek's own URLs: {base!r}")
    return "/" + "/".join(segments) + "/"


def strip_base(raw_path: str, base: str) -> str | None:
    """The path below ``base`` (as :func:`normalise_base` returns it): "/repo/x" -> "/x".

    None for every path outside the base, "/repo" included (the handler redirects it,
    and "/", to the base). A base of "/" returns ``raw_path`` unchanged.
    """
    if base == "/":
        return raw_path
    if raw_path.startswith(base):
        return raw_path[len(base) - 1 :]
    return None
