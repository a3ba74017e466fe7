"""Whole responses to repeated requests, keyed by the request's exact bytes.

A browser asks for the same assets with the same bytes again and again (after every
live reload each one is revalidated with the same ``If-None-Match``), and a load
generator does nothing else. Answering such a request again costs parsing, resolving,
the rules, content negotiation and header formatting, all to produce the bytes sent
last time. This cache keeps those bytes together with everything they depend on, so a
repeated request costs a dictionary lookup, a few ``stat`` calls and one ``send``.

What an answer depends on, and how a hit checks it (synchronously: a change is seen by
the very next request, never only when the watcher reports it):

- the request: the key is its exact bytes (method, target, every header field), and
  only a request that arrived alone in one read, without a body, is a key. A parsed
  request has a second key, :func:`request_key`: what a file's answer can depend on
  (method, path, version, keep-alive, Host, Accept-Encoding and the validators), so
  requests that differ only in what a file's answer ignores (the query, a cookie, the
  User-Agent) share the answer made once per file version;
- the file: its identity (device, inode, mtime, ctime, size) from ``lstat``;
- the directories from the root down to the file, by (mtime, ctime): creating,
  removing or renaming any entry there (a new ``index.html``, a clean-URL sibling, a
  new precompressed sidecar, a swapped symlink) changes them (a file that has a
  sidecar is never cached: a sidecar rewritten in place changes no directory);
- the ``_redirects``/``_headers`` rules and the build gate;
- the Date header: the bytes are restamped when the second changes.

File system timestamps are coarse (one clock tick, or whole seconds on some file
systems): a change in the same tick as the state we captured would look like no
change. So nothing changed less than ``SETTLE_NS`` (whole-second timestamps:
``COARSE_SETTLE_NS``) before the request began is captured: a change made after that
moves a timestamp, and one made before it is in the answer.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from sitepeek import compression
from sitepeek.entities import Identity, identity
from sitepeek.http11 import Request
from sitepeek.responses import DateCache, without_overridden
from sitepeek.rules import RuleSet, RulesFile

SETTLE_NS = 50_000_000  # far above the coarsest kernel tick (10 ms at HZ=100)
COARSE_SETTLE_NS = 2_100_000_000  # FAT keeps mtimes in 2 s steps, ext3 in 1 s
MAX_RESPONSE = 256 * 1024  # larger responses are not worth a copy
BUDGET = 16 * 1024 * 1024  # all keys and responses together
DOORKEEPER = 1024 * 1024  # bytes of keys remembered from their first sighting
MAX_KEY = 8 * 1024  # a longer request head is not worth an entry

Version = tuple[int, int]  # (mtime_ns, ctime_ns) of a directory
Key = bytes | str  # a request's exact bytes, or its request_key()

# Fields that make a file's answer something other than the whole representation or a
# 304 (ranges, the other preconditions), or the request something else (an upgrade):
# such requests take the full path every time.
_PARTICULAR = frozenset({"range", "if-range", "if-match", "if-unmodified-since", "upgrade"})
_ABSENT = "\x00"  # (never in a field value: the parser refuses control characters)


def request_key(request: Request) -> str | None:
    """The key of the answers a file of the site gives ``request``, or None when it
    must take the full path.

    Everything the answer for a file found at the URL path depends on: the method,
    the path (not the query: a file's answer never depends on it, see
    :attr:`Candidate.alias`), the version and keep-alive (the Connection field),
    the Host (the host check), Accept-Encoding (the coding) and the validators
    (a 304 or not).
    """
    method = request.method
    if method not in ("GET", "HEAD") or request.has_body:
        return None
    headers = request.headers
    if not _PARTICULAR.isdisjoint(headers):
        return None
    get = headers.get
    return "\n".join(
        (
            method,
            request.path,
            request.version if request.keep_alive else request.version + " close",
            get("host", _ABSENT),
            get("accept-encoding", _ABSENT),
            get("if-none-match", _ABSENT),
            get("if-modified-since", _ABSENT),
        )
    )


@dataclass(slots=True, eq=False)
class Entry:
    """One cached answer: the bytes after the Date line, and what they depend on."""

    status_line: bytes  # b"HTTP/1.1 200 OK\r\n"
    keep_alive: bool
    version: str  # the request's HTTP version, for the Connection field
    rest: bytes  # every header line after Date/Server/Connection, the blank line, the body
    path: str  # the file's real path
    identity: Identity
    dirs: tuple[tuple[str, Version], ...]
    rules: RuleSet | None  # the rules in force (compared by identity)
    html: bool  # subject to the build gate
    method: str  # for the request log
    target: str
    overrides: frozenset[str]  # header names _headers/--header replace (see responses)
    # (second, whole response as sent in that second): replaced in one assignment.
    stamped: tuple[int, bytes] = (-1, b"")
    size: int = 0  # what the entry counts against the budget (set by HotCache.put)
    status: int = field(init=False)  # for the request log

    def __post_init__(self) -> None:
        self.status = int(self.status_line[9:12])


def capture(
    root: str, fs_path: str, logical_dir: str, expected: Identity, began_ns: int
) -> tuple[tuple[str, Version], ...] | None:
    """The directory versions an answer for ``fs_path`` depends on, or None when the
    answer must not be cached.

    ``logical_dir`` is the directory the URL path names (below the root, "" for the
    root itself); it must be the file's real directory, so that the directories
    checked are the ones the URL goes through (no symlinked directory on the way).
    ``expected`` is the identity of the file version the answer was made from, and
    ``began_ns`` the wall-clock time (``time.time_ns()``) before its request was
    resolved: anything changed after that (or too close before it) is refused, since
    the answer may not reflect it.
    """
    directory = os.path.dirname(fs_path)
    if directory != (root + logical_dir if root != "/" else logical_dir or "/"):
        return None
    try:
        st = os.lstat(fs_path)
        if not stat.S_ISREG(st.st_mode) or identity(st) != expected or not _settled(st, began_ns):
            return None
        dirs: list[tuple[str, Version]] = []
        while True:
            st = os.stat(directory)
            if not _settled(st, began_ns):
                return None
            dirs.append((directory, (st.st_mtime_ns, st.st_ctime_ns)))
            if directory == root:
                return tuple(dirs)
            parent = os.path.dirname(directory)
            if parent == directory or not parent.startswith(root):
                return None
            directory = parent
    except OSError:
        return None


def _settled(st: os.stat_result, began_ns: int) -> bool:
    for stamp in (st.st_mtime_ns, st.st_ctime_ns):
        coarse = stamp % 1_000_000_000 == 0  # whole seconds: a coarse file system
        if stamp > began_ns - (COARSE_SETTLE_NS if coarse else SETTLE_NS):
            return False
    return True


def fresh(entry: Entry, root_version: Version | None = None) -> bool:
    """Is the file, and every directory above it, as it was when ``entry`` was made?

    ``root_version`` is the root's version when the caller has just read it.
    """
    dirs = entry.dirs
    if root_version is not None:
        if root_version != dirs[-1][1]:
            return False
        dirs = dirs[:-1]
    try:
        for path, version in dirs:
            st = os.stat(path)
            if (st.st_mtime_ns, st.st_ctime_ns) != version:
                return False
        st = os.lstat(entry.path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size) == entry.identity


class HotCache:
    """Entries by request bytes, bounded by ``budget`` bytes (oldest entries go first).

    A request is worth an entry only once its bytes come back: the first time, only
    the key is remembered (in a bounded set), so requests that never repeat (a
    cache-busting query, a crawler) cost neither an entry nor the stats to make one.
    Lookups take no lock (one dict read); insertions do, so threads may share it.
    """

    def __init__(self, budget: int = BUDGET, doorkeeper: int = DOORKEEPER) -> None:
        self._entries: dict[Key, Entry] = {}
        self._budget = budget
        self._bytes = 0
        self._seen: set[Key] = set()
        self._seen_bytes = 0
        self._doorkeeper = doorkeeper
        self._lock = threading.Lock()
        self.get = self._entries.get

    def wanted(self, key: Key) -> bool:
        """Is ``key`` worth an entry (seen before)? Remembers it otherwise."""
        seen = self._seen
        if key in seen:
            return True
        if len(key) > MAX_KEY:
            return False
        if self._seen_bytes + len(key) > self._doorkeeper:
            seen.clear()
            self._seen_bytes = 0
        seen.add(key)
        self._seen_bytes += len(key)
        return False

    def put(self, key: Key, entry: Entry) -> None:
        # The bytes are held twice (``rest`` and the stamped response), plus the
        # entry's own objects; an entry under two keys counts twice.
        entry.size = 2 * len(entry.rest) + 600
        size = len(key) + entry.size
        if size > self._budget:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(key) + old.size
            while self._entries and self._bytes + size > self._budget:
                oldest = next(iter(self._entries))
                self._bytes -= len(oldest) + self._entries.pop(oldest).size
            self._entries[key] = entry
            self._bytes += size

    def clear(self) -> None:
        """Forget every entry (the keys seen once too)."""
        with self._lock:
            self._entries.clear()  # (in place: ``get`` is its bound method)
            self._bytes = 0
            self._seen.clear()
            self._seen_bytes = 0

    def discard(self, key: Key, entry: Entry) -> None:
        """Forget ``entry`` (found stale) unless it was replaced meanwhile."""
        with self._lock:
            if self._entries.get(key) is entry:
                del self._entries[key]
                self._bytes -= len(key) + entry.size


class Candidate(NamedTuple):
    """A request whose answer may be remembered: it names a file of the site, and its
    bytes arrived alone in one read or it has a :func:`request_key`. (A named tuple:
    one is made per request, and a frozen dataclass costs five times as much to build.)"""

    key: bytes | None  # the request's exact bytes
    # Its request_key(), when the answer cannot depend on the query: no rule in force
    # can apply to an existing file (see RuleSet.shadows_files).
    alias: str | None
    path: str  # the file's real path
    url_dir: str  # the URL path's directory, below the root ("" for the root)
    html: bool  # subject to the build gate
    rules: RuleSet | None
    began_ns: int  # time.time_ns() before the request was resolved


class HotAnswers:
    """The one seam between the connection code and the cache.

    :meth:`lookup` answers request bytes seen before, or says None; every check that
    an answer may be reused (the server is not stopping, the build gate is open for
    HTML, the rules are the same, the file and its directories are unchanged) is
    made inside it. :meth:`respond` makes the response bytes for an answer at hand
    and remembers them when they can be checked that cheaply later.
    """

    def __init__(
        self,
        root: str,
        dates: DateCache,
        rules: RulesFile | None,
        settled: Callable[[], bool] | None,
        sidecar_codings: tuple[str, ...],
    ) -> None:
        """``settled()``: False while a burst of changes is being written (the build
        gate, None without live reload); ``sidecar_codings``: the codings whose
        precompressed sidecar files may be served."""
        self._root = root
        self._dates = dates
        self._rules = rules
        self._settled = settled
        self._codings = sidecar_codings
        self._cache = HotCache()
        self.stopping = False  # set by the handler: answers must then say close

    def serve_from(self, root: str, rules: RulesFile | None) -> None:
        """Answers now come from ``root`` (a build's snapshot, or the served directory
        again) with its ``rules``: forget every answer made from the other one. An
        answer being made from it meanwhile is not remembered: :func:`capture` finds
        its file outside ``root``."""
        self._root = root
        self._rules = rules
        self._cache.clear()

    def lookup(self, key: Key) -> tuple[Entry, bytes] | None:
        """The entry for ``key`` and its response stamped now, if it may answer again."""
        entry = self._cache.get(key)
        if entry is None or self.stopping:
            return None
        if entry.html and self._settled is not None and not self._settled():
            return None  # a burst of changes is being written: the gate decides
        root_version = None
        rules = self._rules
        if rules is not None:
            # (New rules: a miss, and the full path reports their warnings.)
            current, root_version = rules.current_with_root()  # (one stat of the root)
            if current is not entry.rules or root_version is None:
                return None
        if fresh(entry, root_version):
            return entry, self.stamped(entry)
        self._cache.discard(key, entry)
        return None

    def respond(
        self,
        candidate: Candidate | None,
        status_line: bytes,
        keep_alive: bool,
        version: str,
        rest: bytes,
        file: Identity,
        compressible: bool,
        method: str,
        target: str,
        overrides: frozenset[str],
    ) -> bytes:
        """The response ``status_line`` + Date/Server/Connection + ``rest``, with the
        override rule applied; remembered for ``candidate`` (made from the file version
        ``file``) when it is worth it and can be checked cheaply."""
        keys: tuple[Key, ...] = ()
        if candidate is not None and not self.stopping and len(rest) <= MAX_RESPONSE:
            wanted = self._cache.wanted
            keys = tuple(
                key for key in (candidate.key, candidate.alias) if key is not None and wanted(key)
            )
        if not keys:
            response = status_line + self._dates.prefix(keep_alive, version) + rest
            return without_overridden(response, overrides) if overrides else response
        assert candidate is not None
        entry = Entry(
            status_line,
            keep_alive,
            version,
            rest,
            candidate.path,
            file,
            (),
            candidate.rules,
            candidate.html,
            method,
            target,
            overrides,
        )
        response = self.stamped(entry)
        if compressible and any(
            compression.has_sidecar(candidate.path, coding) for coding in self._codings
        ):
            return response  # a sidecar rewritten in place would change no directory
        dirs = capture(self._root, candidate.path, candidate.url_dir, file, candidate.began_ns)
        if dirs is not None:
            entry.dirs = dirs
            for key in keys:
                self._cache.put(key, entry)
        return response

    def stamped(self, entry: Entry) -> bytes:
        """The entry's response with this second's Date."""
        second, response = entry.stamped
        now = int(time.time())
        if second != now:
            response = (
                entry.status_line + self._dates.prefix(entry.keep_alive, entry.version) + entry.rest
            )
            if entry.overrides:
                response = without_overridden(response, entry.overrides)
            entry.stamped = (now, response)
        return response
