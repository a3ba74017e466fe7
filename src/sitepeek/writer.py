"""Writing answers: a plan's representation as bytes on a connection.

The :class:`Writer` turns what :meth:`sitepeek.site.Site.decide` chose into a response
on a :class:`~sitepeek.connections.Connection`: RFC 9110 preconditions (§13), ranges
(§14) and content codings (§12.5.3) for files, the head in one buffer with a small
body (Nagle and delayed ACK), ``sendfile`` or the checked copy path for large bodies,
error pages and redirects. It opens and reads files (one version per response, even
when the file is rewritten meanwhile); it does not read requests or know a worker
model beyond the :class:`~sitepeek.concurrency.Io` it is given.

Why one module of this size: identity, variant and range answers share one open
descriptor, one set of validators and one head format; apart, each would re-derive them.
"""

from __future__ import annotations

import errno
import html
import os
import stat
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from sitepeek import compression, entities, hotcache, inject
from sitepeek.concurrency import Io
from sitepeek.connections import CloseConnection, Connection, send_file_range
from sitepeek.entities import Entity
from sitepeek.http11 import Request, reason_phrase
from sitepeek.http11 import response_head as _response_head
from sitepeek.representation import (
    ByteRange,
    Precondition,
    evaluate_preconditions,
    evaluate_range,
)
from sitepeek.resolver import File
from sitepeek.responses import DateCache, error_page

__all__ = ["KNOWN_CODINGS", "Writer"]

# A file modified less than this long ago may be mid-write: wait for it to settle
# (at most WRITE_SETTLE_MAX) before reading a version of it.
WRITE_SETTLE = 0.02  # below the 30 ms reload debounce: a reload never waits here
WRITE_SETTLE_MAX = 0.5
# Bodies up to this size compress inline (a few ms at most); larger ones in the worker
# model's thread pool, so the event loop keeps serving meanwhile.
INLINE_COMPRESSION = 256 * 1024
# Codings we can serve: produced on the fly (compression.AVAILABLE) or from a
# precompressed sidecar file; server preference order.
KNOWN_CODINGS = ("br", "zstd", "gzip")
_OK = b"HTTP/1.1 200 OK\r\n"
_NOT_MODIFIED = b"HTTP/1.1 304 Not Modified\r\n"

T = TypeVar("T")


class Writer:
    """Writes answers for one process's handler (shared by its connections)."""

    def __init__(
        self,
        io: Io,
        dates: DateCache,
        hot: hotcache.HotAnswers,
        snippet: bytes | None,
        compress: bool,
        send_timeout: float,
    ) -> None:
        """``snippet``: the live-reload tag injected into pages (None: reload off)."""
        self._io = io
        self._dates = dates
        self._hot = hot
        self._snippet = snippet
        self._compress = compress
        self._send_timeout = send_timeout
        self._entities = entities.EntityCache()
        self._variants = compression.VariantCache()
        self._variant_fields: dict[str, tuple[bytes, bytes]] = {}

    def close(self) -> None:
        """Release spooled compressed files."""
        self._variants.close()

    def send_file(
        self, out: Connection, request: Request, file: File, keep: bool, status: int = 200
    ) -> bool:
        """Send a file: as the resource itself (200/206/304), or as the body of another
        status (a custom 404 page), which takes no conditionals, ranges or coding."""
        cached = None
        if file.stat is not None:
            cached = self._entities.get(file.fs_path, file.stat)
            if cached is not None and cached.body is not None:
                if status != 200:
                    return self._send_page(out, request, cached, -1, keep, status)
                return self.send_entity(out, request, cached, -1, keep, file.fs_path)
            if cached is not None and status == 200:
                # A large file whose compressed variant is ready: no need to open it.
                sent = self._try_variant(out, request, cached, -1, keep, file.fs_path)
                if sent is not None:
                    return sent
        try:
            # O_NONBLOCK: should the path have become a FIFO since it was resolved,
            # opening it must not wait for a writer.
            fd = os.open(file.fs_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            return self._send_open_error(out, request, exc, keep)
        try:
            # Everything below uses this descriptor: the response is one version of
            # the file even if it is replaced or rewritten meanwhile.
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return self.send_error(out, request, 404, "Not Found", keep)
            st = self._settled_stat(fd, st)
            try:
                if cached is not None and cached.identity == entities.identity(st):
                    entity = cached  # metadata of a large file: nothing to read
                else:
                    entity, st = entities.load(file.fs_path, fd, st, self._snippet, self._compress)
            except entities.FileChanged:
                # Rewritten in place faster than we can read one version: closing is
                # the honest answer (a browser retries an idempotent request on a
                # closed keep-alive connection); a half-written body never is.
                raise CloseConnection from None
            self._entities.put(file.fs_path, entity)
            if status != 200:
                return self._send_page(out, request, entity, fd, keep, status)
            return self.send_entity(out, request, entity, fd, keep, file.fs_path)
        finally:
            os.close(fd)

    def _settled_stat(self, fd: int, st: os.stat_result) -> os.stat_result:
        """Wait (briefly, cooperatively) while the file is still being written.

        A file rewritten in place with several writes is torn on disk between them: a
        version stamped with the first write's mtime is not a version at all. A file
        modified in the last WRITE_SETTLE seconds is read only once that much time has
        passed without a change (bounded: a file written continuously is served after
        WRITE_SETTLE_MAX as it then is, and checked while it is sent).
        """
        waited = 0.0
        while waited < WRITE_SETTLE_MAX:
            age = time.time() - st.st_mtime_ns / 1e9
            if not 0 <= age < WRITE_SETTLE:
                break
            pause = WRITE_SETTLE - age
            self._io.signal().wait(pause)
            waited += pause
            st = os.fstat(fd)
        return st

    def _send_open_error(self, out: Connection, request: Request, exc: OSError, keep: bool) -> bool:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return self.send_error(out, request, 403, "Forbidden", keep)
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
            # Out of descriptors: the file exists; say so, and when to try again.
            return self.send_error(
                out,
                request,
                503,
                "The server is busy; try again.",
                False,
                [("Retry-After", "1")],
            )
        return self.send_error(out, request, 404, "Not Found", keep)

    def _send_page(
        self, out: Connection, request: Request, entity: Entity, fd: int, keep: bool, status: int
    ) -> bool:
        head = b"".join(
            (
                f"HTTP/1.1 {status} {reason_phrase(status)}\r\n".encode(),
                self._prefix(out, keep, request.version),
                b"Content-Type: %s\r\nCache-Control: no-cache\r\n"
                % entity.content_type.encode("latin-1"),
                b"Content-Length: %d\r\n\r\n" % entity.size,
            )
        )
        if request.method == "HEAD":
            out.sendall(head)
        elif entity.body is not None:
            out.sendall(head + entity.body)
        else:
            out.sendall(head)
            send_file_range(out, self._io, self._send_timeout, fd, 0, entity.size, entity.identity)
        return keep

    def _prefix(self, out: Connection, keep: bool, version: str) -> bytes:
        """Date, Server, Connection and this request's extra header lines."""
        prefix = self._dates.prefix(keep, version)
        return prefix + out.extra if out.extra else prefix

    def send_entity(
        self,
        out: Connection,
        request: Request,
        entity: Entity,
        fd: int,
        keep: bool,
        path: str | None = None,
    ) -> bool:
        """Answer with ``entity`` or, when negotiated, a compressed variant of it.

        ``fd`` is the open file when the body is not cached; ``path`` its real path,
        for precompressed sidecars. A Range request always gets the identity
        representation, so ranges and compression can never disagree.
        """
        sent = self._try_variant(out, request, entity, fd, keep, path)
        return sent if sent is not None else self._send_identity(out, request, entity, fd, keep)

    def _try_variant(
        self,
        out: Connection,
        request: Request,
        entity: Entity,
        fd: int,
        keep: bool,
        path: str | None,
    ) -> bool | None:
        """Send a compressed variant if one is negotiated and at hand; None otherwise.

        With ``fd`` -1 (the file is not open) only a variant already compressed, or a
        sidecar, is at hand.
        """
        if not entity.compressible or "range" in request.headers:
            return None
        variant = self._select_variant(entity, fd, path, request.header("accept-encoding"))
        if variant is None:
            return None
        variant_fd = -1 if variant.body is not None else self._variants.open(variant)
        if variant_fd is None:
            return None
        try:
            return self._send_variant(out, request, entity, variant, variant_fd, keep)
        finally:
            if variant_fd >= 0:
                os.close(variant_fd)

    def _select_variant(
        self, entity: Entity, fd: int, path: str | None, accept_encoding: str
    ) -> compression.Variant | None:
        """The compressed variant to send, or None for identity (RFC 9110 §12.5.3)."""
        header = accept_encoding or None
        coding = compression.negotiate(header, KNOWN_CODINGS)
        if coding is None or coding == compression.IDENTITY:
            # Nothing acceptable but identity was refused too: we send identity anyway
            # rather than 406 (RFC 9110 §12.5.3 allows either); a preview must show.
            return None
        if path is not None and not entity.transformed:
            sidecar = compression.find_sidecar(path, entity.identity.mtime_ns, coding)
            if sidecar is not None:
                return sidecar
        if coding not in compression.AVAILABLE:
            coding = compression.negotiate(header, compression.AVAILABLE)
            if coding is None or coding == compression.IDENTITY:
                return None
        key = (entity.identity, entity.etag)
        variant = self._variants.get(key, coding)
        if variant is None:
            offload = self._io.offload if entity.size > INLINE_COMPRESSION else _inline
            try:
                if entity.body is not None:
                    variant = self._variants.get_or_compress_body(key, coding, entity.body, offload)
                elif fd >= 0:
                    variant = self._variants.get_or_compress(key, coding, fd, entity.size, offload)
                else:
                    return None
            except (entities.FileChanged, OSError):
                return None
        # Incompressible after all (already-minified binary-ish text): send identity.
        return variant if variant.size < entity.size else None

    def _send_variant(
        self,
        out: Connection,
        request: Request,
        entity: Entity,
        variant: compression.Variant,
        fd: int,
        keep: bool,
    ) -> bool:
        etag = variant.etag(entity.etag)
        fields = self._variant_fields.get(etag)
        if fields is None:
            if len(self._variant_fields) > 4096:
                self._variant_fields.clear()
            fields = self._variant_fields[etag] = entities.header_fields(
                entity.content_type, etag, entity.last_modified or None, True, variant.coding
            )
        method = request.method
        precondition = evaluate_preconditions(method, request.headers, etag, entity.last_modified)
        if precondition is Precondition.NOT_MODIFIED:
            rest = out.extra + fields[1] + b"Content-Length: %d\r\n\r\n" % variant.size
            if variant.body is not None:  # (a sidecar is a file of its own)
                self._send_remembered(out, request, _NOT_MODIFIED, rest, keep, entity)
            else:
                out.sendall(_NOT_MODIFIED + self._dates.prefix(keep, request.version) + rest)
            return keep
        if precondition is Precondition.FAILED:
            return self.send_error(out, request, 412, "Precondition Failed", keep)
        if variant.body is not None:
            rest = out.extra + fields[0] + b"Content-Length: %d\r\n\r\n" % variant.size
            if method != "HEAD":
                rest += variant.body
            self._send_remembered(out, request, _OK, rest, keep, entity)
            return keep
        head = b"".join(
            (
                _OK,
                self._prefix(out, keep, request.version),
                fields[0],
                b"Content-Length: %d\r\n\r\n" % variant.size,
            )
        )
        if method == "HEAD":
            out.sendall(head)
        else:
            out.sendall(head)
            send_file_range(out, self._io, self._send_timeout, fd, 0, variant.size)
        return keep

    def _send_identity(
        self, out: Connection, request: Request, entity: Entity, fd: int, keep: bool
    ) -> bool:
        """Answer with the entity itself (ranges apply); ``fd`` when not cached."""
        method = request.method
        headers = request.headers
        size = entity.size
        precondition = evaluate_preconditions(method, headers, entity.etag, entity.last_modified)
        if precondition is Precondition.NOT_MODIFIED:
            # RFC 9110 §15.4.5: the validators and caching fields, no content; RFC 9110
            # §8.6 allows the Content-Length the 200 would have had.
            rest = out.extra + entity.validator_fields + b"Content-Length: %d\r\n\r\n" % size
            self._send_remembered(out, request, _NOT_MODIFIED, rest, keep, entity)
            return keep
        if precondition is Precondition.FAILED:
            return self.send_error(out, request, 412, "Precondition Failed", keep)
        byte_range = (
            evaluate_range(method, headers, size, entity.etag, entity.last_modified)
            if "range" in headers
            else None
        )
        if byte_range is None:
            status_line, start, length, extra = b"HTTP/1.1 200 OK\r\n", 0, size, b""
        elif isinstance(byte_range, ByteRange):
            status_line = b"HTTP/1.1 206 Partial Content\r\n"
            start, length = byte_range.start, byte_range.length
            extra = b"Content-Range: %s\r\n" % byte_range.content_range(size).encode()
        else:
            return self.send_error(
                out,
                request,
                416,
                "Range Not Satisfiable",
                keep,
                [("Content-Range", f"bytes */{size}")],
            )
        body = entity.body
        if byte_range is None and body is not None:
            # One send: head and body in separate writes stall on Nagle + delayed ACK.
            rest = out.extra + entity.fields + b"Content-Length: %d\r\n\r\n" % length
            if method != "HEAD":
                rest += body
            self._send_remembered(out, request, status_line, rest, keep, entity)
            return keep
        head = b"".join(
            (
                status_line,
                self._prefix(out, keep, request.version),
                entity.fields,
                extra,
                b"Content-Length: %d\r\n\r\n" % length,
            )
        )
        if method == "HEAD":
            out.sendall(head)
        elif body is not None:
            out.sendall(head + body[start : start + length])
        else:
            out.sendall(head)
            send_file_range(out, self._io, self._send_timeout, fd, start, length, entity.identity)
        return keep

    # -- the hot cache -------------------------------------------------------------
    def _send_remembered(
        self,
        out: Connection,
        request: Request,
        status_line: bytes,
        rest: bytes,
        keep: bool,
        entity: Entity,
    ) -> None:
        """Send an answer made of bytes at hand; the hot cache may keep it for the same
        request bytes (see HotAnswers.respond)."""
        response = self._hot.respond(
            out.hot,
            status_line,
            keep,
            request.version,
            rest,
            entity.identity,
            entity.compressible,
            request.method,
            request.target,
            out.overrides,
        )
        out.status = int(status_line[9:12])  # (set: the override rule is applied)
        out.sendall(response)

    def send_location(
        self, out: Connection, request: Request, status: int, location: str, keep: bool
    ) -> bool:
        escaped = html.escape(location, quote=True)
        body = (
            f'<!doctype html><meta charset="utf-8"><title>Moved</title>'
            f'<p>Moved to <a href="{escaped}">{escaped}</a>.</p>\n'
        ).encode()
        headers = [
            ("Location", location),
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ]
        self.send(out, request, status, keep, headers, body)
        return keep

    def send_error(
        self,
        out: Connection,
        request: Request | None,
        status: int,
        detail: str,
        keep_alive: bool,
        extra: Sequence[tuple[str, str]] = (),
    ) -> bool:
        body = error_page(status, detail)
        if self._snippet is not None:
            body = inject.inject(body, self._snippet)
        headers = [
            *extra,
            ("Content-Type", "text/html; charset=utf-8"),
            ("Cache-Control", "no-cache"),
            ("Content-Length", str(len(body))),
        ]
        self.send(out, request, status, keep_alive, headers, body)
        return keep_alive

    def send(
        self,
        out: Connection,
        request: Request | None,
        status: int,
        keep: bool,
        headers: Sequence[tuple[str, str]],
        body: bytes,
    ) -> None:
        """Send an answer made here: the status line, Date, Server, Connection and the
        added fields, then ``headers`` and ``body`` (none for HEAD). The connection's
        first send applies the header-override rule (see Connection.sendall)."""
        head = _response_head(status, headers)
        line_end = head.index(b"\r\n") + 2
        version = "1.1" if request is None else request.version
        data = head[:line_end] + self._prefix(out, keep, version) + head[line_end:]
        if request is None or request.method != "HEAD":
            data += body
        out.sendall(data)


def _inline(work: Callable[[], T]) -> T:
    return work()
