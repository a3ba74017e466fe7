"""Content codings: negotiation, precompressed sidecars, and a cache of compressed variants.

* :func:`negotiate` picks a content-coding from Accept-Encoding (RFC 9110 §12.5.3);
* :func:`find_sidecar` finds a precompressed ``app.js.br`` / ``.gz`` / ``.zst`` next to
  a file and accepts it only if it is a regular file, not older than the file, and does
  not lead out of the file's directory;
* :class:`VariantCache` compresses one version of a file (its :func:`entities.identity`)
  once, off the event loop, streaming big files through a spool directory, and keeps
  the result in a bounded LRU: in memory when small, on disk when large;
* :func:`variant_etag` gives each coding its own strong entity-tag (RFC 9110 §8.8.3).

Compression reads the descriptor the handler already opened and fstat'ed, never the
path, so a compressed body is always the version whose validators go with it.

Why one module of this size: negotiation, the codecs, sidecars and the variant cache
are one concept (content codings, RFC 9110 §8.4) with one notion of a file version.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import shutil
import stat
import tempfile
import threading
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sitepeek.entities import FileChanged
from sitepeek.http11 import TOKEN
from sitepeek.qvalues import weighted_elements
from sitepeek.representation import MIN_COMPRESS_SIZE as MIN_SIZE
from sitepeek.representation import should_compress

__all__ = [
    "AVAILABLE",
    "IDENTITY",
    "MIN_SIZE",
    "Variant",
    "VariantCache",
    "find_sidecar",
    "negotiate",
    "should_compress",
    "sidecar_suffix",
    "variant_etag",
]

IDENTITY = "identity"

# --------------------------------------------------------------------------- encoders


class _Encoder(Protocol):
    """A streaming compressor: zlib's compressobj interface."""

    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


def _optional_module(name: str) -> Any:
    # import_module keeps mypy out of optional packages that ship no stubs (brotli) or
    # are newer than our python_version (compression.zstd), installed or not.
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


_brotli = _optional_module("brotli")
_zstd_stdlib = _optional_module("compression.zstd")  # Python 3.14+ (PEP 784)
_zstandard: Any = None if _zstd_stdlib is not None else _optional_module("zstandard")

GZIP_LEVEL = 6
# Quality 11 is for build steps (sidecars); 5 is fast enough on the fly and still
# compresses text better than gzip -6.
BROTLI_QUALITY = 5
# RFC 9659 §3: the "zstd" coding must not need a window over 8 MB; level 3 uses at most 2 MB.
ZSTD_LEVEL = 3


class _BrotliEncoder:
    """brotli.Compressor behind the zlib-style interface."""

    def __init__(self) -> None:
        self._compressor: Any = _brotli.Compressor(quality=BROTLI_QUALITY)

    def compress(self, data: bytes, /) -> bytes:
        return bytes(self._compressor.process(data))

    def flush(self) -> bytes:
        return bytes(self._compressor.finish())


def _gzip_encoder() -> _Encoder:
    # wbits 31 = gzip wrapper (RFC 1952) with header mtime 0, so the output is a pure
    # function of the input: the variant's strong ETag stays honest across processes.
    return zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)


def _zstd_encoder() -> _Encoder:
    if _zstd_stdlib is not None:
        encoder: _Encoder = _zstd_stdlib.ZstdCompressor(level=ZSTD_LEVEL)
        return encoder
    zstd_object: _Encoder = _zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
    return zstd_object


_ENCODERS: dict[str, Callable[[], _Encoder]] = {}
if _brotli is not None:
    _ENCODERS["br"] = _BrotliEncoder
if _zstd_stdlib is not None or _zstandard is not None:
    _ENCODERS["zstd"] = _zstd_encoder
_ENCODERS["gzip"] = _gzip_encoder

AVAILABLE: tuple[str, ...] = tuple(_ENCODERS)
"""Codings this process can produce, in server preference order (br, zstd, gzip)."""


def _new_encoder(coding: str) -> _Encoder:
    try:
        factory = _ENCODERS[coding]
    except KeyError:
        raise ValueError(f"cannot produce content-coding {coding!r}") from None
    return factory()


# --------------------------------------------------------------------------- negotiation

# RFC 9110 §8.4.1.3: a recipient SHOULD consider "x-gzip" equivalent to "gzip".
_ALIASES = {"x-gzip": "gzip"}


def _weights(field_value: str) -> dict[str, int]:
    """Parse Accept-Encoding into coding -> weight in thousandths.

    RFC 9110 §12.5.3: ``#( codings [ weight ] )``, a coding a token. Malformed elements
    (a bad q such as ``q=2``, ``q=0.1234`` or ``q=abc``, a parameter other than q, a
    non-token) are ignored, as if absent. A coding listed twice gets its lowest
    weight: when a client refuses a coding anywhere, honour the refusal.
    """
    weights: dict[str, int] = {}
    for element in weighted_elements(field_value):
        if element.parameters or element.after or not TOKEN.fullmatch(element.value):
            continue
        # The token is ASCII, so lower() cannot turn e.g. KELVIN SIGN into "k".
        coding = element.value.lower()
        coding = _ALIASES.get(coding, coding)
        weight = element.weight
        weights[coding] = min(weight, weights.get(coding, weight))
    return weights


def negotiate(accept_encoding: str | None, available: Sequence[str]) -> str | None:
    """Choose the content-coding of a response (RFC 9110 §12.5.3).

    Returns the member of ``available`` (lowercase codings, server preference first)
    with the highest weight, ties going to the earlier one; else ``"identity"`` when
    identity is acceptable; else None: the client refused every coding, identity
    included (the caller may answer 406, or send identity anyway, as §12.5.3 allows).

    * No field (None): ``"identity"``. The RFC would allow any coding, but a client
      that says nothing about codings most likely cannot decode them.
    * An empty field: ``"identity"``; no coding is wanted.
    * ``q=0`` refuses a coding; ``*`` gives its weight to every coding not listed,
      and to identity when identity is not listed itself.
    * Identity is acceptable unless refused by ``identity;q=0``, or by ``*;q=0``
      without an identity entry. A listed identity competes by weight and loses ties
      (we would rather send fewer bytes); an unlisted one is only the fallback.

    Never raises on any field value.
    """
    if accept_encoding is None:
        return IDENTITY
    weights = _weights(accept_encoding)
    star = weights.get("*")
    identity_weight = weights.get(IDENTITY, star)  # None: acceptable, least preferred
    best, best_weight = None, 0
    for coding in available:
        name = coding.lower()
        if name == IDENTITY:
            continue
        weight = weights.get(name, 0 if star is None else star)
        if weight > best_weight:
            best, best_weight = coding, weight
    if best is not None and (identity_weight is None or best_weight >= identity_weight):
        return best
    if identity_weight != 0:
        return IDENTITY
    return None


# --------------------------------------------------------------------------- policy

_SIDECAR_SUFFIXES = {"br": ".br", "gzip": ".gz", "zstd": ".zst"}


def sidecar_suffix(coding: str) -> str:
    """The file-name suffix of a precompressed sidecar: ``"gzip"`` -> ``".gz"``.

    Raises ValueError for a coding with no sidecar convention.
    """
    try:
        return _SIDECAR_SUFFIXES[coding]
    except KeyError:
        raise ValueError(f"no sidecar suffix for content-coding {coding!r}") from None


def variant_etag(etag: str, coding: str) -> str:
    """The entity-tag of the ``coding`` variant of the representation tagged ``etag``.

    RFC 9110 §8.8.3.3: differently encoded representations need different strong tags,
    or a cache could combine ranges of one with another. ``'"abc"'`` and ``"gzip"``
    give ``'"abc-gzip"'``; a weak tag stays weak.
    """
    if not etag.endswith('"'):
        raise ValueError(f"not an entity-tag: {etag!r}")
    return f'{etag[:-1]}-{coding}"'


# --------------------------------------------------------------------------- variants


@dataclass(frozen=True, slots=True)
class Variant:
    """One encoded form of one version of a file: bytes in memory or a file on disk."""

    coding: str
    size: int  # exact length of the encoded bytes: the Content-Length
    body: bytes | None  # the encoded bytes, or
    path: str | None  # a file holding exactly them (a sidecar or a spooled temp file)
    # A sidecar's own version ("<ino>-<mtime_ns>-<size>" in hex): a sidecar can be
    # rebuilt while the file stays the same, and its tag must change with its bytes.
    source_version: str = ""

    def __post_init__(self) -> None:
        if (self.body is None) == (self.path is None):
            raise ValueError("a Variant has either a body or a path")
        if self.body is not None and len(self.body) != self.size:
            raise ValueError("Variant size does not match its body")

    def etag(self, identity_etag: str) -> str:
        """The strong entity-tag of this variant, given the file's own tag."""
        suffix = f"{self.coding}.{self.source_version}" if self.source_version else self.coding
        return variant_etag(identity_etag, suffix)


def has_sidecar(fs_path: str, coding: str) -> bool:
    """Cheap pre-check (no exception when absent, the common case)."""
    suffix = _SIDECAR_SUFFIXES.get(coding)
    try:
        return suffix is not None and os.access(fs_path + suffix, os.F_OK)
    except ValueError:  # a NUL in the path
        return False


def find_sidecar(fs_path: str, mtime_ns: int, coding: str) -> Variant | None:
    """The precompressed sidecar of ``fs_path`` for ``coding``, if it may be served.

    ``mtime_ns`` is the file's modification time. The sidecar must be a regular file
    (symlinks followed) whose real path lies in the same directory as the file's real
    path, and whose mtime is not older than the file's: a stale sidecar would serve old
    content. An empty sidecar is never a valid encoding and is ignored too. Never raises.
    """
    if not has_sidecar(fs_path, coding):
        return None
    try:
        candidate = fs_path + sidecar_suffix(coding)
        sidecar_st = os.stat(candidate)
        if not stat.S_ISREG(sidecar_st.st_mode) or sidecar_st.st_size == 0:
            return None
        if sidecar_st.st_mtime_ns < mtime_ns:
            return None
        real = os.path.realpath(candidate)
        if os.path.dirname(real) != os.path.dirname(os.path.realpath(fs_path)):
            return None
    except (OSError, ValueError):  # ValueError: a NUL in the path, an unknown coding
        return None
    version = f"{sidecar_st.st_ino:x}-{sidecar_st.st_mtime_ns:x}-{sidecar_st.st_size:x}"
    return Variant(coding, sidecar_st.st_size, None, real, version)


# --------------------------------------------------------------------------- encoding

CHUNK = 64 * 1024


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _version(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _Spool:
    """The spool directory and the files in it; owned by a VariantCache.

    Kept apart from the cache so a weakref finalizer can delete the files without
    keeping the cache alive. The directory is made on first use, so a cache that never
    spools leaves nothing behind. Only files this process made are ever deleted: a
    forked child starts its own set (and directory), and never touches its parent's.
    """

    def __init__(self, directory: str | None) -> None:
        self.directory = directory
        self.owned = directory is None  # made by us: removed whole on cleanup
        self.files: set[str] = set()
        self.pid = os.getpid()
        self.lock = threading.Lock()

    def _adopt(self) -> None:
        if os.getpid() != self.pid:  # forked: what we know belongs to the parent
            self.pid = os.getpid()
            self.files = set()
            if self.owned:
                self.directory = None

    def new_file(self, coding: str) -> tuple[int, str]:
        with self.lock:
            self._adopt()
            if self.directory is None:
                self.directory = tempfile.mkdtemp(prefix="sitepeek-")
            fd, path = tempfile.mkstemp(suffix=sidecar_suffix(coding), dir=self.directory)
            self.files.add(path)
        return fd, path

    def remove(self, path: str) -> None:
        with self.lock:
            self._adopt()
            if path not in self.files:
                return
            self.files.discard(path)
        with contextlib.suppress(OSError):
            os.unlink(path)

    def cleanup(self) -> None:
        with self.lock:
            if os.getpid() != self.pid:
                return  # a forked child that never spooled: nothing here is ours
            files, self.files = self.files, set()
            directory = self.directory if self.owned else None
            if self.owned:
                self.directory = None
        for path in files:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def _file_chunks(fd: int, size: int) -> Iterator[bytes]:
    """The first ``size`` bytes of ``fd`` in CHUNK-sized preads.

    Raises FileChanged when the file is shorter, longer or modified by the end: the
    result would not be the version the caller's key names.
    """
    before = _version(os.fstat(fd))
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(CHUNK, size - offset), offset)
        if not chunk:
            raise FileChanged(f"descriptor {fd} ended at {offset} of {size} bytes")
        offset += len(chunk)
        yield chunk
    if os.pread(fd, 1, size) or _version(os.fstat(fd)) != before:
        raise FileChanged(f"descriptor {fd} changed while it was compressed")


def _body_chunks(body: bytes) -> Iterator[bytes]:
    for offset in range(0, len(body), CHUNK):
        yield body[offset : offset + CHUNK]


def _encode(coding: str, chunks: Iterator[bytes], memory_limit: int, spool: _Spool) -> Variant:
    """Compress ``chunks``, streaming.

    The output collects in memory up to ``memory_limit`` bytes and moves to a spool
    file past that, so memory stays flat whatever the input size.
    """
    encoder = _new_encoder(coding)
    buffer = bytearray()
    spooled: tuple[int, str] | None = None
    written = 0

    def emit(data: bytes) -> None:
        nonlocal spooled, written
        if spooled is None:
            buffer.extend(data)
            if len(buffer) <= memory_limit:
                return
            spooled = spool.new_file(coding)
            data = bytes(buffer)
            buffer.clear()
        _write_all(spooled[0], data)
        written += len(data)

    try:
        for chunk in chunks:
            emit(encoder.compress(chunk))
        emit(encoder.flush())
    except BaseException:
        if spooled is not None:
            os.close(spooled[0])
            spool.remove(spooled[1])
        raise
    if spooled is None:
        return Variant(coding, len(buffer), bytes(buffer), None)
    os.close(spooled[0])
    return Variant(coding, written, None, spooled[1])


# --------------------------------------------------------------------------- the cache

_Slot = tuple[Hashable, str]  # (file version, coding)


def _nothing() -> None:
    pass


class _Flight:
    """One compression in progress, shared by every request that wants its result.

    Whoever claims it first (in ``VariantCache._join``) does the work; the others
    wait for its outcome. Each caller runs ``_join`` inside its own ``offload``, so
    under gevent the waiting happens on a pool thread, never in the hub; and because
    the first caller to get a pool thread does the work, waiters filling the pool
    cannot starve it.
    """

    def __init__(self, chunks: Callable[[], Iterator[bytes]]) -> None:
        self.chunks = chunks
        # Frees what the source holds (a file flight's descriptor); idempotent.
        self.release: Callable[[], object] = _nothing
        self._done = threading.Condition(threading.Lock())
        self._claimed = False
        self._finished = False
        self._result: Variant | None = None
        self._error: BaseException | None = None

    @classmethod
    def of_file(cls, fd: int, size: int) -> _Flight:
        # A dup of the first caller's descriptor, owned by the flight: any caller may
        # end up doing the work, and the first caller may have closed its own by then
        # (its number even reused for another file). Closed when the work is done, or
        # when the flight is dropped unrun.
        own = os.dup(fd)
        flight = cls(functools.partial(_file_chunks, own, size))
        flight.release = weakref.finalize(flight, os.close, own)
        return flight

    def claim(self) -> bool:
        """True for exactly one caller: the one that must do the work."""
        with self._done:
            claimed, self._claimed = self._claimed, True
        return not claimed

    def finish(self, result: Variant | None, error: BaseException | None) -> None:
        with self._done:
            self._result, self._error, self._finished = result, error, True
            self._done.notify_all()

    def wait(self) -> Variant:
        with self._done:
            self._done.wait_for(lambda: self._finished)
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


class VariantCache:
    """Compressed variants of file versions, compressed once and kept in a bounded LRU.

    Keys are file versions (:func:`entities.identity`), so an entry never describes a
    file that changed since; :meth:`clear` only frees space early. Variants up to
    ``memory_limit_per_item`` encoded bytes are kept in memory (at most ``max_memory``
    in all); larger ones were streamed into files in ``spool_dir`` (at most
    ``max_disk`` in all; evicted files are deleted). Least recently used goes first.
    The newest entry is never evicted, so one variant larger than its budget is still
    served, then evicted by the next insertion.

    Safe to share between threads and greenlets. The internal lock guards dict updates
    only, never ``offload``, file I/O or a wait, so it cannot stall a gevent hub. Make
    one cache per process (after a fork): a forked child never deletes its parent's
    spool files, but it should not serve them either.
    """

    def __init__(
        self,
        max_memory: int = 32 * 2**20,
        max_disk: int = 512 * 2**20,
        spool_dir: str | None = None,
        memory_limit_per_item: int = 1 * 2**20,
    ) -> None:
        self._max_memory = max_memory
        self._max_disk = max_disk
        self._memory_limit = memory_limit_per_item
        self._memory: OrderedDict[_Slot, Variant] = OrderedDict()
        self._disk: OrderedDict[_Slot, Variant] = OrderedDict()
        self._memory_bytes = 0
        self._disk_bytes = 0
        self._flights: dict[_Slot, _Flight] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._spool = _Spool(spool_dir)
        # Spool files never outlive the cache, nor the process (finalize runs at exit).
        self._finalizer = weakref.finalize(self, self._spool.cleanup)

    # -- lookups

    def get(self, key: Hashable, coding: str) -> Variant | None:
        """The cached ``coding`` variant of file version ``key``, or None."""
        slot = (key, coding)
        with self._lock:
            return self._lookup(slot)

    def _lookup(self, slot: _Slot) -> Variant | None:
        for entries in (self._memory, self._disk):
            variant = entries.get(slot)
            if variant is not None:
                entries.move_to_end(slot)
                return variant
        return None

    def get_or_compress(
        self,
        key: Hashable,
        coding: str,
        fd: int,
        size: int,
        offload: Callable[[Callable[[], Variant]], Variant],
    ) -> Variant:
        """The ``coding`` variant of the first ``size`` bytes of open file ``fd``.

        ``key`` is the version the caller fstat'ed ``fd`` as. On a miss the compression
        runs inside ``offload(fn)``, which must run ``fn`` (on a thread pool under
        gevent) and return its result. Concurrent misses on one (key, coding) compress
        once. Raises ValueError for a coding not in :data:`AVAILABLE`, FileChanged when
        the file changed while it was read, OSError (e.g. a full spool disk): serve the
        identity representation then.
        """
        return self._get_or_start(key, coding, lambda: _Flight.of_file(fd, size), offload)

    def get_or_compress_body(
        self,
        key: Hashable,
        coding: str,
        body: bytes,
        offload: Callable[[Callable[[], Variant]], Variant],
    ) -> Variant:
        """Like :meth:`get_or_compress`, for a body already in memory.

        For bodies that are not the file's bytes (HTML with the reload client
        injected): ``key`` must then name that body, not just the file version, e.g.
        ``(identity, etag)``.
        """
        return self._get_or_start(
            key, coding, lambda: _Flight(functools.partial(_body_chunks, body)), offload
        )

    def _get_or_start(
        self,
        key: Hashable,
        coding: str,
        new_flight: Callable[[], _Flight],
        offload: Callable[[Callable[[], Variant]], Variant],
    ) -> Variant:
        if coding not in _ENCODERS:
            raise ValueError(f"cannot produce content-coding {coding!r}")
        slot = (key, coding)
        with self._lock:
            if self._closed:
                raise RuntimeError("VariantCache is closed")
            cached = self._lookup(slot)
            if cached is not None:
                return cached
            flight = self._flights.get(slot)
            if flight is None:
                flight = self._flights[slot] = new_flight()
        return offload(lambda: self._join(slot, flight))

    def _join(self, slot: _Slot, flight: _Flight) -> Variant:
        if not flight.claim():
            return flight.wait()
        try:
            variant = _encode(slot[1], flight.chunks(), self._memory_limit, self._spool)
            self._store(slot, variant)
        except BaseException as error:
            flight.finish(None, error)
            raise
        else:
            flight.finish(variant, None)
            return variant
        finally:
            flight.release()
            with self._lock:
                if self._flights.get(slot) is flight:
                    del self._flights[slot]

    def open(self, variant: Variant) -> int | None:
        """Open a variant's file for sending; None if it is gone or no longer matches.

        A spooled file may be evicted (unlinked) between the lookup and this call;
        once open, the descriptor stays readable whatever happens to the name. The file
        must still be regular and exactly ``variant.size`` long (a sidecar may have
        been rewritten). On None, serve the identity representation.
        """
        if variant.path is None:
            raise ValueError("variant has its body in memory")
        try:
            fd = os.open(variant.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != variant.size:
            os.close(fd)
            return None
        return fd

    # -- storage

    def _store(self, slot: _Slot, variant: Variant) -> None:
        evicted: list[str] = []
        with self._lock:
            closed = self._closed
            if closed:
                evicted.append(variant.path or "")
            elif variant.body is not None:
                self._memory[slot] = variant
                self._memory_bytes += variant.size
                while self._memory_bytes > self._max_memory and len(self._memory) > 1:
                    _, old = self._memory.popitem(last=False)
                    self._memory_bytes -= old.size
            else:
                self._disk[slot] = variant
                self._disk_bytes += variant.size
                while self._disk_bytes > self._max_disk and len(self._disk) > 1:
                    _, old = self._disk.popitem(last=False)
                    self._disk_bytes -= old.size
                    evicted.append(old.path or "")
        # Unlinked outside the lock: deleting a big file can take a while.
        for path in evicted:
            self._spool.remove(path)
        if closed:
            raise RuntimeError("VariantCache is closed")

    def clear(self) -> None:
        """Forget every variant and delete the spool files (e.g. after a change event)."""
        with self._lock:
            spooled = [variant.path or "" for variant in self._disk.values()]
            self._memory.clear()
            self._disk.clear()
            self._memory_bytes = self._disk_bytes = 0
        for path in spooled:
            self._spool.remove(path)

    def close(self) -> None:
        """Delete every spool file and the spool directory we made; the cache is unusable."""
        with self._lock:
            self._closed = True
        self.clear()
        self._finalizer()

    # -- introspection (tests, stats)

    @property
    def memory_bytes(self) -> int:
        return self._memory_bytes

    @property
    def disk_bytes(self) -> int:
        return self._disk_bytes

    @property
    def spool_dir(self) -> str | None:
        """The spool directory, once made (None until the first spooled variant)."""
        return self._spool.directory

    def __len__(self) -> int:
        return len(self._memory) + len(self._disk)
