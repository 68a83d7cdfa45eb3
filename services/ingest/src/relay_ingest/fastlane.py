"""The ASGI fast lane for the two publish endpoints.

A publish is the one request ingest must answer thousands of times a second, and measured under
``wrk`` the generic path (metrics and CORS middleware, exception middleware, router, Request and
Response objects, each wrapping ``send``) cost more CPU than the publish itself. The
fast lane, in front of the whole Starlette app (even its error middleware; see
:class:`IngestApp`), answers ``POST /api/v1/messages`` and ``POST /api/v1/messages/batch``
directly over ASGI with the same code the routes use (``relay_ingest.publishing``): the
request headers read in one pass, two ``send`` calls, the request-duration metric recorded here.

Requests carrying an ``Origin`` header (browsers) take the regular path, so CORS is handled in
one place only; everything else (other paths, methods, trailing slashes) passes through.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import Histogram
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from relay_ingest.body import asgi_body
from relay_ingest.metrics import IngestMetrics
from relay_ingest.publishing import Reply, publish_batch, publish_single
from relay_ingest.state import IngestState
from relaycore.errors import answer_unhandled

__all__ = ["FastLane", "IngestApp"]

Handler = Callable[[IngestState, Mapping[str, str], AsyncIterator[bytes]], Awaitable[Reply]]

_ROUTES: Mapping[str, Handler] = {
    "/api/v1/messages": publish_single,
    "/api/v1/messages/batch": publish_batch,
}
_JSON = (b"content-type", b"application/json")


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers as a plain dict (names are lowercase in ASGI); the first of
    repeated headers wins, as with Starlette's ``Headers.get``."""
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(raw)}


class FastLane:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: IngestMetrics,
        vary_origin: bool,
        owner: Starlette | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        # Where ``state.ingest`` lives when the lane runs before Starlette sets scope["app"].
        self.owner = owner
        # With CORS configured, answers must say they vary by Origin, as the CORS middleware's do.
        self.vary_origin = vary_origin
        self._timers: dict[tuple[str, int], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = _ROUTES.get(scope["path"])
            if handler is not None:
                headers = _headers(scope)
                if "origin" not in headers:
                    await self._serve(handler, scope, headers, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(
        self, handler: Handler, scope: Scope, headers: dict[str, str], receive: Receive, send: Send
    ) -> None:
        started = time.perf_counter()
        app = self.owner if self.owner is not None else scope["app"]
        state: IngestState = app.state.ingest
        try:
            reply = await handler(state, headers, asgi_body(receive))
        except Exception as error:
            # Same contract as the routes: a bug answers in the §7 shape, logged once.
            await answer_unhandled(scope, send, error)
            self._timer(scope["path"], 500).observe(time.perf_counter() - started)
            return
        raw = [_JSON, (b"content-length", b"%d" % len(reply.body))]
        if reply.headers:
            raw.extend((k.lower().encode(), v.encode()) for k, v in reply.headers.items())
        if self.vary_origin:
            raw.append((b"vary", b"Origin"))
        try:
            await send({"type": "http.response.start", "status": reply.status, "headers": raw})
            await send({"type": "http.response.body", "body": reply.body})
        finally:
            self._timer(scope["path"], reply.status).observe(time.perf_counter() - started)

    def _timer(self, route: str, status: int) -> Histogram:
        timer = self._timers.get((route, status))
        if timer is None:
            timer = self.metrics.request_duration.labels(
                self.metrics.service, route, "POST", str(status)
            )
            self._timers[(route, status)] = timer
        return timer


class IngestApp(Starlette):
    """The ingest Starlette app with the fast lane in front of its whole middleware stack.

    As a middleware the lane would still run behind Starlette's own outermost layer (the
    error middleware, which wraps ``send`` for every request); here publishes skip it too.
    Everything else goes through ``Starlette.__call__`` unchanged.
    """

    def __init__(self, *, metrics: IngestMetrics, vary_origin: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fast_lane = FastLane(
            self._starlette, metrics=metrics, vary_origin=vary_origin, owner=self
        )

    async def _starlette(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The error boundary, outermost: see relaycore.errors. A try costs nothing until it fires.
        try:
            await self.fast_lane(scope, receive, send)
        except Exception as error:
            if scope["type"] == "lifespan":
                raise
            await answer_unhandled(scope, send, error)
