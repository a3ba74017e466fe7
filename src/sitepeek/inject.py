"""Put the live-reload client into an HTML document (pure functions, bytes in and out).

The client is an external script (:func:`snippet_tag`), never inline code, so a page
whose Content-Security-Policy allows only ``script-src 'self'`` still reloads.

Documents are bytes in whatever encoding they declare; the search only looks at the
ASCII bytes of ``</body`` and ``</html``, so any ASCII-compatible encoding (UTF-8,
latin-1, windows-1252...) comes through untouched.
"""

from __future__ import annotations

from html import escape

__all__ = ["SNIPPET_PATH", "inject", "insertion_point", "snippet_tag"]

SNIPPET_PATH = "/__sitepeek__/reload.js"

_BODY_END = b"</body"
_HTML_END = b"</html"
# HTML tokenizer, "tag name state": a tag name ends at whitespace, "/" or ">", so
# "</body >" and "</BODY\n>" close the body and "</bodyx>" does not. The end of the
# document counts too: a truncated "</body" must not swallow a snippet appended after it.
_TAG_NAME_END = frozenset(b"\t\n\f\r />")
# Most pages end with "</body></html>" and a little whitespace: the first window
# covers them; later windows double, so a document is lowercased about once in all.
_FIRST_WINDOW = 4096


def snippet_tag(path: str = SNIPPET_PATH) -> bytes:
    """The ``<script>`` element that loads the reload client from ``path``."""
    return f'<script src="{escape(path)}" data-sitepeek></script>'.encode()


def inject(html: bytes, snippet: bytes) -> bytes:
    """``html`` with ``snippet`` inserted at :func:`insertion_point`. Never raises."""
    at = insertion_point(html)
    return b"".join((html[:at], snippet, html[at:]))


def insertion_point(html: bytes, *, window: int = _FIRST_WINDOW) -> int:
    """Where the snippet goes: before the last ``</body``, else the last ``</html``,
    else at the end (``len(html)``). Tag names match case-insensitively.

    The document is searched from its end in windows that double in size, so the
    usual page costs one small lowercased slice, and a page without ``</body``
    costs one pass however many tags it lacks. ``window`` is the first window's size.
    """
    html_at = -1
    end = len(html)
    size = max(window, 1)
    while end > 0:
        start = max(0, end - size)
        # Search matches that start in [start, end): reach far enough past ``end`` to
        # hold a needle that starts just before it.
        chunk = html[start : end + len(_BODY_END) - 1].lower()
        body_at = _last_end_tag(html, chunk, start, _BODY_END)
        if body_at >= 0:
            return body_at
        if html_at < 0:
            html_at = _last_end_tag(html, chunk, start, _HTML_END)
        end = start
        size *= 2
    return html_at if html_at >= 0 else len(html)


def _last_end_tag(html: bytes, chunk: bytes, offset: int, needle: bytes) -> int:
    """Index in ``html`` of the last end tag ``needle`` in ``chunk`` (which starts at
    ``offset``), or -1."""
    stop = len(chunk)
    while (pos := chunk.rfind(needle, 0, stop)) >= 0:
        after = offset + pos + len(needle)
        if after == len(html) or html[after] in _TAG_NAME_END:
            return offset + pos
        stop = pos + len(needle) - 1  # any earlier occurrence
    return -1
