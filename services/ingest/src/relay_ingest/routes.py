"""The producers' HTTP API (contract §4) and the operations endpoints (§9).

Every check happens before anything is written, in this order: credentials (401), content type
(415), body size (413), JSON (400), schema (422), payload size (413), topic permission (403),
rate limit (429); then the write, which either lands (201/200) or answers 503 with
``Retry-After``. Every error has the §7 body ``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from glide import GlideError, InfoSection
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from relay_ingest.body import read_json_body
from relay_ingest.messages import decode_batch, decode_single
from relay_ingest.openapi import openapi_json
from relay_ingest.pipeline import Unavailable
from relay_ingest.publisher import OutgoingMessage, Published
from relay_ingest.ratelimit import RateLimited
from relay_ingest.state import IngestState, ingest_state
from relaycore.auth import AuthError, Principal, bearer_token
from relaycore.http import ApiError, JSONBytesResponse, docs_page, error_response
from relaycore.keys import is_valid_topic
from relaycore.metrics import metrics_endpoint
from relaycore.models import (
    BatchResponse,
    ErrorDetail,
    PublishRequest,
    PublishResult,
    TopicInfo,
    encoder,
)
from relaycore.streams import stream_info

__all__ = ["routes"]

_READY_TIMEOUT = 1.0


def _unavailable(error: Unavailable) -> ApiError:
    return ApiError(
        503, "unavailable", error.reason, headers={"Retry-After": str(error.retry_after)}
    )


def _authenticate(state: IngestState, request: Request) -> Principal:
    try:
        return state.authenticator.authenticate(bearer_token(request.headers.get("authorization")))
    except AuthError as error:
        raise ApiError(
            401, "unauthorized", str(error), headers={"WWW-Authenticate": "Bearer"}
        ) from None


def _authorize(principal: Principal, items: Sequence[PublishRequest], batch: bool) -> None:
    denied = [
        ErrorDetail(
            f"not allowed to publish to {item.topic!r}",
            path=f"$.messages[{index}].topic" if batch else "$.topic",
            index=index if batch else None,
        )
        for index, item in enumerate(items)
        if not principal.may_publish(item.topic)
    ]
    if denied:
        raise ApiError(
            403, "forbidden", "the token does not permit publishing to this topic", denied
        )


async def _write(
    state: IngestState,
    request: Request,
    principal: Principal,
    items: Sequence[PublishRequest],
    messages: list[OutgoingMessage],
) -> list[Published]:
    try:
        await state.limiter.acquire(principal.subject, len(messages))
    except RateLimited as error:
        raise ApiError(
            429, "rate_limited", str(error), headers={"Retry-After": str(error.retry_after)}
        ) from None
    except Unavailable as error:
        raise _unavailable(error) from None
    if not state.spans.enabled:
        try:
            return await state.publisher.publish(messages)
        except Unavailable as error:
            raise _unavailable(error) from None
    spans, messages = state.spans.start(request.headers, items, messages)
    try:
        published = await state.publisher.publish(messages)
    except Unavailable as error:
        state.spans.finish(spans, None, error)
        raise _unavailable(error) from None
    state.spans.finish(spans, published)
    return published


def _count(state: IngestState, published: Sequence[Published]) -> None:
    duplicates = sum(1 for p in published if p.duplicate)
    if duplicates:
        state.metrics.messages.labels("duplicate").inc(duplicates)
    if len(published) - duplicates:
        state.metrics.messages.labels("created").inc(len(published) - duplicates)


async def publish_message(request: Request) -> Response:
    state = ingest_state(request)
    try:
        principal = _authenticate(state, request)
        body = await read_json_body(request, state.settings.max_body_bytes)
        item, message = decode_single(body, state.limits)
        _authorize(principal, (item,), batch=False)
        (published,) = await _write(state, request, principal, (item,), [message])
    except ApiError as error:
        state.metrics.messages.labels(error.code).inc()
        raise
    _count(state, (published,))
    result = PublishResult(published.id, item.topic, published.ts, published.duplicate)
    return JSONBytesResponse(
        encoder.encode(result), status_code=200 if published.duplicate else 201
    )


async def publish_batch(request: Request) -> Response:
    state = ingest_state(request)
    count = 1
    try:
        principal = _authenticate(state, request)
        body = await read_json_body(request, state.settings.max_body_bytes)
        items, messages = decode_batch(body, state.limits)
        count = len(items)
        _authorize(principal, items, batch=True)
        published = await _write(state, request, principal, items, messages)
    except ApiError as error:
        state.metrics.messages.labels(error.code).inc(count)
        raise
    _count(state, published)
    results = [
        PublishResult(p.id, item.topic, p.ts, p.duplicate)
        for item, p in zip(items, published, strict=True)
    ]
    return JSONBytesResponse(encoder.encode(BatchResponse(results)), status_code=201)


async def topic_info(request: Request) -> Response:
    state = ingest_state(request)
    principal = _authenticate(state, request)
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
        raise _unavailable(Unavailable("storage is unavailable"))
    try:
        info = await stream_info(state.client, topic)
    except GlideError as error:
        state.metrics.valkey_errors.labels(state.metrics.service, "topic_info").inc()
        raise _unavailable(Unavailable("storage is unavailable")) from error
    if info is None:
        raise ApiError(404, "not_found", f"topic {topic!r} does not exist")
    body = TopicInfo(
        topic=topic,
        length=info.length,
        first_id=str(info.first_id) if info.first_id else None,
        last_id=str(info.last_id) if info.last_id else None,
        retention=state.retention,
    )
    return JSONBytesResponse(encoder.encode(body))


async def health(request: Request) -> Response:
    return JSONBytesResponse(b'{"status":"ok"}')


async def ready(request: Request) -> Response:
    state = ingest_state(request)
    if state.draining:
        return error_response(_unavailable(Unavailable("the service is shutting down")))
    try:
        async with asyncio.timeout(_READY_TIMEOUT):
            await state.client.ping()
            info = await state.client.info([InfoSection.PERSISTENCE])
    except (GlideError, TimeoutError):
        return error_response(_unavailable(Unavailable("storage is unreachable")))
    replies = info.values() if isinstance(info, dict) else [info]
    if any(b"loading:1" in reply for reply in replies):
        return error_response(_unavailable(Unavailable("storage is loading its data")))
    return JSONBytesResponse(b'{"status":"ready"}')


async def metrics(request: Request) -> Response:
    return metrics_endpoint(ingest_state(request).metrics.registry)


async def openapi(request: Request) -> Response:
    return JSONBytesResponse(openapi_json())


async def docs(request: Request) -> HTMLResponse:
    return docs_page("Pulsar Relay ingest API")


routes = [
    Route("/api/v1/messages", publish_message, methods=["POST"]),
    Route("/api/v1/messages/batch", publish_batch, methods=["POST"]),
    Route("/api/v1/topics/{topic}", topic_info, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
]
