"""What one build means for one open tab: reload it, swap its stylesheets, refresh its
images in place, or leave it alone.

Each tab's reload client reports the URLs it loaded: its page (with the page's status)
and the resources the page fetched, as the browser's Performance API lists them. A build
reloads the tab only if its page or one of its resources changed. A tab that has not
reported (yet: it opened a moment ago, or its browser lacks the Performance API) is told
to swap the stylesheets or refresh the images of a build that changed only those, and its
client reloads if it shows none of them; any other build reloads it. So are tabs whose
page is not plainly one file (a 404 page, a directory listing, a rewrite): any change may
alter those. Pure functions and a plain record; :mod:`sitepeek.livereload` keeps one
:class:`TabReport` per reload socket.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["MAX_URLS", "Action", "Decision", "TabReport", "decide", "files_for"]

Action = Literal["reload", "css", "images", "none"]
MAX_URLS = 5_000  # per tab; a tab that loaded more is treated as one that did not say
RULE_FILES = frozenset({"_redirects", "_headers"})  # change what any URL answers
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".avif", ".svg", ".ico", ".bmp")
_INDEX_NAMES = ("index.html", "index.htm")  # as the resolver's


@dataclass(slots=True)
class TabReport:
    """What one tab said it loaded: decoded URL paths, without query or fragment."""

    page: str | None = None
    status: int = 0  # the page's HTTP status; 0 when the browser cannot tell
    resources: set[str] = field(default_factory=set)
    overflow: bool = False  # more than MAX_URLS reported: it cannot be tracked

    def add(self, page: object, status: object, urls: object) -> None:
        """Take one ``loaded`` message's fields; what has the wrong type is ignored."""
        if isinstance(page, str) and page.startswith("/"):
            self.page = page
        if isinstance(status, int) and 100 <= status <= 599:
            self.status = status
        if isinstance(urls, list):
            for url in urls:
                if isinstance(url, str) and url.startswith("/"):
                    self.resources.add(url)
            if len(self.resources) > MAX_URLS:
                self.overflow = True
                self.resources.clear()

    @property
    def count(self) -> int:
        return len(self.resources) + (self.page is not None)


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    files: tuple[str, ...] = ()  # the changed files this tab loaded


def files_for(url_path: str, base: str = "/") -> tuple[str, ...]:
    """The root-relative files that could answer ``url_path`` below the base path
    ``base`` (which ends with "/"): the file itself, its clean-URL and index forms."""
    if url_path == base.rstrip("/"):
        url_path = base
    if not url_path.startswith(base):
        return ()
    rel = url_path[len(base) :]
    if rel == "" or rel.endswith("/"):
        return tuple(rel + name for name in _INDEX_NAMES)
    return (rel, rel + ".html", rel + ".htm", *(f"{rel}/{name}" for name in _INDEX_NAMES))


def decide(
    tab: TabReport,
    changed: Sequence[str],
    base: str = "/",
    exists: Callable[[str], bool] | None = None,
) -> Decision:
    """What ``tab`` does for a build that changed ``changed`` (root-relative paths).

    ``exists(file)`` says whether a root-relative file exists now; without it every
    page counts as one that may not be a plain file (so the tab reloads).
    """
    if not changed:
        return Decision("none")
    if RULE_FILES.intersection(changed):
        return Decision("reload")
    if tab.page is None or tab.overflow:
        # A tab that has not said (yet) what it loaded: one opened a moment ago, or a
        # browser without the Performance API. Only its client knows whether it links
        # the changed stylesheets or shows the changed images; it reloads if it does not.
        return _in_place(tuple(changed)) or Decision("reload")
    page_files = files_for(tab.page, base)
    changed_set = set(changed)
    if changed_set.intersection(page_files):
        return Decision("reload")
    plain = exists is not None and any(exists(f) for f in page_files)
    if tab.status not in (0, 200) or not plain:
        return Decision("reload")  # a 404 page, a listing, a rewrite: anything may alter it
    loaded = {f for url in tab.resources for f in files_for(url, base)}
    hits = tuple(path for path in changed if path in loaded)
    if not hits:
        # A changed file outside the root (a --watch path) may feed any page.
        if any(os.path.isabs(path) for path in changed):
            return Decision("reload")
        return Decision("none")
    return _in_place(hits) or Decision("reload", hits)


def _in_place(files: tuple[str, ...]) -> Decision | None:
    """Swap or refresh ``files`` in place when they are all stylesheets or all images
    of the site's own (a file outside the root may feed any page); None otherwise."""
    if any(os.path.isabs(path) for path in files):
        return None
    lowered = [path.lower() for path in files]
    if all(path.endswith(".css") for path in lowered):
        return Decision("css", files)
    if all(path.endswith(IMAGE_SUFFIXES) for path in lowered):
        return Decision("images", files)
    return None
