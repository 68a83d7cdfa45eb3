"""The two publish endpoints, independent of how the request reached them.

``publish_single`` and ``publish_batch`` take the request headers and an async iterator of body
chunks and return a :class:`Reply` (status, JSON body, extra headers). The Starlette routes and
the ASGI fast lane (``relay_ingest.fastlane``) both call them, so there is one implementation
of the producer API and two thin ways to deliver it.

Every check happens before anything is written, in this order: credentials (401), content type
(415), body size (413), JSON (400), schema (422), payload size (413), topic permission (403),
rate limit (429); then the write, which either lands (201/200) or answers 503 with
``Retry-After``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from relay_ingest.body import read_json_body
from relay_ingest.messages import decode_batch, decode_single
from relay_ingest.pipeline import Unavailable
from relay_ingest.publisher import OutgoingMessage, Published
from relay_ingest.ratelimit import RateLimited
from relay_ingest.state import IngestState
from relaycore.auth import AuthError, Principal, bearer_token
from relaycore.http import ApiError
from relaycore.models import (
    BatchResponse,
    ErrorDetail,
    PublishRequest,
    PublishResult,
    encoder,
    error_body,
)

__all__ = [
    "Reply",
    "authenticate",
    "error_reply",
    "publish_batch",
    "publish_single",
    "unavailable",
]


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer to send: status, already-encoded JSON body, extra headers."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


def error_reply(error: ApiError) -> Reply:
    return Reply(error.status, error_body(error.code, error.message, error.details), error.headers)


def unavailable(error: Unavailable) -> ApiError:
    return ApiError(
        503, "unavailable", error.reason, headers={"Retry-After": str(error.retry_after)}
    )


def authenticate(state: IngestState, headers: Mapping[str, str]) -> Principal:
    try:
        return state.authenticator.authenticate(bearer_token(headers.get("authorization")))
    except AuthError as error:
        raise ApiError(
            401, "unauthorized", str(error), headers={"WWW-Authenticate": "Bearer"}
        ) from None


def _authorize(principal: Principal, items: Sequence[PublishRequest], batch: bool) -> None:
    if "*" in principal.publish:  # allowed everything (the anonymous principal, or a "*" claim)
        return
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
    headers: Mapping[str, str],
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
        raise unavailable(error) from None
    if not state.spans.enabled:
        try:
            return await state.publisher.publish(messages)
        except Unavailable as error:
            raise unavailable(error) from None
    spans, messages = state.spans.start(headers, items, messages)
    try:
        published = await state.publisher.publish(messages)
    except Unavailable as error:
        state.spans.finish(spans, None, error)
        raise unavailable(error) from None
    state.spans.finish(spans, published)
    return published


def _count(state: IngestState, published: Sequence[Published]) -> None:
    duplicates = sum(1 for p in published if p.duplicate)
    if duplicates:
        state.metrics.duplicates.inc(duplicates)
    if len(published) - duplicates:
        state.metrics.created.inc(len(published) - duplicates)


async def publish_single(
    state: IngestState, headers: Mapping[str, str], chunks: AsyncIterator[bytes]
) -> Reply:
    """``POST /api/v1/messages``."""
    try:
        principal = authenticate(state, headers)
        body = await read_json_body(headers, chunks, state.settings.max_body_bytes)
        item, message = decode_single(body, state.limits)
        _authorize(principal, (item,), batch=False)
        (published,) = await _write(state, headers, principal, (item,), [message])
    except ApiError as error:
        state.metrics.messages.labels(error.code).inc()
        return error_reply(error)
    _count(state, (published,))
    result = PublishResult(published.id, item.topic, published.ts, published.duplicate)
    return Reply(200 if published.duplicate else 201, encoder.encode(result))


async def publish_batch(
    state: IngestState, headers: Mapping[str, str], chunks: AsyncIterator[bytes]
) -> Reply:
    """``POST /api/v1/messages/batch``."""
    count = 1
    try:
        principal = authenticate(state, headers)
        body = await read_json_body(headers, chunks, state.settings.max_body_bytes)
        items, messages = decode_batch(body, state.limits)
        count = len(items)
        _authorize(principal, items, batch=True)
        published = await _write(state, headers, principal, items, messages)
    except ApiError as error:
        state.metrics.messages.labels(error.code).inc(count)
        return error_reply(error)
    _count(state, published)
    results = [
        PublishResult(p.id, item.topic, p.ts, p.duplicate)
        for item, p in zip(items, published, strict=True)
    ]
    return Reply(201, encoder.encode(BatchResponse(results)))
