"""Compression over real sockets, for every worker model (issue 4, README "Compression").

Every compressed body is decompressed and compared byte for byte with the file (for
HTML, with what sitepeek serves: the file plus the live-reload client).
"""

from __future__ import annotations

import gzip
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import brotli
import pytest
import zstandard

from conftest import Response, Server, request, served, start_server

ALL = "br, zstd, gzip"
WORDS = [
    *("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"),
    *("lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon"),
    *("phi", "chi", "psi", "omega", "function", "const", "let", "return", "await"),
]


# -- helpers ---------------------------------------------------------------------------
def decode(response: Response) -> bytes:
    """The body with its Content-Encoding undone (identity when there is none)."""
    coding = response.header("content-encoding")
    body = response.body
    if coding is None:
        return body
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "br":
        return bytes(brotli.decompress(body))
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    raise AssertionError(f"unexpected Content-Encoding {coding!r}")


def get(srv: Server, path: str, accept: str | None = None, **extra: str) -> Response:
    headers = dict(extra)
    if accept is not None:
        headers["Accept-Encoding"] = accept
    return request(srv, "GET", path, headers)


def vary_ae(response: Response) -> bool:
    vary = response.header("vary") or ""
    return "accept-encoding" in [v.strip().lower() for v in vary.split(",")]


def check_coded(response: Response, expected: bytes, coding: str | None) -> None:
    """200, the given coding (None: identity), and a body that decodes to ``expected``."""
    assert response.status == 200, response
    assert response.header("content-encoding") == coding
    assert int(response.header("content-length") or -1) == len(response.body)
    assert decode(response) == expected


def js_text(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    lines = [
        f"const {rng.choice(WORDS)}_{i} = '{' '.join(rng.choices(WORDS, k=8))}';\n"
        for i in range(n)
    ]
    return "".join(lines).encode()


def set_mtime(path: Path, when: float) -> None:
    os.utime(path, (when, when))


def build_own_site(root: Path) -> Path:
    """Files the session site does not have: big binaries, archives, sidecars, HTML."""
    text = js_text(200, 1)
    (root / "page.html").write_text(
        "<!doctype html><html><body>" + "<p>paragraph of text</p>\n" * 80 + "</body></html>\n"
    )
    # Compressible content behind types that must never be compressed.
    (root / "image.webp").write_bytes(b"RIFF\x00\x10\x00\x00WEBPVP8 " + b"a" * 4000)
    (root / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"b" * 4000)
    (root / "font.woff2").write_bytes(b"wOF2" + b"c" * 4000)
    (root / "archive.gz").write_bytes(gzip.compress(text, compresslevel=0, mtime=0))
    (root / "notes.txt.gz").write_bytes(gzip.compress(text, compresslevel=0, mtime=0))
    for name in ("head-first.js", "get-first.js", "cond.js", "range.js", "etags.js"):
        (root / name).write_bytes(text)
    # 3 MB of varied text: every coding's output is over 1 MiB, so it is spooled to disk.
    rng = random.Random(3)
    big = bytearray()
    while len(big) < 3 * 1024 * 1024:
        big += (" ".join(rng.choices(WORDS, k=4)) + f" {rng.getrandbits(128):x}\n").encode()
    (root / "big.txt").write_bytes(bytes(big))
    return root


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory, worker_model: str) -> Iterator[Server]:
    root = tmp_path_factory.mktemp(f"csite-{worker_model}") / "root"
    root.mkdir()
    srv = start_server(build_own_site(root), worker_model)
    yield srv
    code = srv.stop()
    assert code == 0, srv.stderr_text()
    assert "Traceback" not in srv.stderr_text()


@pytest.fixture(scope="module")
def plain(own: Server, worker_model: str) -> Iterator[Server]:
    """A --no-compress server over the same files."""
    srv = start_server(own.root, worker_model, "--no-compress")
    yield srv
    code = srv.stop()
    assert code == 0, srv.stderr_text()
    assert "Traceback" not in srv.stderr_text()


# -- negotiation (shared site: app.js is 950 bytes of JavaScript) ----------------------
@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        (None, None),
        ("", None),
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        (ALL, "br"),
        ("gzip, br", "br"),
        ("gzip;q=0", None),
        ("gzip;q=0, *", "br"),
        ("gzip;q=0, br;q=0, *", "zstd"),
        ("br;q=0.5, gzip", "gzip"),
        ("br;q=0.5, zstd;q=0.6, gzip;q=0.4", "zstd"),
        ("*", "br"),
        ("*;q=0.5, gzip", "gzip"),
        ("identity", None),
        ("identity, gzip;q=0.5", None),
        ("identity;q=0.5, gzip", "gzip"),
        ("identity;q=0, *;q=0", None),  # documented: identity anyway, never 406
        ("gzip;q=0, identity;q=0", None),
        ("GZIP", "gzip"),
        ("Gzip;Q=1", "gzip"),
        ("BR, GZip", "br"),
        ("x-gzip", "gzip"),
        ("foo", None),
        ("foo, bar;q=1, gzip", "gzip"),
        ("compress, deflate", None),
        ("snappy;q=1, br;q=0.1", "br"),
        ("gzip;q=2", None),  # a malformed element is ignored
    ],
)
def test_negotiation(server: Server, site: Path, accept: str | None, coding: str | None) -> None:
    response = get(server, "/app.js", accept)
    check_coded(response, (site / "app.js").read_bytes(), coding)
    assert vary_ae(response), response.headers


def test_html_is_compressed_with_injected_client(own: Server) -> None:
    for coding in ("gzip", "br", "zstd"):
        response = get(own, "/page.html", coding)
        check_coded(response, served(own.root / "page.html"), coding)
        assert vary_ae(response)
    identity = get(own, "/page.html", "identity")
    check_coded(identity, served(own.root / "page.html"), None)
    assert vary_ae(identity)


# -- Vary -------------------------------------------------------------------------------
def test_vary_on_both_variants_of_a_compressible_file(server: Server, site: Path) -> None:
    data = (site / "app.js").read_bytes()
    compressed = get(server, "/app.js", "gzip")
    check_coded(compressed, data, "gzip")
    identity = get(server, "/app.js")
    check_coded(identity, data, None)
    assert vary_ae(compressed) and vary_ae(identity)
    assert len(compressed.body) < len(data)


@pytest.mark.parametrize("path", ["/image.webp", "/font.woff2", "/style.css", "/data.json"])
def test_no_vary_on_small_or_incompressible_files_shared(
    server: Server, site: Path, path: str
) -> None:
    response = get(server, path, ALL)
    check_coded(response, (site / path.lstrip("/")).read_bytes(), None)
    assert response.header("vary") is None


@pytest.mark.parametrize(
    "path", ["/image.webp", "/photo.png", "/font.woff2", "/archive.gz", "/notes.txt.gz"]
)
def test_never_compressed(own: Server, path: str) -> None:
    data = (own.root / path.lstrip("/")).read_bytes()
    assert len(data) >= 256 and len(gzip.compress(data)) < len(data)  # would shrink
    for accept in (ALL, "gzip", "*"):
        response = get(own, path, accept)
        check_coded(response, data, None)
        assert response.header("vary") is None


# -- ETags and conditional requests -----------------------------------------------------
def test_etag_strong_and_distinct_per_coding(own: Server) -> None:
    data = (own.root / "etags.js").read_bytes()
    tags = {}
    for coding in (None, "gzip", "br", "zstd"):
        response = get(own, "/etags.js", coding or "identity")
        check_coded(response, data, coding)
        tag = response.header("etag")
        assert tag is not None and tag.startswith('"') and tag.endswith('"'), tag
        tags[coding] = tag
        # Stable: the same variant again has the same tag (and the same bytes).
        again = get(own, "/etags.js", coding or "identity")
        assert again.header("etag") == tag and again.body == response.body
    assert len(set(tags.values())) == 4, tags


def test_conditional_get_on_each_variant(own: Server) -> None:
    data = (own.root / "cond.js").read_bytes()
    gz = get(own, "/cond.js", "gzip")
    check_coded(gz, data, "gzip")
    ident = get(own, "/cond.js")
    check_coded(ident, data, None)
    gz_tag, id_tag = gz.header("etag"), ident.header("etag")
    assert gz_tag and id_tag and gz_tag != id_tag

    hit = get(own, "/cond.js", "gzip", **{"If-None-Match": gz_tag})
    assert hit.status == 304 and hit.body == b""
    assert hit.header("etag") == gz_tag
    assert vary_ae(hit)

    hit = get(own, "/cond.js", None, **{"If-None-Match": id_tag})
    assert hit.status == 304 and hit.body == b""
    assert hit.header("etag") == id_tag
    assert vary_ae(hit)

    hit = get(own, "/cond.js", "identity", **{"If-None-Match": f'"nope", {id_tag}'})
    assert hit.status == 304

    # A tag of the other variant does not validate this one.
    miss = get(own, "/cond.js", "gzip", **{"If-None-Match": id_tag})
    check_coded(miss, data, "gzip")
    miss = get(own, "/cond.js", None, **{"If-None-Match": gz_tag})
    check_coded(miss, data, None)


def test_head_has_exactly_the_headers_of_get(own: Server) -> None:
    def without_date(response: Response) -> list[tuple[str, str]]:
        return [(k.lower(), v) for k, v in response.raw_headers if k.lower() != "date"]

    # HEAD before any GET (cold cache) and after (warm cache).
    for path, head_first in (("/head-first.js", True), ("/get-first.js", False)):
        for accept in ("gzip", "br", "zstd"):
            if head_first:
                head = request(own, "HEAD", path, {"Accept-Encoding": accept})
                full = get(own, path, accept)
            else:
                full = get(own, path, accept)
                head = request(own, "HEAD", path, {"Accept-Encoding": accept})
            check_coded(full, (own.root / path.lstrip("/")).read_bytes(), accept)
            assert head.status == 200 and head.body == b""
            assert without_date(head) == without_date(full)


def test_range_gets_the_identity_representation(own: Server) -> None:
    data = (own.root / "range.js").read_bytes()
    for accept in ("gzip", ALL, "*"):
        response = get(own, "/range.js", accept, Range="bytes=10-109")
        assert response.status == 206, response
        assert response.header("content-encoding") is None
        assert response.header("content-range") == f"bytes 10-109/{len(data)}"
        assert response.body == data[10:110]
        assert vary_ae(response)
        suffix = get(own, "/range.js", accept, Range="bytes=-50")
        assert suffix.status == 206 and suffix.body == data[-50:]
        assert suffix.header("content-encoding") is None


# -- precompressed sidecars -------------------------------------------------------------
def _sidecar_file(root: Path, name: str, seed: int) -> bytes:
    data = js_text(150, seed)
    (root / name).write_bytes(data)
    return data


def test_fresh_sidecars_are_served_as_they_are(own: Server) -> None:
    root = own.root
    data = _sidecar_file(root, "side.js", 10)
    past = time.time() - 100
    set_mtime(root / "side.js", past)
    # Distinguishable from anything compressed on the fly (gzip -6 with mtime 0,
    # brotli quality 5, zstd level 3), yet each decodes to the file.
    gz = gzip.compress(data, compresslevel=9, mtime=123456789)
    br = bytes(brotli.compress(data, quality=0))
    zst = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(data)
    assert br != bytes(brotli.compress(data, quality=5))
    for suffix, body in ((".gz", gz), (".br", br), (".zst", zst)):
        (root / f"side.js{suffix}").write_bytes(body)
        set_mtime(root / f"side.js{suffix}", past + 10)

    for accept, coding, body in (
        ("gzip", "gzip", gz),
        ("br", "br", br),
        ("zstd", "zstd", zst),
        (ALL, "br", br),
        ("gzip, zstd;q=0.5", "gzip", gz),
    ):
        response = get(own, "/side.js", accept)
        check_coded(response, data, coding)
        assert response.body == body, (accept, len(response.body), len(body))
        assert vary_ae(response)
        head = request(own, "HEAD", "/side.js", {"Accept-Encoding": accept})
        assert head.header("content-length") == str(len(body))
        assert head.header("etag") == response.header("etag")
        hit = get(own, "/side.js", accept, **{"If-None-Match": response.header("etag") or ""})
        assert hit.status == 304

    # A Range request still gets the file's own bytes.
    ranged = get(own, "/side.js", "gzip", Range="bytes=0-9")
    assert ranged.status == 206 and ranged.body == data[:10]
    assert ranged.header("content-encoding") is None


def test_sidecar_with_same_mtime_is_served(own: Server) -> None:
    root = own.root
    data = _sidecar_file(root, "same.js", 11)
    gz = gzip.compress(data, compresslevel=9, mtime=42)
    (root / "same.js.gz").write_bytes(gz)
    past = time.time() - 100
    set_mtime(root / "same.js", past)
    set_mtime(root / "same.js.gz", past)
    response = get(own, "/same.js", "gzip")
    check_coded(response, data, "gzip")
    assert response.body == gz


def test_older_sidecar_is_ignored(own: Server) -> None:
    root = own.root
    data = _sidecar_file(root, "stale.js", 12)
    # The sidecars hold an older version of the file: serving them would be wrong.
    old = js_text(150, 99)
    gz = gzip.compress(old, mtime=7)
    br = bytes(brotli.compress(old, quality=11))
    (root / "stale.js.gz").write_bytes(gz)
    (root / "stale.js.br").write_bytes(br)
    now = time.time()
    set_mtime(root / "stale.js.gz", now - 200)
    set_mtime(root / "stale.js.br", now - 200)
    set_mtime(root / "stale.js", now - 100)
    for coding, sidecar in (("gzip", gz), ("br", br)):
        response = get(own, "/stale.js", coding)
        check_coded(response, data, coding)  # compressed on the fly from the file
        assert response.body != sidecar


def test_sidecar_appearing_and_going_stale(own: Server) -> None:
    root = own.root
    data = _sidecar_file(root, "later.js", 13)
    now = time.time()
    set_mtime(root / "later.js", now - 100)
    first = get(own, "/later.js", "br")
    check_coded(first, data, "br")  # on the fly: no sidecar yet
    br = bytes(brotli.compress(data, quality=0))
    assert br != first.body
    (root / "later.js.br").write_bytes(br)
    set_mtime(root / "later.js.br", now - 50)
    second = get(own, "/later.js", "br")
    check_coded(second, data, "br")
    assert second.body == br
    assert second.header("etag") != first.header("etag")
    # The file changes after the sidecar was built: the sidecar is stale now.
    new = js_text(150, 14)
    (root / "later.js").write_bytes(new)
    set_mtime(root / "later.js", now - 10)
    third = get(own, "/later.js", "br")
    check_coded(third, new, "br")
    assert third.body != br


def test_rewritten_sidecar_gets_new_bytes_and_etag(own: Server) -> None:
    root = own.root
    data = _sidecar_file(root, "rebuilt.js", 16)
    now = time.time()
    set_mtime(root / "rebuilt.js", now - 100)
    tags = []
    for i, stamp in enumerate((111, 222222)):  # header mtime: different bytes, same content
        gz = gzip.compress(data, compresslevel=9, mtime=stamp)
        (root / "rebuilt.js.gz").write_bytes(gz)
        set_mtime(root / "rebuilt.js.gz", now - 50 + i)
        response = get(own, "/rebuilt.js", "gzip")
        check_coded(response, data, "gzip")
        assert response.body == gz
        tags.append(response.header("etag"))
    assert tags[0] != tags[1]


def test_sidecar_of_a_large_file(own: Server) -> None:
    """Above SMALL_BODY the entity is cached without its body: another code path."""
    root = own.root
    data = js_text(5000, 17)  # about 320 KB: above 64 KiB and the inline limit
    assert len(data) > 256 * 1024
    (root / "large.js").write_bytes(data)
    now = time.time()
    set_mtime(root / "large.js", now - 100)
    for _ in range(2):
        check_coded(get(own, "/large.js", "br"), data, "br")  # on the fly, then cached
    br = bytes(brotli.compress(data, quality=1))
    (root / "large.js.br").write_bytes(br)
    set_mtime(root / "large.js.br", now - 50)
    for _ in range(2):
        response = get(own, "/large.js", "br")
        check_coded(response, data, "br")
        assert response.body == br
    set_mtime(root / "large.js", now - 10)  # touched: the sidecar is older now
    for _ in range(2):
        response = get(own, "/large.js", "br")
        check_coded(response, data, "br")
        assert response.body != br


def test_sidecar_itself_is_served_raw(own: Server) -> None:
    root = own.root
    data = _sidecar_file(root, "raw.js", 15)
    gz = gzip.compress(data, mtime=1)
    (root / "raw.js.gz").write_bytes(gz)
    response = get(own, "/raw.js.gz", ALL)
    check_coded(response, gz, None)


# -- changing files ---------------------------------------------------------------------
@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_changed_file_gets_fresh_body_and_etag(own: Server, coding: str) -> None:
    path = own.root / f"change-{coding}.js"
    versions = [js_text(100, 20), js_text(120, 21)]
    same_size = bytearray(versions[1])
    same_size[:5] = b"/*x*/"
    versions.append(bytes(same_size))  # same length, different bytes
    tags = []
    now = time.time()
    for i, content in enumerate(versions):
        path.write_bytes(content)
        set_mtime(path, now - 100 + i)
        for _ in range(2):  # twice: the second may come from the cache
            response = get(own, path.name and f"/{path.name}", coding)
            check_coded(response, content, coding)
            tags.append(response.header("etag"))
        identity = get(own, f"/{path.name}", "identity")
        check_coded(identity, content, None)
    assert tags[0] == tags[1] and tags[2] == tags[3] and tags[4] == tags[5]
    assert len({tags[0], tags[2], tags[4]}) == 3, tags


def test_changed_html_gets_fresh_body(own: Server) -> None:
    path = own.root / "changing.html"
    now = time.time()
    for i, word in enumerate(("first", "second")):
        path.write_text(f"<!doctype html><html><body>{('<p>' + word + '</p>') * 60}</body></html>")
        set_mtime(path, now - 100 + i)
        response = get(own, "/changing.html", "gzip")
        check_coded(response, served(path), "gzip")


# -- large files ------------------------------------------------------------------------
@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_large_text_file(own: Server, coding: str) -> None:
    data = (own.root / "big.txt").read_bytes()
    for _ in range(2):  # compressed, then from the cache (memory or spool file)
        response = get(own, "/big.txt", coding)
        check_coded(response, data, coding)
        assert len(response.body) < len(data)
        assert vary_ae(response)
    head = request(own, "HEAD", "/big.txt", {"Accept-Encoding": coding})
    assert head.header("content-length") == str(len(response.body))
    assert head.header("etag") == response.header("etag")


def test_large_file_range_is_identity(own: Server) -> None:
    data = (own.root / "big.txt").read_bytes()
    response = get(own, "/big.txt", "gzip", Range="bytes=2000000-2000999")
    assert response.status == 206
    assert response.header("content-encoding") is None
    assert response.body == data[2000000:2001000]


# -- --no-compress ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["/page.html", "/head-first.js", "/big.txt", "/image.webp", "/archive.gz"]
)
def test_no_compress(plain: Server, path: str) -> None:
    file = plain.root / path.lstrip("/")
    expected = served(file)
    for accept in (ALL, "gzip", "*", "identity;q=0, *;q=0"):
        response = get(plain, path, accept)
        check_coded(response, expected, None)
        assert response.header("vary") is None
    head = request(plain, "HEAD", path, {"Accept-Encoding": ALL})
    assert head.header("content-encoding") is None and head.header("vary") is None
