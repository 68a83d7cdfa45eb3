"""Starlette routes: the producers' API (contract §4) and the operations endpoints (§9).

The publish endpoints are thin wrappers around ``relay_ingest.publishing`` (which the ASGI fast
lane calls too); every error has the §7 body ``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

import asyncio

from glide import GlideError
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from relay_ingest.openapi import openapi_json
from relay_ingest.pipeline import Unavailable
from relay_ingest.publishing import (
    Reply,
    authenticate,
    publish_batch,
    publish_single,
    unavailable,
)
from relay_ingest.state import ingest_state
from relaycore.http import ApiError, JSONBytesResponse, docs_page, error_response
from relaycore.keys import is_valid_topic
from relaycore.metrics import metrics_endpoint
from relaycore.models import (
    ErrorDetail,
    RetentionInfo,
    TopicInfo,
    encoder,
)
from relaycore.streams import stream_info
from relaycore.valkey import persistence_info

__all__ = ["routes"]

_READY_TIMEOUT = 1.0


def _respond(reply: Reply) -> Response:
    return JSONBytesResponse(reply.body, status_code=reply.status, headers=dict(reply.headers))


async def publish_message(request: Request) -> Response:
    return _respond(await publish_single(ingest_state(request), request.headers, request.stream()))


async def publish_messages(request: Request) -> Response:
    return _respond(await publish_batch(ingest_state(request), request.headers, request.stream()))


async def topic_info(request: Request) -> Response:
    state = ingest_state(request)
    principal = authenticate(state, request.headers)
    topic: str = request.path_params["topic"]
    if not is_valid_topic(topic):
        raise ApiError(
            422,
            "validation_error",
            "invalid topic name",
            [ErrorDetail("invalid topic name", path="topic")],
        )
    if not (principal.may_publish(topic) or principal.may_subscribe(topic)):
        raise ApiError(403, "forbidden", "the token does not permit access to this topic")
    if not state.pipeline.available:
        raise unavailable(Unavailable("storage is unavailable"))
    try:
        info = await stream_info(state.client, topic)
    except GlideError as error:
        state.metrics.valkey_errors.labels(state.metrics.service, "topic_info").inc()
        raise unavailable(Unavailable("storage is unavailable")) from error
    if info is None:
        raise ApiError(404, "not_found", f"topic {topic!r} does not exist")
    retention = state.retention.for_topic(topic)
    body = TopicInfo(
        topic=topic,
        length=info.length,
        first_id=str(info.first_id) if info.first_id else None,
        last_id=str(info.last_id) if info.last_id else None,
        retention=RetentionInfo(maxlen=retention.maxlen, max_age_ms=retention.max_age_ms),
    )
    return JSONBytesResponse(encoder.encode(body))


async def health(request: Request) -> Response:
    return JSONBytesResponse(b'{"status":"ok"}')


async def ready(request: Request) -> Response:
    state = ingest_state(request)
    if state.draining:
        return error_response(unavailable(Unavailable("the service is shutting down")))
    if not state.pipeline.available:
        # The write path saw an outage and has not reconnected (and reloaded) yet.
        return error_response(unavailable(Unavailable("storage is unavailable")))
    try:
        async with asyncio.timeout(_READY_TIMEOUT):
            info = await persistence_info(state.client)
    except (GlideError, TimeoutError):
        return error_response(unavailable(Unavailable("storage is unreachable")))
    replies = info.values() if isinstance(info, dict) else [info]
    if any(b"loading:1" in reply for reply in replies):
        return error_response(unavailable(Unavailable("storage is loading its data")))
    return JSONBytesResponse(b'{"status":"ready"}')


async def metrics(request: Request) -> Response:
    state = ingest_state(request)
    valkey_ok = await state.metrics.refresh_valkey(
        state.client, limit=state.settings.valkey_timeout
    )
    ready = valkey_ok and state.pipeline.available and not state.draining
    state.metrics.ready.set(float(ready))
    return metrics_endpoint(state.metrics.registry)


async def openapi(request: Request) -> Response:
    return JSONBytesResponse(openapi_json())


async def docs(request: Request) -> HTMLResponse:
    return docs_page("Pulsar Relay ingest API")


routes = [
    Route("/api/v1/messages", publish_message, methods=["POST"]),
    Route("/api/v1/messages/batch", publish_messages, methods=["POST"]),
    Route("/api/v1/topics/{topic}", topic_info, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
]
