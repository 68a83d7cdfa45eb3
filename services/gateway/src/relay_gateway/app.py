"""The gateway application: ``create_app(settings, *, valkey=None)``.

The lifespan builds everything the handlers use — the Valkey client for non-blocking commands
(or the one injected by tests), the reader pool with its dedicated blocking clients, the hub,
metrics, the authenticator and the drain registry — and keeps them in one typed
:class:`~relay_gateway.state.GatewayState`. One TaskGroup owns the readers and the hub's sweeper;
shutdown cancels and awaits them before the clients close.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
import structlog
from glide import GlideError
from msgspec import Meta
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from relay_gateway.health import StorageHealth
from relay_gateway.hub import Hub
from relay_gateway.limits import ConnectionCap
from relay_gateway.longpoll import (
    DEFAULT_LIMIT,
    DEFAULT_TIMEOUT,
    MAX_LIMIT,
    MAX_TIMEOUT,
    POLL_PATH,
    has_origin,
    poll_endpoint,
)
from relay_gateway.longpoll_direct import direct_polls
from relay_gateway.metrics import GatewayMetrics
from relay_gateway.readers import ReaderPool
from relay_gateway.shutdown import Drain
from relay_gateway.sse import sse_endpoint
from relay_gateway.state import GatewayState, gateway_state
from relay_gateway.ui import ui_routes
from relay_gateway.valkey_source import ValkeySource
from relay_gateway.websocket import ClientFrame, websocket_endpoint
from relaycore.auth import Authenticator
from relaycore.direct import DIRECT, DirectHandler
from relaycore.errors import answer_unhandled
from relaycore.http import (
    ApiError,
    cors_middleware,
    docs_page,
    error_response,
    exception_handlers,
    openapi_document,
)
from relaycore.ids import CURSOR_PATTERN
from relaycore.keys import TOPIC_PATTERN
from relaycore.metrics import metrics_endpoint
from relaycore.models import Envelope, ErrorBody
from relaycore.prepared import response_writer
from relaycore.settings import Settings
from relaycore.tracing import Tracing
from relaycore.valkey import ValkeyClient, ValkeyDsn, create_client, persistence_info

__all__ = ["create_app"]

log = structlog.get_logger("relay_gateway")

WS_PATH = "/api/v1/ws"


class PollResponse(msgspec.Struct):
    """A long-poll answer."""

    topic: str
    messages: list[Envelope]
    next: Annotated[str, Meta(description="The cursor to send as since on the next call")]
    recovered: Annotated[
        bool, Meta(description="false when messages after since were trimmed or the stream reset")
    ]


class GapEvent(msgspec.Struct, rename={"from_": "from"}):
    """Messages were lost (trimmed) or the stream was reset; delivery continues at ``from``."""

    topic: str
    reason: Annotated[str, Meta(pattern="^(trimmed|reset)$")]
    from_: str


def _query(name: str, description: str, schema: dict[str, Any], required: bool = False) -> Any:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema}  # fmt: skip


_TOPIC = _query("topic", "Topic name", {"type": "string", "pattern": TOPIC_PATTERN}, required=True)
_SINCE = _query("since", "Cursor: a message id, or a millisecond timestamp",
                {"type": "string", "pattern": CURSOR_PATTERN})  # fmt: skip
_ERRORS = {
    str(status): {"description": text, "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/ErrorBody"}}}}
    for status, text in [(401, "No or invalid credentials"), (403, "Topic not permitted"),
                         (422, "Invalid query parameter"), (503, "Storage unavailable")]
}  # fmt: skip


_TOO_MANY = {
    "description": "Over RELAY_MAX_CONNECTIONS_PER_PRINCIPAL open WebSocket/SSE connections",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
}


def _openapi() -> dict[str, Any]:
    paths = {
        "/api/v1/poll": {"get": {
            "summary": "Long-poll a topic",
            "parameters": [
                _TOPIC, _SINCE,
                _query("timeout", f"Seconds to wait (default {DEFAULT_TIMEOUT:g}, 0 = no wait)",
                       {"type": "number", "minimum": 0, "maximum": MAX_TIMEOUT}),
                _query("limit", f"Most messages per answer (default {DEFAULT_LIMIT})",
                       {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
            ],
            "responses": {"200": {"description": "Messages after since", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PollResponse"}}}},
                **_ERRORS},
        }},
        "/api/v1/sse": {"get": {
            "summary": "Server-Sent Events stream of a topic (Last-Event-ID overrides since)",
            "parameters": [_TOPIC, _SINCE],
            "responses": {"200": {"description": "event: message (data: Envelope), event: gap "
                                  "(data: GapEvent)", "content": {"text/event-stream": {}}},
                          **_ERRORS, "429": _TOO_MANY},
        }},
        "/api/v1/ws": {"get": {
            "summary": "WebSocket: send ClientFrame ops; receive newline-separated events",
            "responses": {"101": {"description": "Switching protocols"},
                          "403": {"description": "Origin not allowed"},
                          "429": _TOO_MANY},
        }},
        "/health": {"get": {"summary": "Process alive",
                            "responses": {"200": {"description": "ok"}}}},
        "/ready": {"get": {"summary": "Valkey reachable, readers running, not draining",
                           "responses": {"200": {"description": "ready"},
                                         "503": {"description": "not ready"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics",
                             "responses": {"200": {"description": "text exposition"}}}},
    }  # fmt: skip
    return openapi_document(
        title="Pulsar Relay gateway",
        version="1",
        description="Consumers' API: WebSocket, long-poll and SSE with exact resume.",
        paths=paths,
        types=[PollResponse, Envelope, GapEvent, ClientFrame, ErrorBody],
    )


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    state = gateway_state(request)
    if state.drain.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    try:
        async with asyncio.timeout(state.settings.valkey_timeout):
            info: Any = await persistence_info(state.client)
    except (GlideError, TimeoutError):
        state.metrics.read_errors.inc()
        return JSONResponse({"status": "valkey unreachable"}, status_code=503)
    text = b"".join(info.values()) if isinstance(info, dict) else info
    if b"loading:1" in text:
        return JSONResponse({"status": "valkey loading"}, status_code=503)
    if not state.hub.source.healthy:
        return JSONResponse({"status": "readers failing"}, status_code=503)
    return JSONResponse({"status": "ready"})


class GatewayApp(Starlette):
    """Starlette, except that the two hot endpoints skip layers that do nothing for them.

    - ``/api/v1/ws``: a WebSocket's ASGI call lives as long as the connection, so every
      middleware and routing layer it passes through stays in memory as a suspended coroutine
      frame — about 5 KiB per idle connection for Starlette's stack. None of those layers acts
      on this endpoint (it is not HTTP, and it raises no ``WebSocketException``).
    - ``GET /api/v1/poll`` without an ``Origin`` header (CORS has nothing to add then): the
      endpoint is called with its error handling, without five layers of middleware and
      routing per poll — long-poll is one request per answer.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The error boundary, outermost (relaycore.errors): a try costs nothing until it fires,
        # and it is inlined here because a helper coroutine would be one more suspended frame
        # (~300 bytes) held by every idle WebSocket for its whole life.
        try:
            path = scope.get("path", "")
            root = scope.get("root_path", "")
            if scope["type"] == "websocket" and path == root + WS_PATH:
                scope["app"] = self
                await websocket_endpoint(WebSocket(scope, receive, send))
                return
            if (
                scope["type"] == "http"
                and scope["method"] == "GET"
                and path == root + POLL_PATH
                and not has_origin(scope["headers"])
            ):
                scope["app"] = self
                try:
                    response = await poll_endpoint(Request(scope, receive), response_writer(scope))
                except ApiError as error:
                    response = error_response(error)
                await response(scope, receive, send)
                return
            await super().__call__(scope, receive, send)
        except Exception as error:
            if scope["type"] == "lifespan":
                raise
            await answer_unhandled(scope, send, error)


def create_app(
    settings: Settings, *, valkey: ValkeyClient | None = None, drain: Drain | None = None
) -> Starlette:
    """The gateway app; ``valkey`` injects an existing client for non-blocking commands.

    ``drain`` is shared with :class:`~relay_gateway.shutdown.GatewayServer`, whose SIGTERM
    handling runs the drain before uvicorn's own shutdown.
    """
    openapi = _openapi()
    drainer = drain or Drain(settings)

    async def metrics(request: Request) -> Response:
        state = gateway_state(request)
        valkey_ok = await state.metrics.refresh_valkey(
            state.client, limit=state.settings.valkey_timeout
        )
        ready = valkey_ok and state.hub.source.healthy and not state.drain.draining
        state.metrics.ready.set(float(ready))
        return metrics_endpoint(state.metrics.registry)

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi)

    async def docs(request: Request) -> HTMLResponse:
        return docs_page("Pulsar Relay gateway")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, DirectHandler]]:
        dsn = ValkeyDsn.from_dsn(settings.valkey_url).with_ca_file(settings.valkey_tls_ca_file)
        cluster = settings.valkey_cluster
        timeout = settings.valkey_timeout
        client = valkey or await create_client(
            dsn, cluster=cluster, name="relay-gateway", request_timeout=timeout
        )
        reader_clients: list[ValkeyClient] = []
        tracing = Tracing("relay-gateway", settings.otlp_endpoint)
        try:
            for index in range(settings.reader_pool_size):
                reader_clients.append(
                    await create_client(
                        dsn, cluster=cluster, name=f"relay-gateway-reader-{index}",
                        request_timeout=timeout,
                    )
                )  # fmt: skip
            metrics = GatewayMetrics()
            # Fail fast while a single Valkey is down (relay_gateway.health); on a cluster a dead
            # primary stops only its own slots, so there is no process-wide verdict.
            health = (
                None
                if cluster
                else StorageHealth(client, probe_interval=settings.valkey_probe_interval)
            )
            readers = ReaderPool(reader_clients, settings, metrics, health)
            tracer = tracing.tracer if tracing.enabled else None
            source = ValkeySource(client, readers, metrics, health)
            hub = Hub(settings, source, metrics, tracer)
            app.state.gateway = GatewayState(
                settings=settings,
                client=client,
                hub=hub,
                metrics=metrics,
                auth=Authenticator.from_settings(settings),
                drain=drainer,
                connection_cap=ConnectionCap(settings.max_connections_per_principal),
            )
            async with asyncio.TaskGroup() as group:
                tasks = source.start(hub.dispatch, group)
                tasks.append(group.create_task(hub.sweep_forever(), name="relay-hub-sweeper"))
                log.info("gateway_started", valkey=dsn.redacted(), readers=len(reader_clients))
                try:
                    # Lifespan state: the server's protocol answers most polls itself
                    # (relay_gateway.longpoll_direct; servers without relay.direct ignore it).
                    yield {DIRECT: direct_polls(app.state.gateway)}
                finally:
                    await drainer.run()
                    for task in tasks:
                        task.cancel()
        finally:
            for reader_client in reader_clients:
                await reader_client.close()
            if valkey is None:
                await client.close()
            tracing.shutdown()

    return GatewayApp(
        routes=[
            # GatewayApp.__call__ answers this path itself; the route keeps the table complete.
            WebSocketRoute(WS_PATH, websocket_endpoint),
            Route(POLL_PATH, poll_endpoint, methods=["GET"]),
            Route("/api/v1/sse", sse_endpoint, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/ready", ready, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi_json, methods=["GET"]),
            Route("/docs", docs, methods=["GET"]),
            *ui_routes(settings),
        ],
        middleware=cors_middleware(settings, ["GET"]),
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
