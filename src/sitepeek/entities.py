"""Prepared responses for files: validators, header bytes and small bodies, cached.

An :class:`Entity` is one version of one file, identified by its device, inode,
modification and change times and size. Everything per-request work would otherwise
recompute (MIME type, ETag, Last-Modified, formatted header fields) is computed once per
version. Small bodies are kept too, so a hot small file costs one ``lstat`` (done by
the resolver anyway) and one ``send``.

A cached entity is served only when the file on disk still has the same identity, so
a changed file is never served stale, with or without a watcher.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from typing import NamedTuple

from sitepeek import inject
from sitepeek.representation import content_type, http_date, should_compress, strong_etag

# Bodies up to this size are read into memory (and sent in one write with the head);
# larger ones are sent with sendfile from an open descriptor.
SMALL_BODY = 64 * 1024
# HTML up to this size is read whole to inject the live reload client.
MAX_INJECT = 16 * 1024 * 1024
_READ_ATTEMPTS = 10


class FileVersion(NamedTuple):
    """One version of one file as ``stat`` sees it: the one file-version type.

    ctime catches rewrites that restore mtime (cp -p, rsync -t, touch -r). A plain
    tuple of the same five stat fields compares equal, which the per-request checks
    use (building a tuple is cheaper than building a named one).
    """

    dev: int
    ino: int
    mtime_ns: int
    ctime_ns: int
    size: int

    @property
    def content(self) -> tuple[int, int, int, int]:
        """The part that changes when the bytes change (see :func:`content_identity`)."""
        return (self.dev, self.ino, self.mtime_ns, self.size)


Identity = FileVersion  # (the name the rest of the code uses for it)


class FileChanged(Exception):
    """The file kept changing while it was read; no consistent version was seen."""


def identity(st: os.stat_result) -> FileVersion:
    return FileVersion(st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def content_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What changes when the bytes of an open file change, and only then.

    ``FileVersion.content`` of the same stat. Unlike :func:`identity` it leaves out
    ctime, which also moves when the file is merely unlinked or renamed away (an
    atomic save of a new version): the open descriptor still reads the old, intact
    bytes then.
    """
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass(frozen=True, slots=True)
class Entity:
    """One version of one file, ready to serve."""

    identity: Identity
    size: int
    etag: str
    last_modified: int
    content_type: str
    # "Content-Type … Accept-Ranges" header lines of a 200/206, CRLF-terminated.
    fields: bytes
    # The fields a 304 repeats (RFC 9110 §15.4.5): validators and Cache-Control.
    validator_fields: bytes
    body: bytes | None  # None for files larger than SMALL_BODY
    # Worth compressing (and compression is on): responses carry Vary: Accept-Encoding.
    compressible: bool = False
    # The body is not the file's bytes (the reload client was injected).
    transformed: bool = False


def is_html(path: str) -> bool:
    return content_type(path).startswith("text/html")


def load(
    path: str,
    fd: int,
    st: os.stat_result,
    snippet: bytes | None = None,
    compress: bool = False,
) -> tuple[Entity, os.stat_result]:
    """Build the entity for the open file ``fd``; reads the body when it is small.

    With ``snippet`` (the live reload script tag), an HTML file up to MAX_INJECT bytes
    is read whole and the snippet injected; its ETag differs from the plain file's.
    Returns the entity and the stat it describes. Reading ``size + 1`` bytes detects a
    file that grew or shrank after ``fstat``; then it is stat'ed and read again.
    """
    inject_into = snippet is not None and is_html(path)
    for _ in range(_READ_ATTEMPTS):
        body = None
        if st.st_size <= SMALL_BODY or (inject_into and st.st_size <= MAX_INJECT):
            body = _read_all(fd, st.st_size + 1)
            after = os.fstat(fd)
            if len(body) != st.st_size or content_identity(after) != content_identity(st):
                st = after  # rewritten while we read: read the new version again
                continue
        if inject_into and body is not None and snippet is not None:
            injected = inject.inject(body, snippet)
            return _build(path, st, injected, compress, injected=snippet), st
        return _build(path, st, body, compress), st
    raise FileChanged(path)


def from_bytes(name: str, data: bytes, compress: bool = False, immutable: bool = False) -> Entity:
    """An entity for content that is not a file (sitepeek's own assets).

    ``immutable``: served under a URL that changes with the content, so browsers may
    keep it for good (RFC 8246) instead of revalidating it on every page load.
    """
    digest = hashlib.blake2b(data, digest_size=8).hexdigest()
    ctype = content_type(name)
    compressible = compress and should_compress(ctype, len(data))
    etag = f'"{digest}"'
    cache = _IMMUTABLE if immutable else _NO_CACHE
    fields, validator_fields = header_fields(ctype, etag, None, compressible, None, cache)
    return Entity(
        identity=FileVersion(0, 0, 0, 0, len(data)),
        size=len(data),
        etag=etag,
        last_modified=0,
        content_type=ctype,
        fields=fields,
        validator_fields=validator_fields,
        body=data,
        compressible=compressible,
        transformed=True,
    )


_NO_CACHE = "no-cache"  # dev-friendly: the browser revalidates every time
_IMMUTABLE = "public, max-age=31536000, immutable"


def header_fields(
    ctype: str,
    etag: str,
    last_modified: int | None,
    vary: bool,
    coding: str | None = None,
    cache_control: str = _NO_CACHE,
) -> tuple[bytes, bytes]:
    """The header lines of a 200/206 and of a 304 (RFC 9110 §15.4.5) for one variant."""
    validators = f"ETag: {etag}\r\n"
    if last_modified is not None:
        validators += f"Last-Modified: {http_date(last_modified)}\r\n"
    validators += f"Cache-Control: {cache_control}\r\n"
    if vary:
        validators += "Vary: Accept-Encoding\r\n"
    encoding = f"Content-Encoding: {coding}\r\n" if coding else ""
    fields = f"Content-Type: {ctype}\r\n{encoding}{validators}Accept-Ranges: bytes\r\n"
    return fields.encode("latin-1"), validators.encode("latin-1")


def _read_all(fd: int, limit: int) -> bytes:
    chunks = []
    offset = 0
    while offset < limit:
        chunk = os.pread(fd, limit - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def injected_validators(snippet: bytes) -> tuple[str, int]:
    """(ETag suffix, modification time) of an injection: what a page's validators add.

    A page with the reload client injected is the file plus the snippet, so its
    validators change when either does (RFC 9110 §8.8.3): after an upgrade of sitepeek
    the snippet's ``reload.js?v=`` changes, and a tab revalidating with the old ETag or
    date must get the new page, not a 304 that keeps the old script.
    """
    digest = hashlib.blake2b(snippet, digest_size=4).hexdigest()
    return f"-r{digest}", _injection_modified()


@functools.cache
def _injection_modified() -> int:
    """The newest modification time (seconds) of what makes the injected snippet: the
    reload client and the modules that write its tag. 0 when they are not files."""
    package = resources.files("sitepeek")
    newest = 0
    for name in ("assets/reload.js", "inject.py", "livereload.py"):
        try:
            newest = max(newest, int(os.stat(str(package.joinpath(name))).st_mtime))
        except (OSError, TypeError):
            continue
    return newest


def _build(
    path: str,
    st: os.stat_result,
    body: bytes | None,
    compress: bool,
    injected: bytes | None = None,
) -> Entity:
    size = st.st_size if body is None else len(body)
    etag = strong_etag(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    last_modified = int(st.st_mtime)
    if injected is not None:  # not the file's bytes: never the file's validators
        suffix, injection_modified = injected_validators(injected)
        etag = etag[:-1] + suffix + '"'
        last_modified = max(last_modified, injection_modified)
    ctype = content_type(path)
    compressible = compress and should_compress(ctype, size)
    fields, validator_fields = header_fields(ctype, etag, last_modified, vary=compressible)
    return Entity(
        identity=identity(st),
        size=size,
        etag=etag,
        last_modified=last_modified,
        content_type=ctype,
        fields=fields,
        validator_fields=validator_fields,
        body=body,
        compressible=compressible,
        transformed=injected is not None,
    )


class EntityCache:
    """A bounded LRU of entities (with their bodies when small), keyed by real path."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024, max_entries: int = 4096) -> None:
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._entries: OrderedDict[str, Entity] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # never contended long; safe under gevent too

    def get(self, path: str, st: os.stat_result) -> Entity | None:
        """The cached entity for ``path`` if it is still this version of the file."""
        entity = self._entries.get(path)
        if entity is None or entity.identity != (
            st.st_dev,
            st.st_ino,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_size,
        ):
            return None
        with self._lock:
            if path in self._entries:
                self._entries.move_to_end(path)
        return entity

    def put(self, path: str, entity: Entity) -> None:
        """Keep ``entity``; one without a body (a large file) costs only its metadata."""
        size = len(entity.body) if entity.body is not None else 0
        if size > self._max_bytes:
            return
        with self._lock:
            old = self._entries.pop(path, None)
            if old is not None and old.body is not None:
                self._bytes -= len(old.body)
            self._entries[path] = entity
            self._bytes += size
            while self._bytes > self._max_bytes or len(self._entries) > self._max_entries:
                _, evicted = self._entries.popitem(last=False)
                if evicted.body is not None:
                    self._bytes -= len(evicted.body)
