"""Tests for sitepeek.rules: ``_redirects`` and ``_headers`` parsing, matching, reloading."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Collection
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sitepeek.rules
from sitepeek.rules import (
    HeaderRule,
    RuleMatch,
    RuleSet,
    RulesFile,
    _canonical,
    _Wildcard,
    parse_headers,
    parse_redirects,
)

# One _redirects with every rule kind; the end-to-end test of the handler reuses it with
# EXAMPLE_FILES as the site and checks EXAMPLE_CASES over real sockets.
EXAMPLE_REDIRECTS = """\
# sitepeek example _redirects: every rule kind; top to bottom, the first match wins.
/home                  /                                # no status: 301
/old-blog/*            /blog/:splat                     301
/temporary             /elsewhere                       302
/see-other             /result                          303
/keep-method           /new-endpoint                    307
/keep-method-forever   /new-endpoint                    308
/news/:year/:month     /archive/:year-:month.html       301
/store  id=:id         /products/:id                    301
/with-query            /target?from=rule                301
/caf%C3%A9             /cafe                            301
/docs/*                https://docs.example.com/:splat  302
/shadowed.html         /other.html                      301
/forced.html           /other.html                      301!
/legacy.html           /modern.html                     200!
/app/*                 /app/index.html                  200
/en/*                  /en/404.html                     404
/closed/*              /closed.html                     404!
/api/*                 https://api.example.com/:splat   200
/broken                /x                               299
"""

# The files of the example site, relative to its root.
EXAMPLE_FILES: tuple[str, ...] = (
    "index.html",
    "shadowed.html",
    "forced.html",
    "other.html",
    "legacy.html",
    "modern.html",
    "app/index.html",
    "en/404.html",
    "en/about.html",
    "closed.html",
    "closed/page.html",
)

# (request path + query, expected status, expected Location for a redirect / path of
# the file served for 200 and 404; "" for a 404 with no rule and no file behind it).
EXAMPLE_CASES: list[tuple[str, int, str]] = [
    ("/home", 301, "/"),
    ("/home/", 301, "/"),  # one trailing slash is ignored
    ("/home?utm_source=x", 301, "/?utm_source=x"),  # the query is passed on
    ("/old-blog/2020/post", 301, "/blog/2020/post"),
    ("/old-blog/2020/post/?page=2", 301, "/blog/2020/post/?page=2"),
    ("/old-blog", 301, "/blog/"),  # the splat may be empty
    ("/temporary", 302, "/elsewhere"),
    ("/see-other", 303, "/result"),
    ("/keep-method", 307, "/new-endpoint"),
    ("/keep-method-forever", 308, "/new-endpoint"),
    ("/news/2024/05", 301, "/archive/2024-05.html"),
    ("/news/2024/%E2%9C%93", 301, "/archive/2024-%E2%9C%93.html"),  # escapes kept
    ("/news/2024", 404, ""),  # a placeholder is exactly one segment
    ("/store?id=42", 301, "/products/42?id=42"),
    ("/store?other=1", 404, ""),  # the query condition is not met
    ("/with-query?utm=1", 301, "/target?from=rule"),  # the target's own query wins
    ("/caf%c3%a9", 301, "/cafe"),  # escapes compare by value
    ("/docs/guide/intro?v=2", 302, "https://docs.example.com/guide/intro?v=2"),
    ("/shadowed.html", 200, "/shadowed.html"),  # a file shadows a non-forced rule
    ("/forced.html", 301, "/other.html"),  # but not a forced one
    ("/legacy.html", 200, "/modern.html"),  # forced rewrite over an existing file
    ("/app/settings/profile", 200, "/app/index.html"),
    ("/app/settings?tab=2", 200, "/app/index.html"),
    ("/en/about.html", 200, "/en/about.html"),
    ("/en/missing", 404, "/en/404.html"),
    ("/closed/page.html", 404, "/closed.html"),  # forced 404 over an existing file
    ("/api/users", 404, ""),  # proxy rule skipped with a warning
    ("/broken", 404, ""),  # malformed rule skipped with a warning
]

EXAMPLE_WARNINGS = (
    "_redirects:19: proxying (status 200 to an external URL) is not supported; line skipped",
    "_redirects:20: unknown status 299; line skipped",
)

# A Location the handler can send as is: printable ASCII, never "//host" or "/\host".
SAFE_LOCAL = re.compile(r"/(?![/\\])[\x21-\x7e]*|/")


def outcome(rules: RuleSet, url: str, files: Collection[str]) -> tuple[int, str]:
    """What the handler does with ``url``, as EXAMPLE_CASES spells it."""
    path, _, query = url.partition("?")
    exists = path.lstrip("/") in files
    match = rules.match_redirect(path, query or None, file_exists=lambda: exists)
    if match is not None:
        return match.status, match.target
    return (200, path) if exists else (404, "")


def only(rules: RuleSet, path: str, query: str | None = None) -> RuleMatch | None:
    return rules.match_redirect(path, query)


# --- The example ----------------------------------------------------------------------


@pytest.mark.parametrize(("url", "status", "target"), EXAMPLE_CASES)
def test_example_cases(url: str, status: int, target: str) -> None:
    rules = RuleSet.parse(EXAMPLE_REDIRECTS)
    assert outcome(rules, url, EXAMPLE_FILES) == (status, target)


def test_example_warnings() -> None:
    assert RuleSet.parse(EXAMPLE_REDIRECTS).warnings == EXAMPLE_WARNINGS


def test_example_parses_every_kind() -> None:
    rules, _ = parse_redirects(EXAMPLE_REDIRECTS)
    assert {rule.status for rule in rules} == {200, 301, 302, 303, 307, 308, 404}
    assert {(rule.status, rule.force) for rule in rules} >= {(301, True), (200, True)}
    assert [rule.line for rule in rules] == list(range(2, 19))


# --- Parsing _redirects ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "status", "force"),
    [
        ("/a /b", 301, False),
        ("/a /b 301", 301, False),
        ("/a /b 302", 302, False),
        ("/a /b 303", 303, False),
        ("/a /b 307", 307, False),
        ("/a /b 308", 308, False),
        ("/a /b 200", 200, False),
        ("/a /b 404", 404, False),
        ("/a /b 301!", 301, True),
        ("/a /b 200!", 200, True),
        ("/a /b 404!", 404, True),
        ("\t /a \t /b \t 302 \t", 302, False),
        ("/a /b 302 # inline comment 404", 302, False),
        ("/a /b #301", 301, False),
        ("/a https://example.com/b 308", 308, False),
        ("/a HTTP://example.com/b 302!", 302, True),
    ],
)
def test_status_and_force(line: str, status: int, force: bool) -> None:
    rules = RuleSet.parse(line)
    assert rules.warnings == ()
    match = only(rules, "/a")
    assert match is not None
    assert (match.status, match.force, match.line) == (status, force, 1)


@pytest.mark.parametrize(
    ("line", "warning"),
    [
        ("/a", "missing target (a path starting with / or an http(s):// URL); line skipped"),
        ("/a 301", "missing target (a path starting with / or an http(s):// URL); line skipped"),
        ("/a b", "missing target (a path starting with / or an http(s):// URL); line skipped"),
        ("/a /b 299", "unknown status 299; line skipped"),
        ("/a /b 2000000", "unknown status 2000000; line skipped"),
        ("/a /b " + "9" * 5000, f"unknown status {'9' * 60}...; line skipped"),
        ("/a /b 3O1", "expected a status code after the target, found '3O1'; line skipped"),
        ("/a /b !", "expected a status code after the target, found '!'; line skipped"),
        (
            "/a /b 302 Country=au",
            "condition 'Country=au' cannot be evaluated by a local preview; line skipped",
        ),
        (
            "/a /b 200! Role=admin",
            "condition 'Role=admin' cannot be evaluated by a local preview; line skipped",
        ),
        ("/a /b 302 extra", "unexpected 'extra' after the status; line skipped"),
        ("a /b", "the source 'a' must start with /; line skipped"),
        (
            "https://blog.example.com/* /blog/:splat",
            "a source with a host (domain-level rule) is not supported; line skipped",
        ),
        (
            "/a?x=1 /b",
            "write query conditions after the source as key=:name, not with ?; line skipped",
        ),
        (
            "/a/*/b /c",
            "'*' is supported only as the whole last segment of the source; line skipped",
        ),
        ("/a* /c", "'*' is supported only as the whole last segment of the source; line skipped"),
        ("/a/:x/:x /c", ":x is bound twice; line skipped"),
        ("/a/:splat /c", ":splat is reserved for the '*' at the end of the source; line skipped"),
        ("/a x=:x y=:x /c", ":x is bound twice; line skipped"),
        ("/a =1 /c", "query condition '=1' has no parameter name; line skipped"),
        (
            "/api/* https://api.example.com/:splat 200",
            "proxying (status 200 to an external URL) is not supported; line skipped",
        ),
        ("/a https://example.com/ 404", "a 404 rule needs a local target path; line skipped"),
        ("/a /:nope 301", ":nope in the target is not bound by the source; kept as text"),
    ],
)
def test_malformed_line(line: str, warning: str) -> None:
    text = f"# header comment\n\n/ok /fine\n{line}\n/ok2 /fine2\n"
    rules = RuleSet.parse(text)
    assert rules.warnings == (f"_redirects:4: {warning}",)
    # The rest of the file still applies.
    assert [m.target for m in rules.matching_rules("/ok")] == ["/fine"]
    assert [m.target for m in rules.matching_rules("/ok2")] == ["/fine2"]


def test_unbound_target_placeholder_is_kept_as_text() -> None:
    rules = RuleSet.parse("/a/:b /x/:c/:b")
    match = only(rules, "/a/1")
    assert match is not None
    assert match.target == "/x/:c/1"


def test_comments_blank_lines_crlf_bom() -> None:
    text = "\ufeff# comment\r\n\r\n   \r\n  # indented comment\r\n/a /b 302\r\n#/c /d\r\n"
    rules, warnings = parse_redirects(text)
    assert warnings == ()
    assert [(rule.line, rule.status) for rule in rules] == [(5, 302)]


def test_line_numbers_count_every_line() -> None:
    rules = RuleSet.parse("\n\n# c\n/a /b 999\n\n/c /d 1\n")
    assert rules.warnings == (
        "_redirects:4: unknown status 999; line skipped",
        "_redirects:6: unknown status 1; line skipped",
    )


# --- Matching _redirects --------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "url", "target"),
    [
        ("/a/:x/:y /b/:y/:x", "/a/1/2", "/b/2/1"),
        ("/a/:x /b/:x.html", "/a/p%20q", "/b/p%20q.html"),
        ("/a/:x /b-:x-:x", "/a/1", "/b-1-1"),
        ("/a/:id /b/:identity/:id", "/a/1", "/b/:identity/1"),
        ("/a/:x_1 /b/:x_1", "/a/v", "/b/v"),
        ("/a/* /b/:splat", "/a/x/y/z", "/b/x/y/z"),
        ("/a/* /b/:splat", "/a/x/y/z/", "/b/x/y/z/"),
        ("/a/* /b/:splat", "/a/", "/b/"),
        ("/a/* /b/:splat", "/a", "/b/"),
        ("/a/* /b", "/a/x", "/b"),
        ("/* /index.html 200", "/", "/index.html"),
        ("/* /index.html 200", "/deep/er/path", "/index.html"),
        ("/a/:x/* /:x/:splat", "/a/1/2/3", "/1/2/3"),
        ("/a /b", "/a/", "/b"),
        ("/a/ /b", "/a", "/b"),
        ("/ /home", "/", "/home"),
        ("/a/b /c", "/a/b", "/c"),
        ("/a//b /c", "/a//b", "/c"),
        ("/a /b#frag", "/a", "/b#frag"),
        ("/a /b#frag", "/a?q=1", "/b?q=1#frag"),
        ("/a/:x https://:x.example.com/", "/a/www", "https://www.example.com/"),
        ("/a/* https://example.com:8443/:splat", "/a/b", "https://example.com:8443/b"),
    ],
)
def test_placeholders_and_splat(rule: str, url: str, target: str) -> None:
    path, _, query = url.partition("?")
    match = only(RuleSet.parse(rule), path, query or None)
    assert match is not None
    assert match.target == target


@pytest.mark.parametrize(
    ("rule", "path"),
    [
        ("/a/:x /b", "/a"),
        ("/a/:x /b", "/a/"),
        ("/a/:x /b", "/a/1/2"),
        ("/a/:x/c /b", "/a//c"),  # a placeholder needs a non-empty segment
        ("/a /b", "/ab"),
        ("/a /b", "/a/b"),
        ("/a /b", "/A"),  # paths are case-sensitive
        ("/a/* /b", "/ab"),
        ("/a/* /b", "/ab/c"),
        ("/a%2Fb /c", "/a/b"),  # an escaped slash is not a slash
        ("/a/b /c", "/a%2Fb"),
        ("/a /b", "a"),
        ("/a /b", ""),
        ("/a /b", "*"),
        ("/a /b", "http://host/a"),
    ],
)
def test_no_match(rule: str, path: str) -> None:
    assert list(RuleSet.parse(rule).matching_rules(path, None)) == []


@pytest.mark.parametrize(
    ("rule", "path"),
    [
        ("/caf%C3%A9 /x", "/caf%c3%a9"),
        ("/caf%C3%A9 /x", "/café"),
        ("/café /x", "/caf%C3%A9"),
        ("/~user /x", "/%7Euser"),
        ("/%7euser /x", "/~user"),
        ("/100% /x", "/100%25"),
        ("/a%2Fb /x", "/a%2fb"),
    ],
)
def test_percent_encoded_paths_compare_by_value(rule: str, path: str) -> None:
    assert only(RuleSet.parse(rule), path) is not None


def test_placeholder_values_keep_their_escapes() -> None:
    rules = RuleSet.parse("/a/:x/* /b/:x/:splat 302")
    match = only(rules, "/a/%E2%9C%93/x%2Fy/%25")
    assert match is not None
    assert match.target == "/b/%E2%9C%93/x%2Fy/%25"


def test_unsafe_characters_in_targets_are_encoded() -> None:
    rules = RuleSet.parse("/a/* /b/:splat 302")
    match = only(rules, "/a/é x\r\n\x00", "q=1 2#3")
    assert match is not None
    assert match.target == "/b/%C3%A9%20x%0D%0A%00?q=1%202%233"


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/go//evil.example", "/evil.example"),
        ("/go/%2F/evil.example", "/%2F/evil.example"),
        ("/go/\\evil.example", "/evil.example"),
        ("/go////\\\\evil.example/x", "/evil.example/x"),
    ],
)
def test_no_open_redirect_through_a_splat(path: str, target: str) -> None:
    match = only(RuleSet.parse("/go/* /:splat 302"), path)
    assert match is not None
    assert match.target == target
    assert SAFE_LOCAL.fullmatch(match.target)


def test_rewrite_and_404_targets_have_no_query() -> None:
    rules = RuleSet.parse("/a /page.html?x=1 200\n/b /missing.html?y=2 404\n")
    assert [m.target for m in rules.matching_rules("/a", "q=1")] == ["/page.html"]
    assert [m.target for m in rules.matching_rules("/b", "q=1")] == ["/missing.html"]


@pytest.mark.parametrize(
    ("rule", "url", "target"),
    [
        ("/s id=:id /p/:id", "/s?id=7", "/p/7?id=7"),
        ("/s id=:id /p/:id", "/s?x=1&id=7&id=8", "/p/7?x=1&id=7&id=8"),  # first one binds
        ("/s id=:id /p/:id?", "/s?id=7", "/p/7?"),
        ("/s id=:id /p?id=:id", "/s?id=a%26b", "/p?id=a%26b"),
        ("/s q=:q /p/:q", "/s?q=a+b", "/p/a%20b?q=a+b"),  # "+" is a space in a query
        ("/s a=:a b=:b /p/:b/:a", "/s?b=2&a=1", "/p/2/1?b=2&a=1"),
        ("/s lang=en /en", "/s?lang=en", "/en?lang=en"),
        ("/s lang=en /en", "/s?lang=%65n", "/en?lang=%65n"),
        ("/s flag /f", "/s?flag", "/f?flag"),
        ("/s flag= /f", "/s?flag=", "/f?flag="),
        ("/s flag /f", "/s?flag=anything", "/f?flag=anything"),
        ("/s%20x k%20y=:v /p/:v", "/s%20x?k+y=1", "/p/1?k+y=1"),
        ("/s/* id=:id /p/:id/:splat", "/s/a/b?id=7", "/p/7/a/b?id=7"),
    ],
)
def test_query_conditions(rule: str, url: str, target: str) -> None:
    path, _, query = url.partition("?")
    rules = RuleSet.parse(rule)
    assert rules.warnings == ()
    match = only(rules, path, query)
    assert match is not None
    assert match.target == target


@pytest.mark.parametrize(
    ("rule", "url"),
    [
        ("/s id=:id /p/:id", "/s"),
        ("/s id=:id /p/:id", "/s?ids=7"),
        ("/s id=:id /p/:id", "/s?xid=7"),
        ("/s a=:a b=:b /p", "/s?a=1"),
        ("/s lang=en /en", "/s?lang=fr"),
        ("/s lang=en /en", "/s?lang=english"),
    ],
)
def test_query_conditions_not_met(rule: str, url: str) -> None:
    path, _, query = url.partition("?")
    assert only(RuleSet.parse(rule), path, query or None) is None


def test_first_match_wins_and_all_matches_in_order() -> None:
    rules = RuleSet.parse("/a/* /first 302\n/a/:x /second 301\n/a/b /third 307!\n")
    assert [(m.target, m.line) for m in rules.matching_rules("/a/b")] == [
        ("/first", 1),
        ("/second", 2),
        ("/third", 3),
    ]
    match = only(rules, "/a/b")
    assert match is not None
    assert match.target == "/first"


def test_shadowing_by_an_existing_file() -> None:
    rules = RuleSet.parse("/a /plain 302\n/a /forced 301!\n/a /later 307\n")
    calls: list[int] = []

    def exists(result: bool) -> Callable[[], bool]:
        def check() -> bool:
            calls.append(1)
            return result

        return check

    no_file = rules.match_redirect("/a", None, file_exists=exists(False))
    with_file = rules.match_redirect("/a", None, file_exists=exists(True))
    assert no_file is not None
    assert no_file.target == "/plain"
    assert with_file is not None
    assert with_file.target == "/forced"
    assert len(calls) == 2  # once per call, however many rules match


def test_file_exists_is_not_asked_when_not_needed() -> None:
    def fail() -> bool:
        raise AssertionError("file_exists called")

    rules = RuleSet.parse("/a /forced 301!\n/b /plain 302\n")
    match = rules.match_redirect("/a", None, file_exists=fail)
    assert match is not None
    assert match.force
    assert rules.match_redirect("/c", None, file_exists=fail) is None


def test_shadowed_without_forced_rule_is_no_match() -> None:
    rules = RuleSet.parse("/a /plain 302\n")
    assert rules.match_redirect("/a", None, file_exists=lambda: True) is None


@pytest.mark.parametrize(
    ("rule", "url"),
    [
        ("/about/ /about", "/about"),
        ("/about /about/", "/about/"),
        ("/a/* /a/:splat", "/a/b"),
        ("/a /a 302", "/a?x=1"),
        ("/a /%61", "/a"),
    ],
)
def test_redirect_to_itself_is_not_a_match(rule: str, url: str) -> None:
    path, _, query = url.partition("?")
    assert only(RuleSet.parse(rule), path, query or None) is None


def test_redirect_to_itself_is_skipped_for_the_next_rule() -> None:
    rules = RuleSet.parse("/about/ /about\n/about /elsewhere 302\n")
    match = only(rules, "/about")
    assert match is not None
    assert match.target == "/elsewhere"
    trailing = only(rules, "/about/")
    assert trailing is not None
    assert trailing.target == "/about"


# --- _headers ------------------------------------------------------------------------

EXAMPLE_HEADERS = """\
# Security headers everywhere.
/*
  X-Frame-Options: DENY
  X-Robots-Tag: noindex

/static/*
  Cache-Control: public, max-age=31536000, immutable
  X-Robots-Tag: nosnippet
/*/img/*.png
  X-Kind: image
/users/:id/profile
  X-Profile: yes
/private/*
  ! X-Frame-Options
  Set-Cookie: a=1
  x-robots-tag: private
/private/secret
  Set-Cookie: b=2
/about/
  X-About: 1
/caf%C3%A9
  X-Cafe: 1
"""


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/", [("X-Frame-Options", "DENY"), ("X-Robots-Tag", "noindex")]),
        (
            "/static/app.js",
            [
                ("X-Frame-Options", "DENY"),
                ("X-Robots-Tag", "noindex, nosnippet"),
                ("Cache-Control", "public, max-age=31536000, immutable"),
            ],
        ),
        (
            "/static/img/logo.png",
            [
                ("X-Frame-Options", "DENY"),
                ("X-Robots-Tag", "noindex, nosnippet"),
                ("Cache-Control", "public, max-age=31536000, immutable"),
                ("X-Kind", "image"),
            ],
        ),
        (
            "/a/b/img/c/d.png",
            [("X-Frame-Options", "DENY"), ("X-Robots-Tag", "noindex"), ("X-Kind", "image")],
        ),
        ("/img/d.png", [("X-Frame-Options", "DENY"), ("X-Robots-Tag", "noindex")]),
        ("/a/img/d.png.txt", [("X-Frame-Options", "DENY"), ("X-Robots-Tag", "noindex")]),
        (
            "/users/42/profile",
            [("X-Frame-Options", "DENY"), ("X-Robots-Tag", "noindex"), ("X-Profile", "yes")],
        ),
        ("/users//profile", [("X-Frame-Options", "DENY"), ("X-Robots-Tag", "noindex")]),
        ("/users/4/2/profile", [("X-Frame-Options", "DENY"), ("X-Robots-Tag", "noindex")]),
        (
            "/private/secret",
            [
                ("X-Robots-Tag", "noindex, private"),
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
            ],
        ),
        (
            "/about",
            [("X-Frame-Options", "DENY"), ("X-Robots-Tag", "noindex"), ("X-About", "1")],
        ),
        (
            "/about/",
            [("X-Frame-Options", "DENY"), ("X-Robots-Tag", "noindex"), ("X-About", "1")],
        ),
        (
            "/caf%c3%a9",
            [("X-Frame-Options", "DENY"), ("X-Robots-Tag", "noindex"), ("X-Cafe", "1")],
        ),
        ("not-a-path", []),
        ("", []),
    ],
)
def test_headers_for(path: str, headers: list[tuple[str, str]]) -> None:
    rules = RuleSet.parse(headers=EXAMPLE_HEADERS)
    assert rules.warnings == ()
    assert rules.headers_for(path) == headers


def test_headers_blocks_keep_their_lines() -> None:
    rules, warnings = parse_headers(EXAMPLE_HEADERS)
    assert warnings == ()
    assert [(rule.pattern, rule.line) for rule in rules][:3] == [
        ("/*", 2),
        ("/static/*", 6),
        ("/*/img/*.png", 9),
    ]
    private = next(rule for rule in rules if rule.pattern == "/private/*")
    assert isinstance(private, HeaderRule)
    assert private.detach == frozenset({"x-frame-options"})


def test_headers_same_name_in_one_block_combine() -> None:
    rules = RuleSet.parse(headers="/*\n  Link: </a.css>\n  Link: </b.js>\n")
    assert rules.headers_for("/x") == [("Link", "</a.css>, </b.js>")]


def test_headers_detach_wins_whatever_the_order() -> None:
    text = "/a\n  ! X-Gone\n/*\n  X-Gone: 1\n  X-Kept: 2\n"
    assert RuleSet.parse(headers=text).headers_for("/a") == [("X-Kept", "2")]
    assert RuleSet.parse(headers=text).headers_for("/b") == [("X-Gone", "1"), ("X-Kept", "2")]


@pytest.mark.parametrize(
    ("lines", "warning"),
    [
        ("  X-A: 1", "_headers:2: header line before any path pattern; line skipped"),
        ("/a\n  no colon", "_headers:3: expected 'Name: value' (or '! Name' to remove a header)"),
        ("/a\n  Bad Name: 1", "_headers:3: invalid header name 'Bad Name'"),
        ("/a\n  : 1", "_headers:3: invalid header name ''"),
        ("/a\n  !", "_headers:3: invalid header name ''"),
        ("/a\n  Content-Length: 5", "_headers:3: Content-Length is managed by the server"),
        (
            "/a\n  transfer-encoding: chunked",
            "_headers:3: transfer-encoding is managed by the server",
        ),
        (
            "/a\n  X-A: caf\u00e9",
            "_headers:3: the header value has a control or non-ASCII character",
        ),
        ("/a\n  X-A: a\x00b", "_headers:3: the header value has a control or non-ASCII character"),
        ("/a\n  X-A: a\rb", "_headers:3: the header value has a control or non-ASCII character"),
        ("a\n  X-A: 1", "_headers:2: the path pattern 'a' must start with /; block skipped"),
        (
            "https://example.com/*\n  X-A: 1\n  X-B: 2",
            "_headers:2: host-specific patterns (https://host/path) are not supported; "
            "block skipped",
        ),
        (
            "/a X-A: 1",
            "_headers:2: the path pattern line must hold only the pattern (headers go below); "
            "block skipped",
        ),
    ],
)
def test_headers_malformed(lines: str, warning: str) -> None:
    text = f"# c\n{lines}\n/ok\n  X-Ok: yes\n"
    rules = RuleSet.parse(headers=text)
    assert len(rules.warnings) == 1
    assert rules.warnings[0].startswith(warning)
    assert ("X-Ok", "yes") in rules.headers_for("/ok")


def test_headers_bad_line_keeps_rest_of_block() -> None:
    rules = RuleSet.parse(headers="/a\n  X-A: 1\n  oops\n  X-B: 2\n")
    assert rules.headers_for("/a") == [("X-A", "1"), ("X-B", "2")]
    assert rules.warnings == (
        "_headers:3: expected 'Name: value' (or '! Name' to remove a header); line skipped",
    )


def test_headers_empty_value_and_tabs() -> None:
    rules = RuleSet.parse(headers="/a\n\tX-Empty:\n\tX-Tab:  a\tb  \n")
    assert rules.headers_for("/a") == [("X-Empty", ""), ("X-Tab", "a\tb")]


def test_both_files_warnings_together() -> None:
    rules = RuleSet.parse("/a /b 1", "  X: y")
    assert rules.warnings == (
        "_redirects:1: unknown status 1; line skipped",
        "_headers:1: header line before any path pattern; line skipped",
    )


# --- The wildcard matcher -------------------------------------------------------------


def reference_pattern(pattern: str) -> re.Pattern[str]:
    """The meaning of a ``_headers`` pattern as a regex (tests only: small inputs)."""
    segments = []
    for segment in pattern.split("/"):
        if re.fullmatch(r":[A-Za-z_][A-Za-z0-9_]*", segment):
            segments.append("[^/]+")
        else:
            segments.append(".*".join(re.escape(piece) for piece in segment.split("*")))
    return re.compile("/".join(segments), re.DOTALL)


PATTERN_SEGMENTS = st.sampled_from(["", "a", "b", "ab", "*", "**", "a*", "*b", "a*b*", ":id"])


@settings(max_examples=400, deadline=None)
@given(
    segments=st.lists(PATTERN_SEGMENTS, min_size=1, max_size=5),
    path=st.text(alphabet="ab/", max_size=12),
)
def test_wildcard_agrees_with_reference(segments: list[str], path: str) -> None:
    pattern = "/" + "/".join(segments)
    expected = reference_pattern(pattern).fullmatch("/" + path) is not None
    assert _Wildcard.compile(pattern).matches("/" + path) == expected


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/*", "/", True),
        ("/*", "/a/b/c", True),
        ("/a*", "/a", True),
        ("/a*", "/ab/c", True),
        ("/*.js", "/a/b.js", True),
        ("/*.js", "/a/b.jsx", False),
        ("/*a*b*c*", "/xaybzc", True),
        ("/*a*b*c*", "/xcybza", False),
        ("/:id", "/", False),
        ("/:id", "/x", True),
        ("/:id", "/x/", False),
        ("/:a/:b", "/x/y", True),
        ("/:a*", "/x", False),  # ":a*" is not a placeholder: a literal ":a" then "*"
        ("/:a*", "/:ab", True),
        ("/", "/", True),
        ("/", "/a", False),
    ],
)
def test_wildcard_cases(pattern: str, path: str, expected: bool) -> None:
    assert _Wildcard.compile(pattern).matches(path) == expected


def test_canonical_form() -> None:
    assert _canonical("/caf%c3%a9") == _canonical("/café") == _canonical("/caf%C3%A9")
    assert _canonical("/a%2fb") == "/a%2Fb"
    assert _canonical("/100%") == _canonical("/100%25") == "/100%25"
    assert _canonical("/%zz") == "/%25zz"
    assert _canonical("/%4") == "/%254"


# --- Linear time -----------------------------------------------------------------------


def test_pathological_header_pattern_is_fast() -> None:
    pattern = "/" + "a*" * 200 + "b"
    rules = RuleSet.parse(headers=f"{pattern}\n  X-A: 1\n")
    path = "/" + "a" * 10_000
    start = time.perf_counter()
    assert rules.headers_for(path) == []
    assert rules.headers_for(path + "b") == [("X-A", "1")]
    assert time.perf_counter() - start < 0.5


def test_pathological_placeholders_and_stars_are_fast() -> None:
    pattern = "/" + "/".join(["*", ":p"] * 100) + "/x"
    rules = RuleSet.parse(headers=f"{pattern}\n  X-A: 1\n")
    path = "/" + "/".join(["a"] * 10_000)
    start = time.perf_counter()
    assert rules.headers_for(path) == []
    assert time.perf_counter() - start < 0.5


def test_long_paths_against_many_redirects_are_fast() -> None:
    text = "\n".join(f"/{'/'.join([':p'] * 50)}/{i}/* /t/:splat 302" for i in range(200))
    rules = RuleSet.parse(text + "\n/* /last 302\n")
    path = "/" + "/".join(["segment"] * 2_000)
    start = time.perf_counter()
    match = only(rules, path)
    assert match is not None
    assert match.target == "/last"
    assert time.perf_counter() - start < 0.5


# --- Never raises ----------------------------------------------------------------------

RULE_TEXT = st.lists(
    st.sampled_from([*"/:*!#=?%&+ \t\r\nabcxyz019é\x00", ":splat", "301", "200!", "https://"]),
    max_size=80,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(max_size=300), RULE_TEXT))
def test_parsers_never_raise(text: str) -> None:
    rules = RuleSet.parse(text, text)
    for warning in rules.warnings:
        assert "\n" not in warning


@settings(max_examples=300, deadline=None)
@given(
    rules_text=RULE_TEXT,
    path=st.one_of(st.text(max_size=60), st.text(alphabet="/a:%2Fé.*\\", max_size=30)),
    query=st.one_of(st.none(), st.text(max_size=30)),
)
def test_matching_never_raises(rules_text: str, path: str, query: str | None) -> None:
    for rules in (RuleSet.parse(rules_text, rules_text), RuleSet.parse(EXAMPLE_REDIRECTS)):
        for match in rules.matching_rules(path, query):
            assert match.status in {200, 301, 302, 303, 307, 308, 404}
            if match.target.startswith("/") or match.status in {200, 404}:
                assert SAFE_LOCAL.fullmatch(match.target), match
            else:
                assert re.fullmatch(r"https?://[\x21-\x7e]*", match.target, re.IGNORECASE)
        rules.match_redirect(path, query, file_exists=lambda: True)
        rules.headers_for(path)


SEGMENT = st.sampled_from(["a", "b", "", ":x", ":y", "%61", "%2F", "é", "\\"])
RULE_LINE = st.tuples(
    st.lists(SEGMENT, max_size=4).map(lambda parts: "/" + "/".join(parts)),
    st.sampled_from(["", "*", "/*"]),
    st.sampled_from(["", "q=:y", "q=1", "q", "x=:x"]),
    st.lists(st.sampled_from(["a", ":x", ":y", ":splat", "", "?k=:x", "#f"]), max_size=3).map(
        lambda parts: "/" + "/".join(parts)
    ),
    st.sampled_from(["", "https://h.example"]),
    st.sampled_from(["", "200", "301!", "302", "404", "308"]),
).map(lambda p: f"{p[0]}{p[1]} {p[2]} {p[4]}{p[3]} {p[5]}")


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(RULE_LINE, min_size=1, max_size=5),
    path=st.lists(SEGMENT, max_size=5).map(lambda parts: "/" + "/".join(parts)),
    query=st.sampled_from([None, "", "q=1", "q=a+b&x=%2F", "x=//evil"]),
)
def test_structured_rules_match_safely(lines: list[str], path: str, query: str | None) -> None:
    rules = RuleSet.parse("\n".join(lines))
    for match in rules.matching_rules(path, query):
        if match.target.startswith("/"):
            assert SAFE_LOCAL.fullmatch(match.target), match
        else:
            assert match.target.startswith("https://h.example")
            assert match.status in {301, 302, 308}


@settings(max_examples=100, deadline=None)
@given(path=st.text(alphabet="/ab%2F.", max_size=20))
def test_headers_never_raise_on_example(path: str) -> None:
    RuleSet.parse(headers=EXAMPLE_HEADERS).headers_for("/" + path)


# --- Reloading -------------------------------------------------------------------------


def targets(rules: RuleSet, path: str) -> list[str]:
    return [match.target for match in rules.matching_rules(path, None)]


def test_missing_files_mean_no_rules(tmp_path: Path) -> None:
    rules = RulesFile(tmp_path).current()
    assert rules == RuleSet()
    assert RulesFile(tmp_path / "no-such-dir").current() == RuleSet()


def test_reload_on_edit(tmp_path: Path) -> None:
    redirects = tmp_path / "_redirects"
    headers = tmp_path / "_headers"
    rules_file = RulesFile(str(tmp_path))
    redirects.write_text("/a /one 302\n")
    headers.write_text("/*\n  X-V: 1\n")
    first = rules_file.current()
    assert targets(first, "/a") == ["/one"]
    assert first.headers_for("/") == [("X-V", "1")]
    assert rules_file.current() is first  # unchanged: the same object

    redirects.write_text("/a /two-longer 302\n/b /c 299\n")
    second = rules_file.current()
    assert targets(second, "/a") == ["/two-longer"]
    assert second.warnings == ("_redirects:2: unknown status 299; line skipped",)
    assert second.headers_for("/") == [("X-V", "1")]

    # Same size, possibly the same coarse mtime: a distinct mtime_ns still shows.
    stamp = redirects.stat().st_mtime_ns
    redirects.write_text("/a /two-LONGER 302\n/b /c 299\n")
    os.utime(redirects, ns=(stamp + 1_000_000, stamp + 1_000_000))
    assert targets(rules_file.current(), "/a") == ["/two-LONGER"]

    # An editor's atomic replace: a new inode.
    replacement = tmp_path / "_redirects.tmp"
    replacement.write_text("/a /three 302\n")
    os.replace(replacement, redirects)
    headers.write_text("/*\n  X-V: 2\n")
    third = rules_file.current()
    assert targets(third, "/a") == ["/three"]
    assert third.headers_for("/") == [("X-V", "2")]

    redirects.unlink()
    headers.unlink()
    assert rules_file.current() == RuleSet()


def test_one_stat_per_file_per_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "_redirects").write_text("/a /b\n")
    rules_file = RulesFile(tmp_path)
    rules_file.current()
    calls: list[str] = []
    real_stat = os.stat

    def counting_stat(path: str, *args: object, **kwargs: object) -> os.stat_result:
        calls.append(os.fspath(path))
        return real_stat(path)

    monkeypatch.setattr(os, "stat", counting_stat)
    rules_file.current()
    rules_file.current()
    # The root, and the file that exists; the missing _headers is known to be missing
    # while the root directory is unchanged.
    assert sorted(calls) == sorted([str(tmp_path), str(tmp_path / "_redirects")] * 2)


def test_no_rules_files_cost_one_stat_of_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules_file = RulesFile(tmp_path)
    rules_file.current()
    calls: list[str] = []
    real_stat = os.stat

    def counting_stat(path: str, *args: object, **kwargs: object) -> os.stat_result:
        calls.append(os.fspath(path))
        return real_stat(path)

    monkeypatch.setattr(os, "stat", counting_stat)
    rules_file.current()
    assert calls == [str(tmp_path)]
    monkeypatch.undo()
    (tmp_path / "_redirects").write_text("/a /b 302\n")  # changes the root's mtime
    assert rules_file.current().match_redirect("/a", None) is not None


def test_directory_named_like_a_rules_file(tmp_path: Path) -> None:
    (tmp_path / "_redirects").mkdir()
    rules = RulesFile(tmp_path).current()
    assert rules.warnings == ("_redirects: not a regular file; ignored",)
    assert rules.redirects == ()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_named_like_a_rules_file_does_not_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "_headers")
    rules = RulesFile(tmp_path).current()
    assert rules.warnings == ("_headers: not a regular file; ignored",)


def test_invalid_utf8_is_reported_and_replaced(tmp_path: Path) -> None:
    (tmp_path / "_redirects").write_bytes(b"/a /b 302\n/\xff /c\n")
    rules = RulesFile(tmp_path).current()
    assert rules.warnings == ("_redirects: not UTF-8 (byte 11); undecodable bytes replaced",)
    assert targets(rules, "/a") == ["/b"]


def test_oversized_file_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sitepeek.rules, "MAX_FILE_BYTES", 16)
    (tmp_path / "_redirects").write_text("/a /b 302\n" * 3)
    rules = RulesFile(tmp_path).current()
    assert rules.warnings == ("_redirects: larger than 16 bytes; ignored",)
    assert rules.redirects == ()


def test_example_through_rules_file(tmp_path: Path) -> None:
    (tmp_path / "_redirects").write_text(EXAMPLE_REDIRECTS)
    rules = RulesFile(tmp_path).current()
    assert rules.warnings == EXAMPLE_WARNINGS
    for url, status, target in EXAMPLE_CASES:
        assert outcome(rules, url, EXAMPLE_FILES) == (status, target), url
