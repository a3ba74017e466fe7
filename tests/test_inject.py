"""Tests for putting the reload client into HTML (``sitepeek.inject``)."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sitepeek.inject import SNIPPET_PATH, inject, insertion_point, snippet_tag

PROPERTY_SETTINGS = settings(deadline=None, max_examples=300, database=None)
S = b"<script src=/r.js></script>"


def test_snippet_tag() -> None:
    assert SNIPPET_PATH == "/__sitepeek__/reload.js"
    assert snippet_tag() == b'<script src="/__sitepeek__/reload.js" data-sitepeek></script>'
    assert snippet_tag("/x.js") == b'<script src="/x.js" data-sitepeek></script>'


def test_snippet_tag_escapes_the_path() -> None:
    assert snippet_tag('/a"><b>&.js') == (
        b'<script src="/a&quot;&gt;&lt;b&gt;&amp;.js" data-sitepeek></script>'
    )


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        pytest.param(
            b"<html><body><p>x</p></body></html>",
            b"<html><body><p>x</p>" + S + b"</body></html>",
            id="before-body",
        ),
        pytest.param(b"<P>x</BODY></HTML>", b"<P>x" + S + b"</BODY></HTML>", id="uppercase"),
        pytest.param(b"<p>x</BoDy></hTmL>", b"<p>x" + S + b"</BoDy></hTmL>", id="mixed-case"),
        pytest.param(b"<p>x</body >\n", b"<p>x" + S + b"</body >\n", id="space-before-gt"),
        pytest.param(b"<p>x</body\n\t>", b"<p>x" + S + b"</body\n\t>", id="newline-before-gt"),
        pytest.param(b"<p>x</body/>", b"<p>x" + S + b"</body/>", id="slash"),
        pytest.param(b"x</body a=b>", b"x" + S + b"</body a=b>", id="attributes"),
        pytest.param(
            b"<!-- </body> --><p></body><script>'</body>'</script></body></html>",
            b"<!-- </body> --><p></body><script>'</body>'</script>" + S + b"</body></html>",
            id="last-body-wins",
        ),
        pytest.param(
            b"<p>x</body>trailing</p><p>more</p>",
            b"<p>x" + S + b"</body>trailing</p><p>more</p>",
            id="content-after-body",
        ),
        pytest.param(b"<p>x</html>", b"<p>x" + S + b"</html>", id="only-html"),
        pytest.param(b"a</html>b</HTML >c", b"a</html>b" + S + b"</HTML >c", id="last-html"),
        pytest.param(b"</body>x</html>", S + b"</body>x</html>", id="body-beats-later-html"),
        pytest.param(b"<p>no closing tags", b"<p>no closing tags" + S, id="neither"),
        pytest.param(b"<p>x</bodyx></htmlx>", b"<p>x</bodyx></htmlx>" + S, id="longer-names"),
        pytest.param(b"<p>x</ body>", b"<p>x</ body>" + S, id="not-an-end-tag"),
        pytest.param(b"<p>x</body", b"<p>x" + S + b"</body", id="truncated-end-tag"),
        pytest.param(b"", S, id="empty"),
        pytest.param(b"</body>", S + b"</body>", id="only-the-tag"),
        pytest.param(
            b"\xff\xfe caf\xe9 \x80</body>\x00\xc3",
            b"\xff\xfe caf\xe9 \x80" + S + b"</body>\x00\xc3",
            id="non-utf8-bytes",
        ),
        pytest.param(
            "<p>Ünïcödé</p></body>".encode(),
            "<p>Ünïcödé</p>".encode() + S + b"</body>",
            id="utf8",
        ),
    ],
)
def test_inject(html: bytes, expected: bytes) -> None:
    assert inject(html, S) == expected
    for window in (1, 2, 5, 7):
        assert insertion_point(html, window=window) == len(expected[: expected.index(S)])


def test_inject_empty_snippet() -> None:
    assert inject(b"<p></body>", b"") == b"<p></body>"


def test_large_document_is_fast() -> None:
    """Megabytes of HTML: the usual case touches only the tail, the worst case one pass."""
    big = b"<html><body>" + b"<p>Lorem ipsum dolor sit amet.</p>\n" * 300_000  # ~10 MB
    normal = big + b"</body></html>\n"
    no_body = big + b"</html>"
    no_tags = big
    body_at_start = b"<html><body></body>" + big
    for html in (normal, no_body, no_tags, body_at_start):
        started = time.perf_counter()
        for _ in range(5):
            out = inject(html, S)
        elapsed = (time.perf_counter() - started) / 5
        assert len(out) == len(html) + len(S)
        assert elapsed < 0.25, elapsed
    started = time.perf_counter()
    for _ in range(100):
        insertion_point(normal)
    assert (time.perf_counter() - started) / 100 < 0.001


# -- properties ------------------------------------------------------------------------
# Pieces that make the interesting cases likely: tags in any case, near misses, bytes
# that are not UTF-8, and the whitespace that may end a tag name.
# fmt: off
PIECES = st.sampled_from(
    [
        b"</body>", b"</BODY>", b"</Body >", b"</body\n>", b"</body", b"</bodyx>", b"</html>",
        b"</HTML>", b"</html", b"</htmlx>", b"</", b"<", b">", b"body", b"html", b" ", b"\t",
        b"/", b"<p>", b"\xff", b"\xc3", b"x",
    ]
)
# fmt: on
documents = st.lists(PIECES | st.binary(max_size=8), max_size=30).map(b"".join)
# A reference implementation: one regex over the whole document.
END_TAG = r"</{}(?=[\t\n\f\r />]|\Z)"
BODY_RE = re.compile(END_TAG.format("body").encode(), re.IGNORECASE)
HTML_RE = re.compile(END_TAG.format("html").encode(), re.IGNORECASE)


def reference_point(html: bytes) -> int:
    for pattern in (BODY_RE, HTML_RE):
        starts = [m.start() for m in pattern.finditer(html)]
        if starts:
            return starts[-1]
    return len(html)


@PROPERTY_SETTINGS
@given(html=documents, snippet=st.binary(max_size=40) | st.just(S))
def test_snippet_inserted_exactly_once(html: bytes, snippet: bytes) -> None:
    out = inject(html, snippet)
    assert len(out) == len(html) + len(snippet)
    at = insertion_point(html)
    assert 0 <= at <= len(html)
    assert out[at : at + len(snippet)] == snippet
    assert out[:at] + out[at + len(snippet) :] == html


@PROPERTY_SETTINGS
@given(html=documents, window=st.integers(1, 40))
def test_insertion_point_matches_reference(html: bytes, window: int) -> None:
    # Small windows put tags across every window boundary.
    assert insertion_point(html, window=window) == reference_point(html)
    assert insertion_point(html) == reference_point(html)


@PROPERTY_SETTINGS
@given(html=st.binary(max_size=200))
def test_arbitrary_bytes(html: bytes) -> None:
    at = insertion_point(html)
    assert at == reference_point(html)
    assert inject(html, S) == html[:at] + S + html[at:]
