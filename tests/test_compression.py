"""Tests for sitepeek.compression: negotiation, sidecars and the variant cache."""

from __future__ import annotations

import gc
import gzip
import hashlib
import os
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sitepeek import compression
from sitepeek.compression import (
    AVAILABLE,
    MIN_SIZE,
    Variant,
    VariantCache,
    find_sidecar,
    negotiate,
    should_compress,
    sidecar_suffix,
    variant_etag,
)
from sitepeek.entities import FileChanged, Identity, identity

ALL = ("br", "zstd", "gzip")
TEXT = b"body { color: rebeccapurple; margin: 0 auto; } /* sitepeek */\n"


def inline(fn: Callable[[], Variant]) -> Variant:
    """The threads model's offload: run right here."""
    return fn()


def decode(variant: Variant) -> bytes:
    if variant.body is not None:
        data = variant.body
    else:
        assert variant.path is not None
        data = Path(variant.path).read_bytes()
    assert len(data) == variant.size
    if variant.coding == "gzip":
        return gzip.decompress(data)
    if variant.coding == "br":
        brotli = pytest.importorskip("brotli")
        return bytes(brotli.decompress(data))
    assert variant.coding == "zstd"
    zstandard = pytest.importorskip("zstandard")
    return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))


class OpenFile:
    """A file opened and fstat'ed the way the handler does it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        st_result = os.fstat(self.fd)
        self.key: Identity = identity(st_result)
        self.size = st_result.st_size

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[Callable[[bytes], OpenFile]]:
    files: list[OpenFile] = []

    def make(content: bytes) -> OpenFile:
        path = tmp_path / f"file{len(files)}.css"
        path.write_bytes(content)
        files.append(OpenFile(path))
        return files[-1]

    yield make
    for file in files:
        file.close()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------------- negotiate

NEGOTIATION_CASES = [
    # (Accept-Encoding, available, expected)
    (None, ALL, "identity"),
    ("", ALL, "identity"),
    (" , ,", ALL, "identity"),
    ("gzip", ALL, "gzip"),
    ("gzip, deflate, br, zstd", ALL, "br"),  # server preference breaks the tie
    ("gzip, deflate, br, zstd", ("gzip", "zstd"), "gzip"),
    ("gzip, deflate, br", ("gzip",), "gzip"),
    ("br;q=0.5, gzip", ALL, "gzip"),
    ("br;q=0.5, gzip;q=0.8", ALL, "gzip"),
    ("br;q=0.8, gzip;q=0.8", ("gzip", "br"), "gzip"),  # tie: order of available
    ("gzip;q=0", ALL, "identity"),
    ("gzip;q=0.0", ("gzip",), "identity"),
    ("gzip;q=0.000, br", ALL, "br"),
    ("gzip;q=0.001", ("gzip",), "gzip"),  # lowest acceptable weight is still acceptable
    ("gzip;q=1.000", ("gzip",), "gzip"),
    ("gzip;q=1.", ("gzip",), "gzip"),
    ("gzip;q=0.", ("gzip",), "identity"),
    ("deflate", ALL, "identity"),  # nothing we produce
    ("compress, foo, bar-baz", ALL, "identity"),  # unknown codings ignored
    # case-insensitive codings and parameter name (RFC 9110 §8.4.1, §12.4.2)
    ("GZIP", ALL, "gzip"),
    ("Gzip;Q=0.5", ("gzip",), "gzip"),
    ("BR;q=0, GZip", ALL, "gzip"),
    # optional whitespace around commas and semicolons
    ("  gzip  ", ("gzip",), "gzip"),
    ("\tgzip\t;\tq=0.5\t,\tbr ; q=0.4 ", ALL, "gzip"),
    ("gzip ;q=0", ("gzip",), "identity"),
    ("gzip,,,br", ("br", "gzip"), "br"),
    # malformed weights: the element is ignored, as if absent
    ("gzip;q=2", ("gzip",), "identity"),
    ("gzip;q=1.001", ("gzip",), "identity"),
    ("gzip;q=0.1234", ("gzip",), "identity"),
    ("gzip;q=abc", ("gzip",), "identity"),
    ("gzip;q=-1", ("gzip",), "identity"),
    ("gzip;q=", ("gzip",), "identity"),
    ("gzip;q = 0.5", ("gzip",), "identity"),  # no whitespace around "=" in a weight
    ("gzip;level=9", ("gzip",), "identity"),  # no parameter but q
    ("gzip;q=0.5;q=0.4", ("gzip",), "identity"),
    ("gzip;q=0.1234, br", ALL, "br"),  # only the bad element is dropped
    ("gzip;q=abc, *", ("gzip",), "gzip"),  # the dropped gzip falls under *
    ("gz ip", ("gzip",), "identity"),
    ("gzip;q=0.5 junk", ("gzip",), "identity"),
    ("gzip;q=\u0660", ("gzip",), "identity"),  # ASCII digits only
    ("\u212aGZIP", ("gzip",), "identity"),  # KELVIN SIGN is not a tchar
    # duplicates: the lowest weight (a refusal anywhere wins)
    ("gzip, gzip;q=0", ("gzip",), "identity"),
    ("gzip;q=0, gzip", ("gzip",), "identity"),
    ("br;q=0.2, br;q=0.9, gzip;q=0.5", ALL, "gzip"),
    # x-gzip is gzip (RFC 9110 §8.4.1.3)
    ("x-gzip", ALL, "gzip"),
    ("X-GZIP;q=0.5, br;q=0.4", ALL, "gzip"),
    ("x-gzip;q=0, gzip", ("gzip",), "identity"),
    # identity
    ("identity", ALL, "identity"),
    ("identity;q=0", ALL, None),
    ("identity;q=0", ("gzip",), None),
    ("identity;q=0, gzip", ("gzip",), "gzip"),
    ("identity;q=0.5, gzip", ("gzip",), "gzip"),
    ("identity;q=0.5, gzip;q=0.5", ("gzip",), "gzip"),  # tie with identity: compress
    ("identity;q=0.6, gzip;q=0.5", ("gzip",), "identity"),
    ("identity, gzip;q=0.5", ("gzip",), "identity"),
    ("gzip;q=0.5", ("gzip",), "gzip"),  # identity not listed: only the fallback
    # *: every coding not listed, and identity unless listed
    ("*", ALL, "br"),
    ("*", ("gzip",), "gzip"),
    ("*;q=0.5, gzip", ALL, "gzip"),
    ("*, br;q=0", ALL, "zstd"),
    ("*, br;q=0, zstd;q=0", ALL, "gzip"),
    ("*;q=0", ALL, None),
    ("*;q=0, identity", ALL, "identity"),
    ("*;q=0, identity;q=0.5", ALL, "identity"),
    ("*;q=0, gzip", ALL, "gzip"),
    ("*;q=0, x-gzip", ("gzip",), "gzip"),
    ("*;q=0.3, gzip;q=0.2", ("gzip",), "identity"),  # identity gets *'s 0.3
    ("*;q=0.3, gzip;q=0.2", ("br", "gzip"), "br"),
    ("*;q=0.3, identity;q=0.1, gzip;q=0.2", ("gzip",), "gzip"),
    # nothing available
    ("gzip, br", (), "identity"),
    ("*;q=0", (), None),
    ("identity;q=0", (), None),
]


@pytest.mark.parametrize(("field", "available", "expected"), NEGOTIATION_CASES)
def test_negotiate(field: str | None, available: tuple[str, ...], expected: str | None) -> None:
    assert negotiate(field, available) == expected


def test_negotiate_returns_the_available_spelling() -> None:
    assert negotiate("gzip", ["GZIP"]) == "GZIP"
    assert negotiate("gzip", ["identity", "gzip"]) == "gzip"
    assert negotiate("identity;q=0", ["identity"]) is None


def test_negotiate_browser_fields() -> None:
    chrome = "gzip, deflate, br, zstd"
    assert negotiate(chrome, AVAILABLE) == AVAILABLE[0]
    assert negotiate("gzip, deflate", AVAILABLE) == "gzip"  # Safari before 2023 had no br
    assert negotiate("identity", AVAILABLE) == "identity"  # curl without --compressed


@given(st.text(), st.sampled_from([ALL, ("gzip",), ("gzip", "br"), ()]))
@example("gzip;q=" + "0" * 10_000, ALL)
@example("," * 10_000, ALL)
@example("\x00;q=1", ALL)
def test_negotiate_never_raises(field: str, available: tuple[str, ...]) -> None:
    assert negotiate(field, available) in {*available, "identity", None}


CODINGS = st.sampled_from(["gzip", "x-gzip", "br", "zstd", "identity", "*", "deflate", "GZip"])
QVALUES = st.sampled_from(["", ";q=0", ";q=0.5", ";q=1", ";q=0.001", ";q=2", ";q=x", " ; q=0"])


@given(st.lists(st.tuples(CODINGS, QVALUES), max_size=8))
def test_negotiate_never_picks_a_refused_coding(elements: list[tuple[str, str]]) -> None:
    field = ", ".join(coding + weight for coding, weight in elements)
    chosen = negotiate(field, ALL)
    refused = {
        compression._ALIASES.get(coding.lower(), coding.lower())
        for coding, weight in elements
        if weight in {";q=0", " ; q=0"}
    }
    assert chosen not in refused
    if chosen in ALL:
        listed = {
            compression._ALIASES.get(c.lower(), c.lower()) for c, w in elements if w != ";q=x"
        }
        assert chosen in listed or "*" in listed


# --------------------------------------------------------------------------- small parts


def test_available_prefers_br_then_zstd_and_always_has_gzip() -> None:
    assert AVAILABLE[-1] == "gzip"
    assert list(AVAILABLE) == [coding for coding in ALL if coding in AVAILABLE]


@pytest.mark.parametrize(
    ("ctype", "size", "expected"),
    [
        ("text/css", MIN_SIZE, True),
        ("text/css", MIN_SIZE - 1, False),
        ("text/html; charset=utf-8", 10_000, True),
        ("image/svg+xml", 10_000, True),
        ("image/png", 10_000, False),
        ("font/woff2", 10_000, False),
        ("application/wasm", 10_000, True),
        ("application/octet-stream", 10_000, False),
    ],
)
def test_should_compress(ctype: str, size: int, expected: bool) -> None:
    assert should_compress(ctype, size) is expected


def test_sidecar_suffix() -> None:
    assert [sidecar_suffix(coding) for coding in ALL] == [".br", ".zst", ".gz"]
    with pytest.raises(ValueError):
        sidecar_suffix("deflate")


def test_variant_etag() -> None:
    assert variant_etag('"abc"', "gzip") == '"abc-gzip"'
    assert variant_etag('"abc"', "br") == '"abc-br"'
    assert variant_etag('W/"abc"', "gzip") == 'W/"abc-gzip"'
    with pytest.raises(ValueError):
        variant_etag("abc", "gzip")


def test_variant_requires_a_body_or_a_path() -> None:
    with pytest.raises(ValueError):
        Variant("gzip", 0, None, None)
    with pytest.raises(ValueError):
        Variant("gzip", 1, b"x", "/tmp/x")
    with pytest.raises(ValueError):
        Variant("gzip", 2, b"x", None)
    assert Variant("gzip", 1, b"x", None).etag('"abc"') == '"abc-gzip"'


# --------------------------------------------------------------------------- round trips


CONTENTS = [b"", b"x", TEXT, TEXT * 5000, os.urandom(200_000)]


@pytest.mark.parametrize("coding", AVAILABLE)
@pytest.mark.parametrize("spooled", [False, True], ids=["memory", "spooled"])
@pytest.mark.parametrize("content", CONTENTS, ids=lambda content: f"{len(content)}B")
def test_round_trip(
    opened: Callable[[bytes], OpenFile],
    tmp_path: Path,
    coding: str,
    spooled: bool,
    content: bytes,
) -> None:
    file = opened(content)
    limit = 0 if spooled else 2**30
    variants = VariantCache(spool_dir=str(tmp_path / "spool"), memory_limit_per_item=limit)
    (tmp_path / "spool").mkdir()
    try:
        variant = variants.get_or_compress(file.key, coding, file.fd, file.size, inline)
        assert variant.coding == coding
        assert (variant.path is not None) is spooled
        assert decode(variant) == content
        assert variants.get(file.key, coding) is variant
        assert variants.get(file.key, "other") is None
    finally:
        variants.close()
    assert list((tmp_path / "spool").iterdir()) == []


@pytest.mark.parametrize("coding", AVAILABLE)
@pytest.mark.parametrize("spooled", [False, True], ids=["memory", "spooled"])
def test_round_trip_of_a_body(coding: str, spooled: bool) -> None:
    # A body that is not the file's bytes (HTML with the reload client injected).
    body = b"<!doctype html><p>hi</p>" * 5000 + os.urandom(500) + b"<script src=/r.js></script>"
    variants = VariantCache(memory_limit_per_item=100 if spooled else 2**30)
    calls: list[int] = []

    def offload(fn: Callable[[], Variant]) -> Variant:
        calls.append(1)
        return fn()

    try:
        variant = variants.get_or_compress_body(("file", '"abc-r"'), coding, body, offload)
        assert calls == [1]
        assert (variant.path is not None) is spooled
        assert decode(variant) == body
        assert variants.get(("file", '"abc-r"'), coding) is variant
        assert variants.get_or_compress_body(("file", '"abc-r"'), coding, b"", offload) is variant
        assert calls == [1]
    finally:
        variants.close()


def test_gzip_output_is_deterministic(opened: Callable[[bytes], OpenFile]) -> None:
    file = opened(TEXT * 100)
    first = VariantCache().get_or_compress(file.key, "gzip", file.fd, file.size, inline)
    second = VariantCache().get_or_compress(file.key, "gzip", file.fd, file.size, inline)
    assert first.body == second.body
    assert first.body is not None and first.body[4:8] == bytes(4)  # header MTIME = 0


@pytest.mark.skipif("br" not in AVAILABLE, reason="brotli is not installed")
def test_brotli_round_trip_of_a_spooled_file(
    opened: Callable[[bytes], OpenFile], tmp_path: Path
) -> None:
    brotli = pytest.importorskip("brotli")
    content = TEXT * 40_000 + os.urandom(100_000)
    file = opened(content)
    variants = VariantCache(memory_limit_per_item=64 * 1024)
    try:
        variant = variants.get_or_compress(file.key, "br", file.fd, file.size, inline)
        assert variant.path is not None
        assert brotli.decompress(Path(variant.path).read_bytes()) == content
    finally:
        variants.close()


def test_only_the_first_size_bytes_of_the_descriptor(opened: Callable[[bytes], OpenFile]) -> None:
    # Compression reads the fd the handler fstat'ed, not the path: a file renamed over
    # the original does not change what this version's variant holds.
    file = opened(TEXT * 50)
    replacement = file.path.with_suffix(".new")
    replacement.write_bytes(b"new content " * 100)
    os.replace(replacement, file.path)
    variant = VariantCache().get_or_compress(file.key, "gzip", file.fd, file.size, inline)
    assert decode(variant) == TEXT * 50


def test_a_file_changed_while_compressed_is_not_cached(
    opened: Callable[[bytes], OpenFile], tmp_path: Path
) -> None:
    file = opened(TEXT * 50)
    spool = tmp_path / "spool"
    spool.mkdir()
    variants = VariantCache(spool_dir=str(spool), memory_limit_per_item=0)
    with pytest.raises(FileChanged):  # shorter than the caller's stat said
        variants.get_or_compress(file.key, "gzip", file.fd, file.size + 1, inline)
    with pytest.raises(FileChanged):  # longer
        variants.get_or_compress(file.key, "gzip", file.fd, file.size - 1, inline)
    assert len(variants) == 0
    assert list(spool.iterdir()) == []
    # No flight is left behind: the next request compresses afresh.
    variant = variants.get_or_compress(file.key, "gzip", file.fd, file.size, inline)
    assert decode(variant) == TEXT * 50
    variants.close()


def test_unknown_coding_is_refused(opened: Callable[[bytes], OpenFile]) -> None:
    file = opened(TEXT)
    with pytest.raises(ValueError):
        VariantCache().get_or_compress(file.key, "deflate", file.fd, file.size, inline)


def test_large_file_streams_with_flat_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    line = b"<p>The quick brown fox jumps over the lazy dog, again and again.</p>\n"
    block = line * (1024 * 1024 // len(line))
    digest = hashlib.sha256()
    with path.open("wb") as out:
        while out.tell() < 50 * 2**20:
            out.write(block)
            digest.update(block)
    file = OpenFile(path)
    variants = VariantCache(memory_limit_per_item=16 * 1024)
    try:
        tracemalloc.start()
        try:
            variant = variants.get_or_compress(file.key, "gzip", file.fd, file.size, inline)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1 * 2**20, f"peak {peak} bytes"
        assert variant.path is not None
        assert os.path.getsize(variant.path) == variant.size
        decompressor = zlib.decompressobj(31)
        decoded = hashlib.sha256()
        with open(variant.path, "rb") as encoded:
            while chunk := encoded.read(2**20):
                decoded.update(decompressor.decompress(chunk))
        decoded.update(decompressor.flush())
        assert decompressor.eof
        assert decoded.hexdigest() == digest.hexdigest()
    finally:
        file.close()
        variants.close()


# --------------------------------------------------------------------------- the LRU


def test_memory_lru_evicts_by_bytes(opened: Callable[[bytes], OpenFile]) -> None:
    files = [opened(os.urandom(300)) for _ in range(4)]  # incompressible: ~320 B each
    variants = VariantCache(max_memory=1000)
    for file in files[:3]:
        variants.get_or_compress(file.key, "gzip", file.fd, file.size, inline)
    assert len(variants) == 3
    assert variants.get(files[0].key, "gzip") is not None  # now the most recent
    variants.get_or_compress(files[3].key, "gzip", files[3].fd, files[3].size, inline)
    assert variants.get(files[1].key, "gzip") is None  # least recently used
    assert variants.get(files[0].key, "gzip") is not None
    assert variants.get(files[3].key, "gzip") is not None
    assert variants.memory_bytes <= 1000


def test_disk_lru_evicts_by_bytes_and_deletes_files(
    opened: Callable[[bytes], OpenFile], tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    files = [opened(os.urandom(1000)) for _ in range(3)]  # ~1020 B each once encoded
    variants = VariantCache(max_disk=2500, spool_dir=str(spool), memory_limit_per_item=100)
    spooled = [
        variants.get_or_compress(file.key, "gzip", file.fd, file.size, inline) for file in files
    ]
    paths = [variant.path for variant in spooled]
    assert all(path is not None and path.startswith(str(spool)) for path in paths)
    assert variants.get(files[0].key, "gzip") is None
    assert paths[0] is not None and not os.path.exists(paths[0])
    assert all(path is not None and os.path.exists(path) for path in paths[1:])
    assert variants.disk_bytes <= 2500
    assert sorted(str(p) for p in spool.iterdir()) == sorted(str(p) for p in paths[1:])
    variants.close()
    assert list(spool.iterdir()) == []
    assert spool.is_dir()  # a spool_dir we were given is kept


def test_an_oversized_variant_is_served_then_evicted(
    opened: Callable[[bytes], OpenFile],
) -> None:
    big, small = opened(os.urandom(5000)), opened(os.urandom(500))
    variants = VariantCache(max_disk=1000, memory_limit_per_item=100)
    variant = variants.get_or_compress(big.key, "gzip", big.fd, big.size, inline)
    assert variant.path is not None and os.path.exists(variant.path)
    assert variants.get(big.key, "gzip") is variant
    variants.get_or_compress(small.key, "gzip", small.fd, small.size, inline)
    assert variants.get(big.key, "gzip") is None
    assert not os.path.exists(variant.path)
    variants.close()


def test_open_a_spooled_variant_survives_eviction(
    opened: Callable[[bytes], OpenFile],
) -> None:
    files = [opened(TEXT * 100 + os.urandom(2000)) for _ in range(2)]
    variants = VariantCache(max_disk=1, memory_limit_per_item=100)
    first = variants.get_or_compress(files[0].key, "gzip", files[0].fd, files[0].size, inline)
    fd = variants.open(first)
    assert fd is not None
    try:
        variants.get_or_compress(files[1].key, "gzip", files[1].fd, files[1].size, inline)
        assert first.path is not None and not os.path.exists(first.path)
        data = os.pread(fd, first.size + 1, 0)
        assert len(data) == first.size
        assert gzip.decompress(data) == files[0].path.read_bytes()
    finally:
        os.close(fd)
    assert variants.open(first) is None  # evicted before it was opened
    with pytest.raises(ValueError):
        variants.open(Variant("gzip", 1, b"x", None))
    variants.close()


def test_clear_and_close_remove_spool_files(opened: Callable[[bytes], OpenFile]) -> None:
    files = [opened(TEXT * 100) for _ in range(3)]
    variants = VariantCache(memory_limit_per_item=100)
    assert variants.spool_dir is None  # made on first use only
    first = variants.get_or_compress(files[0].key, "gzip", files[0].fd, files[0].size, inline)
    spool_dir = variants.spool_dir
    assert spool_dir is not None and os.path.basename(spool_dir).startswith("sitepeek-")
    variants.clear()
    assert len(variants) == 0 and variants.disk_bytes == 0
    assert first.path is not None and not os.path.exists(first.path)
    for file in files[1:]:
        variants.get_or_compress(file.key, "gzip", file.fd, file.size, inline)
    assert len(os.listdir(spool_dir)) == 2
    variants.close()
    assert not os.path.exists(spool_dir)  # a private spool dir goes entirely
    variants.close()  # idempotent
    with pytest.raises(RuntimeError):
        variants.get_or_compress(files[0].key, "gzip", files[0].fd, files[0].size, inline)


def test_spool_files_do_not_outlive_the_cache(opened: Callable[[bytes], OpenFile]) -> None:
    file = opened(TEXT * 100)
    variants = VariantCache(memory_limit_per_item=100)
    variants.get_or_compress(file.key, "gzip", file.fd, file.size, inline)
    spool_dir = variants.spool_dir
    assert spool_dir is not None and os.listdir(spool_dir)
    del variants
    gc.collect()
    assert not os.path.exists(spool_dir)


# --------------------------------------------------------------------------- offload


def test_compression_runs_inside_offload(opened: Callable[[bytes], OpenFile]) -> None:
    file = opened(TEXT * 100)
    variants = VariantCache()
    calls: list[str] = []
    outer = threading.get_ident()

    def offload(fn: Callable[[], Variant]) -> Variant:
        calls.append("offload")
        result: list[Variant] = []
        worker = threading.Thread(target=lambda: result.append(fn()))
        worker.start()
        worker.join()
        return result[0]

    def encoder(coding: str) -> compression._Encoder:
        calls.append("encode")
        assert threading.get_ident() != outer, "compressed outside offload"
        return original(coding)

    original = compression._new_encoder
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compression, "_new_encoder", encoder)
        variant = variants.get_or_compress(file.key, "gzip", file.fd, file.size, offload)
        assert calls == ["offload", "encode"]
        # A hit is served at once, without offload.
        assert variants.get_or_compress(file.key, "gzip", file.fd, file.size, offload) is variant
    assert calls == ["offload", "encode"]


def test_no_descriptor_leaks(opened: Callable[[bytes], OpenFile]) -> None:
    file = opened(TEXT * 100)
    before = open_fds()
    variants = VariantCache(memory_limit_per_item=100)
    variants.get_or_compress(file.key, "gzip", file.fd, file.size, inline)
    with pytest.raises(FileChanged):
        variants.get_or_compress(("changed",), "gzip", file.fd, file.size + 1, inline)
    variants.close()
    assert open_fds() == before


@pytest.fixture
def slow_encoder() -> Iterator[list[str]]:
    """Make every compression take a while, and record each one."""
    calls: list[str] = []
    original = compression._new_encoder

    def encoder(coding: str) -> compression._Encoder:
        calls.append(coding)
        time.sleep(0.2)
        return original(coding)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compression, "_new_encoder", encoder)
        yield calls


def test_concurrent_threads_compress_once(
    opened: Callable[[bytes], OpenFile], slow_encoder: list[str]
) -> None:
    file = opened(TEXT * 100)
    variants = VariantCache()
    start = threading.Barrier(8)
    results: list[Variant] = []

    def request() -> None:
        start.wait()
        results.append(variants.get_or_compress(file.key, "gzip", file.fd, file.size, inline))

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert slow_encoder == ["gzip"]
    assert len(results) == 8 and all(result is results[0] for result in results)


def test_concurrent_failure_reaches_every_waiter(
    opened: Callable[[bytes], OpenFile], slow_encoder: list[str]
) -> None:
    file = opened(TEXT * 100)
    variants = VariantCache()
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def request() -> None:
        start.wait()
        try:
            variants.get_or_compress(file.key, "gzip", file.fd, file.size + 1, inline)
        except FileChanged as error:
            errors.append(error)

    threads = [threading.Thread(target=request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert slow_encoder == ["gzip"]
    assert len(errors) == 4


def test_greenlets_compress_once_without_blocking_the_hub(
    opened: Callable[[bytes], OpenFile], slow_encoder: list[str]
) -> None:
    gevent = pytest.importorskip("gevent")
    from gevent.threadpool import ThreadPool

    file = opened(TEXT * 100)
    variants = VariantCache()
    pool = ThreadPool(3)  # fewer threads than requests: waiters must not starve the work
    ticks = 0

    def offload(fn: Callable[[], Variant]) -> Variant:
        result: Variant = pool.apply(fn)
        return result

    def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            gevent.sleep(0.01)

    def request() -> Variant:
        return variants.get_or_compress(file.key, "gzip", file.fd, file.size, offload)

    clock = gevent.spawn(ticker)
    try:
        requests = [gevent.spawn(request) for _ in range(6)]
        gevent.joinall(requests, timeout=10, raise_error=True)
    finally:
        clock.kill()
        pool.kill()
    assert slow_encoder == ["gzip"]
    assert all(r.value is requests[0].value for r in requests)
    assert ticks >= 5  # the hub kept running during the 0.2 s compression


# --------------------------------------------------------------------------- sidecars


@pytest.fixture
def asset(tmp_path: Path) -> tuple[Path, os.stat_result]:
    site = tmp_path / "site"
    site.mkdir()
    path = site / "app.js"
    path.write_bytes(TEXT * 20)
    st_result = path.stat()
    os.utime(path, ns=(st_result.st_atime_ns, 1_000_000_000_000_000_000))
    return path, path.stat()


def test_sidecar_found(asset: tuple[Path, os.stat_result]) -> None:
    path, st_result = asset
    sidecar = path.with_name("app.js.gz")
    sidecar.write_bytes(gzip.compress(path.read_bytes()))
    variant = find_sidecar(str(path), st_result.st_mtime_ns, "gzip")
    assert variant is not None
    assert variant == Variant(
        "gzip", sidecar.stat().st_size, None, os.path.realpath(sidecar), variant.source_version
    )
    assert variant.source_version
    etag = variant.etag('"abc"')
    assert etag.startswith('"abc-gzip.') and etag != variant_etag('"abc"', "gzip")
    fd = VariantCache().open(variant)
    assert fd is not None
    os.close(fd)
    assert find_sidecar(str(path), st_result.st_mtime_ns, "br") is None  # absent


def test_sidecar_with_the_same_mtime_is_fresh(asset: tuple[Path, os.stat_result]) -> None:
    path, st_result = asset
    sidecar = path.with_name("app.js.br")
    sidecar.write_bytes(b"\x0b\x01\x80")
    os.utime(sidecar, ns=(st_result.st_atime_ns, st_result.st_mtime_ns))
    assert find_sidecar(str(path), st_result.st_mtime_ns, "br") is not None


def test_sidecar_rejected(asset: tuple[Path, os.stat_result], tmp_path: Path) -> None:
    path, st_result = asset
    site = path.parent
    # older than the file: it was built from an older version
    older = site / "app.js.gz"
    older.write_bytes(gzip.compress(b"old"))
    os.utime(older, ns=(st_result.st_atime_ns, st_result.st_mtime_ns - 1))
    assert find_sidecar(str(path), st_result.st_mtime_ns, "gzip") is None
    # a directory named like a sidecar
    (site / "app.js.br").mkdir()
    assert find_sidecar(str(path), st_result.st_mtime_ns, "br") is None
    # a symlink leaving the directory (even to a valid, newer file)
    outside = tmp_path / "outside.zst"
    outside.write_bytes(b"(\xb5/\xfd")
    (site / "app.js.zst").symlink_to(outside)
    assert find_sidecar(str(path), st_result.st_mtime_ns, "zstd") is None
    # an empty file is no encoding of anything
    empty_site = tmp_path / "empty"
    empty_site.mkdir()
    other = empty_site / "x.css"
    other.write_bytes(TEXT)
    (empty_site / "x.css.gz").write_bytes(b"")
    assert find_sidecar(str(other), other.stat().st_mtime_ns, "gzip") is None
    # never raises
    assert find_sidecar(str(path) + "\x00", st_result.st_mtime_ns, "gzip") is None
    assert find_sidecar(str(path), st_result.st_mtime_ns, "deflate") is None
    assert find_sidecar(str(tmp_path / "missing.js"), st_result.st_mtime_ns, "gzip") is None


def test_sidecar_symlink_within_the_directory(asset: tuple[Path, os.stat_result]) -> None:
    path, st_result = asset
    target = path.with_name("app.min.js.gz")
    target.write_bytes(gzip.compress(path.read_bytes()))
    path.with_name("app.js.gz").symlink_to(target.name)
    variant = find_sidecar(str(path), st_result.st_mtime_ns, "gzip")
    assert variant is not None and variant.path == os.path.realpath(target)


def test_sidecar_of_a_symlinked_file_checks_the_real_directory(
    asset: tuple[Path, os.stat_result], tmp_path: Path
) -> None:
    path, st_result = asset
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = elsewhere / "app.js"
    link.symlink_to(path)
    (elsewhere / "app.js.gz").write_bytes(gzip.compress(b"not the same file"))
    assert find_sidecar(str(link), st_result.st_mtime_ns, "gzip") is None
