"""Deciding what to answer: :meth:`Site.decide` turns a request into a plan (and the
fields ``_headers`` adds to the answer).

Host check, proxy routes, sitepeek's own URLs, the base path, ``_redirects`` and
``_headers``, methods, the SPA fallback, the 404 page and directory listings, in that
order. Deciding may stat files and read directories; it never touches a socket and
knows no worker model, so every routing edge case is testable in-process
(``tests/test_site.py``). Writing the plan is the handler's job.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable

from sitepeek import inject, listing, livereload
from sitepeek.config import Config
from sitepeek.console import write_line
from sitepeek.entities import Entity
from sitepeek.hosts import HostPolicy
from sitepeek.hotcache import Candidate
from sitepeek.http11 import Request, is_known_method
from sitepeek.plan import (
    Decision,
    Error,
    Fields,
    Forward,
    Page,
    Plan,
    Redirect,
    SendEntity,
    SendFile,
    Upgrade,
)
from sitepeek.resolver import (
    BadPath,
    File,
    Forbidden,
    Listing,
    NotFound,
    Resolution,
    Resolver,
    spa_eligible,
    strip_base,
)
from sitepeek.resolver import Redirect as Moved
from sitepeek.responses import ALLOW
from sitepeek.routes import ProxyRoute, match, parse_route
from sitepeek.rules import RuleMatch, RuleSet, RulesFile

__all__ = ["CA_CERT_PATH", "MISDIRECTED", "Site", "may_be_html"]

# The local CA's certificate (public part), for installing on a phone (--https).
CA_CERT_PATH = livereload.PREFIX + "ca.crt"

MISDIRECTED = (
    "This server answers to localhost names only (DNS rebinding protection). "
    "To use another name, start sitepeek with --allowed-host NAME."
)
# The rules files configure the server; like Netlify and Cloudflare, never serve them.
_RULE_FILES = frozenset({"/_redirects", "/_headers"})
_NOT_FOUND = Error(404, "Not Found")
_FORBIDDEN = Error(403, "Forbidden")
_ALLOW = (("Allow", ALLOW),)


class Site:
    """One site as configured: built once per process, asked once per request."""

    def __init__(
        self,
        config: Config,
        *,
        broadcaster: livereload.Broadcaster | None = None,
        client: Entity | None = None,
        snippet: bytes | None = None,
        claim: Callable[[str], bool] | None = None,
        ca_cert: Entity | None = None,
    ) -> None:
        """``broadcaster``: live reload is on (the WebSocket and the build gate);
        ``client``: its script; ``snippet``: the tag injected into pages made here;
        ``ca_cert``: the local CA's certificate, for phones (--https).
        ``claim(key)`` is True for the first caller of a key across the server's
        processes: a rules warning is printed once, not once per worker."""
        self.config = config
        self.resolver = Resolver(config.root, clean_urls=config.clean_urls, listing=config.listing)
        self.routes: tuple[ProxyRoute, ...] = tuple(parse_route(spec) for spec in config.proxy)
        self.rules = RulesFile(config.root) if config.rules else None
        self._rules_seen: RuleSet | None = None
        self._claim = claim or _claim_in_process()
        self._hosts = HostPolicy(config.host, config.allowed_host)
        self._base = config.base
        self._broadcaster = broadcaster
        self._client = client
        self._snippet = snippet
        self._ca_cert = ca_cert

    def serve_from(self, directory: str | None) -> None:
        """Answer from ``directory`` (the copy of the last good build, while the latest
        has failed) with the same options; None: from the configured root again."""
        root = self.config.root if directory is None else directory
        config = self.config
        self.resolver = Resolver(root, clean_urls=config.clean_urls, listing=config.listing)
        self.rules = RulesFile(root) if config.rules else None
        self._rules_seen = None

    def route(self, path: str) -> ProxyRoute | None:
        """The ``--proxy`` route for ``path``, if any."""
        return match(self.routes, path) if self.routes else None

    def decide(
        self, request: Request, key: bytes | None = None, alias: str | None = None
    ) -> Decision:
        """What to answer ``request`` with. ``key``: the request's bytes, ``alias``: its
        :func:`~sitepeek.hotcache.request_key`, when the hot cache may remember the
        answer under them (a file's plan then carries a Candidate)."""
        path = request.path
        broadcaster = self._broadcaster
        if (
            path == livereload.SOCKET_PATH
            and broadcaster is not None
            and "websocket" in request.header("upgrade").lower()
            and self._hosts.allows(request.header("host"))
        ):
            return Upgrade(), ()  # (a foreign Host gets the 421 below)
        host = request.headers.get("host")
        if host is not None and not self._hosts.allows(host):
            # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends
            # "Host: evil.example". Answer as the host this server is not.
            return Error(421, MISDIRECTED, close=True), ()
        if self.routes:
            route = match(self.routes, path)
            if route is not None:
                return Forward(route), ()
        if path.startswith(livereload.PREFIX):
            if request.method not in ("GET", "HEAD"):
                return self._other_method(request), ()
            return self._internal(request), ()
        site_path = path
        if self._base != "/":
            inner = strip_base(path, self._base)
            if inner is None:
                return self._outside_base(request), ()
            site_path = inner
        readable = request.method in ("GET", "HEAD")
        html = readable and may_be_html(site_path)
        if broadcaster is not None and html:
            # A burst of changes is being written: wait (bounded) for it to settle,
            # so a page never shows a half-written build. (First: the build may also
            # change the rules, and where the site is answered from.)
            broadcaster.wait_until_settled(site_path)
        rules = self._current_rules() if self.rules is not None else None
        added = rules.headers_for(site_path) if rules is not None else None
        headers: Fields = tuple(added) if added else ()
        if not readable:
            return self._other_method(request), headers
        return self._site(request, site_path, rules, key, alias, html), headers

    # -- below the base path ---------------------------------------------------------
    def _site(
        self,
        request: Request,
        path: str,
        rules: RuleSet | None,
        key: bytes | None,
        alias: str | None,
        html: bool,
    ) -> Plan:
        """GET/HEAD for a path of the site; ``rules`` as loaded (None: --no-rules);
        ``html``: the path may name a page (:func:`may_be_html`)."""
        if rules is not None and path in _RULE_FILES:
            return _NOT_FOUND
        remember = key is not None or alias is not None
        began = time.time_ns() if remember else 0
        resolved: list[Resolution] = []

        def resolution() -> Resolution:
            if not resolved:
                resolved.append(self.resolver.resolve(path, request.query))
            return resolved[0]

        if rules is not None:
            rule = rules.match_redirect(
                path,
                request.query,
                file_exists=lambda: not isinstance(resolution(), NotFound | BadPath),
            )
            if rule is not None:
                return self._apply_rule(request, rule)
        found = resolution()
        if isinstance(found, NotFound):
            return self._not_found(request, path)
        if remember and isinstance(found, File):
            if rules is not None and alias is not None and rules.shadows_files:
                alias = None  # a forced rule's match may depend on the query
            url_dir = path[: path.rfind("/")]
            candidate = Candidate(key, alias, found.fs_path, url_dir, html, rules, began)
            return SendFile(found, 200, candidate)
        return self._resolution(request, found)

    def _resolution(self, request: Request, found: Resolution, status: int = 200) -> Plan:
        if isinstance(found, File):
            return SendFile(found, status)
        if isinstance(found, Moved):
            return Redirect(found.status, self._site_url(found.location))
        if isinstance(found, Listing):
            return self._listing(request, found)
        if isinstance(found, Forbidden):
            return _FORBIDDEN
        if isinstance(found, BadPath):
            return Error(400, found.reason)
        return _NOT_FOUND

    def _not_found(self, request: Request, path: str) -> Plan:
        """SPA fallback, then the site's own 404.html, then ours."""
        if self.config.spa is not None and spa_eligible(
            path, request.method, request.header("accept", "*/*")
        ):
            app = self.resolver.resolve_file(self.config.spa)
            if app is not None:
                return SendFile(app)
        page = self.resolver.resolve_file("404.html")
        if page is not None:
            return SendFile(page, 404)
        return _NOT_FOUND

    def _apply_rule(self, request: Request, rule: RuleMatch) -> Plan:
        """A _redirects rule: redirect, rewrite (200) or custom 404."""
        if rule.is_redirect:
            target = rule.target
            if target.startswith("/"):
                target = self._site_url(target)
            return Redirect(rule.status, target)
        target_path, _, _ = rule.target.partition("?")
        found = self.resolver.resolve(target_path)
        if isinstance(found, Moved) and rule.status == 200:
            # A rewrite to a directory without its slash: serve its index instead.
            found = self.resolver.resolve(target_path.rstrip("/") + "/")
        if isinstance(found, File | Listing):
            return self._resolution(request, found, rule.status)
        return self._not_found(request, target_path)

    def _listing(self, request: Request, found: Listing) -> Plan:
        entries = listing.scan(found.fs_path, self.resolver.root)
        if entries is None:
            return _FORBIDDEN
        url_path = self._site_url(found.url_path)
        if listing.wants_json(request.header("accept")):
            body = listing.render_json(url_path, entries)
            ctype = "application/json"
        else:
            body = listing.render_html(url_path, entries)
            if self._snippet is not None:
                body = inject.inject(body, self._snippet)
            ctype = "text/html; charset=utf-8"
        fields = (
            ("Content-Type", ctype),
            ("Cache-Control", "no-cache"),
            ("Vary", "Accept"),
            ("Content-Length", str(len(body))),
        )
        return Page(200, fields, body)

    # -- elsewhere -------------------------------------------------------------------
    def _outside_base(self, request: Request) -> Plan:
        """With --base /repo/: "/" and "/repo" redirect to "/repo/"; the rest is 404."""
        if request.path in ("/", self._base[:-1]):
            return Redirect(302, self._base + (f"?{request.query}" if request.query else ""))
        return Error(404, f"Not Found: this site is served under {self._base}")

    def _internal(self, request: Request) -> Plan:
        """sitepeek's own URLs under /__sitepeek__/ (never files of the site)."""
        if request.path == livereload.CLIENT_PATH and self._client is not None:
            return SendEntity(self._client)
        if request.path == CA_CERT_PATH and self._ca_cert is not None:
            return SendEntity(self._ca_cert)
        if request.path == livereload.SOCKET_PATH and self._broadcaster is not None:
            return Error(
                426,
                "This URL speaks WebSocket only.",
                (("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")),
            )
        return _NOT_FOUND

    def _other_method(self, request: Request) -> Plan:
        if request.method == "OPTIONS":
            fields = [("Allow", ALLOW)]  # RFC 9110 §8.6: no Content-Length in a 204
            if self.config.cors and "access-control-request-method" in request.headers:
                # A CORS preflight (Fetch standard §3.2.2): GET and HEAD only, any
                # origin, the request headers the page asked for, no credentials.
                fields.append(("Access-Control-Allow-Methods", ALLOW))
                asked = request.header("access-control-request-headers")
                if asked:
                    fields.append(("Access-Control-Allow-Headers", asked))
                fields.append(("Access-Control-Max-Age", "600"))
            return Page(204, tuple(fields))
        if is_known_method(request.method):
            return Error(405, "Method Not Allowed", _ALLOW)
        return Error(501, "Not Implemented", _ALLOW)

    def _site_url(self, location: str) -> str:
        """A path of the site as a URL path of this server (under the base path)."""
        return self._base[:-1] + location if self._base != "/" else location

    def _current_rules(self) -> RuleSet:
        assert self.rules is not None
        rules = self.rules.current()
        if rules is not self._rules_seen:
            self._rules_seen = rules
            if rules.warnings and self._claim(_rules_version(self.resolver.root, rules)):
                for warning in rules.warnings:
                    write_line(sys.stderr, f"sitepeek: {warning}")
        return rules


def may_be_html(path: str) -> bool:
    """Could this URL path be answered with an HTML page (cheap, before resolving)?"""
    last = path.rsplit("/", 1)[-1]
    return not last or "." not in last or last.lower().endswith((".html", ".htm"))


def _claim_in_process() -> Callable[[str], bool]:
    claimed: set[str] = set()

    def claim(key: str) -> bool:
        first = key not in claimed
        claimed.add(key)
        return first

    return claim


def _rules_version(root: object, rules: RuleSet) -> str:
    """Identifies one version of the rules files' warnings (what is reported once)."""
    stamps = []
    for name in ("_redirects", "_headers"):
        try:
            st = os.stat(os.path.join(str(root), name))
            stamps.append(f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}")
        except OSError:
            stamps.append("-")
    text = "\n".join((*stamps, *rules.warnings))
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
