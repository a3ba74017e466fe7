"""Answering one parsed request: the connection loop's other half.

:class:`Responder` gives a request the answer made once for its file version when the
hot cache holds one (:func:`~sitepeek.hotcache.request_key`), else asks
:meth:`sitepeek.site.Site.decide` for a plan and writes it: through the
:class:`~sitepeek.writer.Writer`, the ``--proxy`` forwarder or the reload WebSocket,
all on the connection's counting writer, so the log sees what went out. It builds
what answering needs once per process (the site, the writer, the hot cache, live
reload's broadcaster and client) and knows neither how requests are read nor the
worker model beyond the :class:`~sitepeek.concurrency.Io` it is given. A bug while
answering costs that response (a 500), never the connection loop.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from sitepeek import entities, hotcache, livereload, proxy, websocket
from sitepeek.changes import ChangeEvent, ChangeFeed, Serving
from sitepeek.concurrency import Io
from sitepeek.config import Config
from sitepeek.connections import CloseConnection, Connection
from sitepeek.console import write_line
from sitepeek.entities import Entity
from sitepeek.hotcache import request_key
from sitepeek.http11 import Request, RequestParser, combine_fields
from sitepeek.log import report_bug
from sitepeek.plan import Error, Forward, Page, Plan, Redirect, SendEntity, SendFile, Upgrade
from sitepeek.responses import DateCache, header_bytes, overridable
from sitepeek.site import Site
from sitepeek.writer import KNOWN_CODINGS, Writer

__all__ = ["Responder"]


class Responder:
    """Answers the requests of one process's connections."""

    def __init__(
        self,
        config: Config,
        io: Io,
        feed: ChangeFeed | None,
        claim: Callable[[str], bool] | None,
        ca_cert: Entity | None,
    ) -> None:
        """``feed``: the server's change feed (live reload); ``claim``: see Site;
        ``ca_cert``: the local CA's certificate, for phones (--https)."""
        self._io = io
        # One line per name (so the override rule keeps every --header value); an
        # Access-Control-Allow-Origin of the user's own wins over --cors's "*".
        static = combine_fields(config.header)
        if config.cors and "access-control-allow-origin" not in overridable(static):
            static.append(("Access-Control-Allow-Origin", "*"))
        self._static_headers = tuple(static)
        # What every answer starts with, before _headers adds its fields.
        self.static_extra = header_bytes(static)
        self.static_overrides = overridable(static)
        self.broadcaster: livereload.Broadcaster | None = None
        snippet: bytes | None = None
        client: Entity | None = None
        if config.reload:
            self.broadcaster = livereload.Broadcaster(
                io,
                root=config.root,
                base=config.base,
                report=feed.report if feed else None,
                share_page=feed.share_page if feed else None,
                touch=feed.touch if feed else None,
            )
            script = livereload.client_script()
            snippet = livereload.client_tag(script)
            client = entities.from_bytes(
                livereload.CLIENT_PATH, script, config.compress, immutable=True
            )
        self.site = Site(
            config,
            broadcaster=self.broadcaster,
            client=client,
            snippet=snippet,
            claim=claim,
            ca_cert=ca_cert,
        )
        dates = DateCache()
        gate = self.broadcaster
        self.hot = hotcache.HotAnswers(
            self.site.resolver.root,
            dates,
            self.site.rules,
            None if gate is None else gate.is_settled,
            KNOWN_CODINGS,
        )
        self.writer = Writer(io, dates, self.hot, snippet, config.compress, config.send_timeout)
        self._stopping = False
        if feed is not None:  # (last: the feed replays what it knows at once)
            feed.subscribe(lambda event: io.call_soon_threadsafe(lambda: self._on_event(event)))

    def _on_event(self, event: ChangeEvent) -> None:
        """A change event, in the worker model's context (in the feed's order)."""
        if isinstance(event, Serving):
            # Before the gate opens (the BuildFinished after it): no page of the failed
            # build is answered, from the cache either.
            try:
                self.site.serve_from(event.snapshot or None)
            except OSError as exc:  # (removed behind our back: serve what there is)
                write_line(sys.stderr, f"sitepeek: cannot serve {event.snapshot}: {exc}")
            self.hot.serve_from(self.site.resolver.root, self.site.rules)
        if self.broadcaster is not None:
            self.broadcaster.on_event(event)

    @property
    def stopping(self) -> bool:
        """Answers say Connection: close (the server is shutting down)."""
        return self._stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        self._stopping = self.hot.stopping = value

    def close(self) -> None:
        """Release spooled compressed files."""
        self.writer.close()

    def respond(
        self, out: Connection, request: Request, missed: tuple[str | None] | None = None
    ) -> bool:
        """Answer one request; returns whether the connection stays open.

        ``missed``: the request's key, when the caller has looked it up in vain."""
        if missed is not None:
            (alias,), hit = missed, None
        else:
            alias = request_key(request)
            hit = None if alias is None else self.hot.lookup(alias)
        if hit is not None:  # the answer made for this file version, again
            entry, response = hit
            out.status = entry.status  # (set: these bytes need no header filtering)
            out.hot_streak = True  # (the next one may well be answered by the loop)
            out.sendall(response)
            return entry.keep_alive
        keep_alive = request.keep_alive and not self._stopping
        try:
            plan, added = self.site.decide(request, out.hot_key, alias)
        except (OSError, CloseConnection):
            raise
        except Exception as exc:  # a bug must cost one response, not the server
            report_bug(request.path, exc)
            return self.writer.send_error(out, request, 500, "Internal Server Error", False)
        if not isinstance(plan, SendFile):  # (the common case: one check)
            if isinstance(plan, Forward):
                return self._forward(out, request, plan)
            if isinstance(plan, Upgrade):
                assert out.parser is not None and self.broadcaster is not None
                out.deadline = 0.0
                self._io.detach()
                self._upgrade(out, request, out.parser, self.broadcaster)
                return False
        if request.has_body and request.expects_continue:
            # We answer without reading the body the client holds back (RFC 9110
            # §10.1.1), so the connection cannot be reused.
            keep_alive = False
        if added:
            out.extra += header_bytes(added)
            out.overrides = out.overrides | overridable(added)
        try:
            if isinstance(plan, SendFile):
                out.hot = plan.candidate
                return self.writer.send_file(out, request, plan.file, keep_alive, plan.status)
            return self._write(out, request, plan, keep_alive)
        except (OSError, CloseConnection):
            raise
        except Exception as exc:  # a bug must cost one response, not the server
            report_bug(request.path, exc)
            return self.writer.send_error(out, request, 500, "Internal Server Error", False)

    def _forward(self, out: Connection, request: Request, plan: Forward) -> bool:
        """Forward to a ``--proxy`` backend, through this connection's counting writer."""
        assert out.parser is not None
        out.deadline = 0.0  # the proxy has its own connect, read and tunnel timeouts
        self._io.detach()
        keep = proxy.forward(
            out.sock,
            request,
            out.parser,
            plan.route,
            self._io,
            out.peer,
            extra_headers=self._static_headers,
            client=out,
        )
        return keep and not self._stopping

    def _write(self, out: Connection, request: Request, plan: Plan, keep: bool) -> bool:
        """Write ``plan`` as the answer to ``request``; returns keep-alive."""
        if isinstance(plan, Error):
            keep = keep and not plan.close
            return self.writer.send_error(
                out, request, plan.status, plan.detail, keep, plan.headers
            )
        if isinstance(plan, Redirect):
            return self.writer.send_location(out, request, plan.status, plan.location, keep)
        if isinstance(plan, Page):
            self.writer.send(out, request, plan.status, keep, plan.headers, plan.body)
            return keep
        if isinstance(plan, SendEntity):
            return self.writer.send_entity(out, request, plan.entity, -1, keep)
        raise AssertionError(f"no writer for {plan!r}")  # (the others: see respond)

    def _upgrade(
        self,
        conn: Connection,
        request: Request,
        parser: RequestParser,
        broadcaster: livereload.Broadcaster,
    ) -> None:
        """Switch to the reload WebSocket (RFC 6455 §4.2), or refuse with a status."""
        host = request.header("host")
        try:
            accept = websocket.check_handshake(
                request.method,
                request.version,
                request.headers,
                allowed_origins={f"http://{host}", f"https://{host}"},
            )
        except websocket.HandshakeError as exc:
            extra = list(exc.headers)
            if exc.status == 426:
                extra.append(("Upgrade", "websocket"))  # RFC 9110 §15.5.22
            self.writer.send_error(conn, request, exc.status, exc.reason, False, extra)
            return
        conn.sendall(websocket.handshake_response(accept))
        conn.websocket = True
        conn.idle = True  # shutdown closes it at once; the tab reconnects to the new server
        livereload.serve_websocket(
            conn.sock,
            self._io,
            broadcaster,
            parser.take_buffered(),
            lambda: self._stopping,
            conn.write,
        )
