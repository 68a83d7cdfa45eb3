"""``RelayClient``: publish to ingest (with safe retries) and subscribe through the gateway.

One client holds one ``httpx.AsyncClient`` (connection pool) for publish, topic info, long-poll
and SSE; each WebSocket subscription opens its own connection. Use it as an async context
manager so the pool is closed::

    async with RelayClient(token=token) as client:
        await client.publish("orders.eu", {"order": 42})
        async for item in client.subscribe("orders.eu", since="0"):
            ...
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx
import msgspec

from relay_client.errors import (
    InvalidRequestError,
    RelayConnectionError,
    RelayError,
    error_from_response,
    retry_after_seconds,
)
from relay_client.models import Published, TopicInfo
from relay_client.retry import PUBLISH_RETRY, SUBSCRIBE_RETRY, RetryPolicy
from relay_client.subscribe import Subscription, Transport, check_topic

__all__ = ["DEFAULT_GATEWAY_URL", "DEFAULT_INGEST_URL", "BatchItem", "RelayClient"]

DEFAULT_INGEST_URL = "http://127.0.0.1:8080"
DEFAULT_GATEWAY_URL = "http://127.0.0.1:8081"

BatchItem = Mapping[str, Any]

_RETRY_STATUSES = frozenset({429, 502, 503, 504})


class _PublishResults(msgspec.Struct):
    results: list[Published]


_published = msgspec.json.Decoder(Published)
_batch = msgspec.json.Decoder(_PublishResults)
_info = msgspec.json.Decoder(TopicInfo)


def _new_key() -> str:
    return "sdk-" + uuid.uuid4().hex


class RelayClient:
    """Async client of one relay deployment (an ingest URL and a gateway URL).

    ``token`` is sent as ``Authorization: Bearer`` (and as the WebSocket handshake header).
    ``publish_retry`` / ``subscribe_retry`` tune backoff; ``timeout`` is one HTTP request's.
    """

    def __init__(
        self,
        ingest_url: str = DEFAULT_INGEST_URL,
        gateway_url: str = DEFAULT_GATEWAY_URL,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        publish_retry: RetryPolicy = PUBLISH_RETRY,
        subscribe_retry: RetryPolicy = SUBSCRIBE_RETRY,
    ) -> None:
        self.ingest_url = ingest_url.rstrip("/")
        self.gateway_url = gateway_url.rstrip("/")
        self.token = token
        self.publish_retry = publish_retry
        self.subscribe_retry = subscribe_retry
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(
            headers=headers,
            timeout=timeout,
            # Long-poll and SSE hold connections; publishes must not queue behind them.
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )

    async def __aenter__(self) -> RelayClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- publish ------------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Published:
        """Publish one message; retried on 503/429/connection errors with the same key.

        Without ``key`` the SDK generates one, so a retry after a lost answer is answered as a
        duplicate by ingest instead of writing the message twice (it is then reported with
        ``duplicate=False``: the only write was this call's own first attempt).
        """
        check_topic(topic)
        body: dict[str, Any] = {"topic": topic, "payload": payload, "key": key or _new_key()}
        if headers:
            body["headers"] = dict(headers)
        raw = await self._post("/api/v1/messages", body)
        published = _published.decode(raw)
        if key is None and published.duplicate:
            published = msgspec.structs.replace(published, duplicate=False)
        return published

    async def publish_batch(self, messages: Sequence[BatchItem]) -> list[Published]:
        """Publish 1..1000 messages (``{"topic", "payload", "key"?, "headers"?}`` each) at once.

        Validated as a whole by ingest (one bad item: :class:`InvalidRequestError`, nothing
        written); each item without a key gets a generated one, so retries never write twice.
        """
        if not messages:
            raise InvalidRequestError("a batch needs at least one message", code="empty_batch")
        items: list[dict[str, Any]] = []
        generated: list[bool] = []
        for message in messages:
            item = dict(message)
            if "topic" not in item or "payload" not in item:
                raise InvalidRequestError("each batch item needs a topic and a payload")
            check_topic(item["topic"])
            generated.append(item.get("key") is None)
            if item.get("key") is None:
                item["key"] = _new_key()
            items.append(item)
        raw = await self._post("/api/v1/messages/batch", {"messages": items})
        results = _batch.decode(raw).results
        return [
            msgspec.structs.replace(result, duplicate=False) if own and result.duplicate else result
            for result, own in zip(results, generated, strict=True)
        ]

    async def _post(self, path: str, body: dict[str, Any]) -> bytes:
        content = msgspec.json.encode(body)
        url = self.ingest_url + path
        policy = self.publish_retry
        started = time.monotonic()
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                response = await self.http.post(
                    url, content=content, headers={"content-type": "application/json"}
                )
            except httpx.TransportError as error:
                # Connection refused, reset, timed out: the message may or may not have been
                # written; the idempotency key makes the retry safe either way.
                failure: RelayError = RelayConnectionError(
                    f"cannot reach ingest at {self.ingest_url}: {error!r}"
                )
            else:
                if response.status_code in (200, 201):
                    return response.content
                failure = error_from_response(
                    response.status_code, response.content, dict(response.headers)
                )
                if response.status_code not in _RETRY_STATUSES:
                    raise failure
                retry_after = retry_after_seconds(response.headers.get("retry-after"))
            delay = policy.delay(attempt, retry_after)
            attempt += 1
            elapsed = time.monotonic() - started
            out_of_attempts = policy.attempts is not None and attempt >= policy.attempts
            out_of_time = policy.deadline is not None and elapsed + delay > policy.deadline
            if out_of_attempts or out_of_time:
                raise failure
            await asyncio.sleep(delay)

    # -- topic info ---------------------------------------------------------------------------

    async def info(self, topic: str) -> TopicInfo:
        """Ingest's topic info: length, first/last id, effective retention (404: never existed)."""
        check_topic(topic)
        try:
            response = await self.http.get(f"{self.ingest_url}/api/v1/topics/{topic}")
        except httpx.TransportError as error:
            raise RelayConnectionError(
                f"cannot reach ingest at {self.ingest_url}: {error!r}"
            ) from None
        if response.status_code != 200:
            raise error_from_response(
                response.status_code, response.content, dict(response.headers)
            )
        return _info.decode(response.content)

    # -- subscribe ----------------------------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        since: str | int | None = None,
        transport: Transport | str = "ws",
    ) -> Subscription:
        """An async iterator of :class:`Message` and :class:`Gap` items of ``topic``.

        ``since`` (a message id or a millisecond timestamp) replays what is retained after it
        first; without it delivery starts with messages published from now on. The iterator
        reconnects by itself (backoff with jitter; server restarts, resets and network errors
        alike) and resumes after the last id it yielded: every message once, in order, or a
        :class:`Gap`. 401/403/invalid topic or cursor raise :class:`RelayError` subclasses.
        ``async with`` it, or call ``aclose()``, to stop early.
        """
        return Subscription(self, topic, since, transport)
