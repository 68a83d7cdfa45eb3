"""The ASGI fast lane for the two publish endpoints.

A publish is the one request ingest must answer thousands of times a second, and measured under
``wrk`` the generic path (metrics and CORS middleware, exception middleware, router, Request and
Response objects, each wrapping ``send``) cost more CPU than the publish itself. This
middleware, first in the stack, answers ``POST /api/v1/messages`` and
``POST /api/v1/messages/batch`` directly over ASGI with the same code the routes use
(``relay_ingest.publishing``): two ``send`` calls, the request-duration metric recorded here.

Requests carrying an ``Origin`` header (browsers) take the regular path, so CORS is handled in
one place only; everything else (other paths, methods, trailing slashes) passes through.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from prometheus_client import Histogram
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from relay_ingest.body import asgi_body
from relay_ingest.metrics import IngestMetrics
from relay_ingest.publishing import Reply, error_reply, publish_batch, publish_single
from relay_ingest.state import IngestState
from relaycore.http import ApiError
from relaycore.logging import get_logger

__all__ = ["FastLane"]

log = get_logger("relay_ingest.fastlane")

Handler = Callable[[IngestState, Mapping[str, str], AsyncIterator[bytes]], Awaitable[Reply]]

_ROUTES: Mapping[str, Handler] = {
    "/api/v1/messages": publish_single,
    "/api/v1/messages/batch": publish_batch,
}
_JSON = (b"content-type", b"application/json")


class FastLane:
    def __init__(self, app: ASGIApp, *, metrics: IngestMetrics, vary_origin: bool) -> None:
        self.app = app
        self.metrics = metrics
        # With CORS configured, answers must say they vary by Origin, as the CORS middleware's do.
        self.vary_origin = vary_origin
        self._timers: dict[tuple[str, int], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = _ROUTES.get(scope["path"])
            if handler is not None:
                headers = Headers(scope=scope)
                if "origin" not in headers:
                    await self._serve(handler, scope, headers, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(
        self, handler: Handler, scope: Scope, headers: Headers, receive: Receive, send: Send
    ) -> None:
        started = time.perf_counter()
        state: IngestState = scope["app"].state.ingest
        try:
            reply = await handler(state, headers, asgi_body(receive))
        except Exception:
            # Same contract as the routes: a bug answers in the §7 shape and is logged.
            log.exception("unhandled_error", path=scope["path"])
            reply = error_reply(ApiError(500, "internal", "internal error"))
        raw = [_JSON, (b"content-length", b"%d" % len(reply.body))]
        raw.extend((name.lower().encode(), value.encode()) for name, value in reply.headers.items())
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
