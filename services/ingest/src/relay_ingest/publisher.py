"""The write path: messages → ``relay_publish_v1`` FCALLs on the shared pipeline.

A single publish is one call of the relay Valkey Function ``relay_publish``
(``relaycore.streams``): idempotency check, XADD with ``MAXLEN ~``, max-age trim and the
idempotency record, atomically, in one command, queued on the next shared batch. A batch request
is ONE pipeline operation holding one ``relay_publish_many`` call per topic, which does the same
for that topic's messages in request order (per-topic order in the stream = order in the
request): one round trip, and a command per topic rather than per message.

After a Valkey restart without data the function is gone: calls fail with "function not found".
The publisher then loads the library (once, however many requests noticed) and retries those
calls once. Anything else the server refuses, and any connection failure, is
:class:`~relay_ingest.pipeline.Unavailable`: the request gets 503 and never a 2xx for a message
that was not written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from glide import GlideError

from relay_ingest.pipeline import AnyBatch, Pipeline, Unavailable
from relaycore.logging import get_logger
from relaycore.metrics import CommonMetrics
from relaycore.streams import (
    StreamRetention,
    add_publish,
    add_publish_many,
    ensure_functions,
    is_missing_function,
    parse_publish_many,
)
from relaycore.valkey import ValkeyClient

__all__ = ["OutgoingMessage", "Published", "Publisher"]

log = get_logger("relay_ingest.publisher")


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One validated message, encoded for storage."""

    topic: str
    payload: bytes
    headers: bytes | None
    key: str | None


@dataclass(frozen=True, slots=True)
class Published:
    """Where a message went: its stream id, and whether an earlier publish already wrote it."""

    id: str
    ts: int
    duplicate: bool


def _by_topic(messages: Sequence[OutgoingMessage]) -> list[list[int]]:
    """Indexes of the messages grouped by topic, each group in request order."""
    groups: dict[str, list[int]] = {}
    for index, message in enumerate(messages):
        groups.setdefault(message.topic, []).append(index)
    return list(groups.values())


def _add_calls(
    messages: Sequence[OutgoingMessage],
    calls: Sequence[Sequence[int]],
    retention: StreamRetention,
    batch: AnyBatch,
) -> None:
    for call in calls:
        if len(messages) == 1:
            message = messages[call[0]]
            add_publish(
                batch, message.topic, message.payload, message.headers, message.key, retention
            )
        else:
            group = [(messages[i].payload, messages[i].headers, messages[i].key) for i in call]
            add_publish_many(batch, messages[call[0]].topic, group, retention)


class Publisher:
    """Publishes messages through the shared pipeline and interprets the function's replies."""

    def __init__(
        self,
        client: ValkeyClient,
        pipeline: Pipeline,
        retention: StreamRetention,
        metrics: CommonMetrics | None = None,
    ) -> None:
        self._client = client
        self._pipeline = pipeline
        self._retention = retention
        self._metrics = metrics
        self._load_lock = asyncio.Lock()
        self._loads = 0

    @property
    def function_loads(self) -> int:
        """How many times this publisher has loaded the function library."""
        return self._loads

    async def publish(self, messages: Sequence[OutgoingMessage]) -> list[Published]:
        """Write ``messages`` in order in one round trip; raise :class:`Unavailable` on failure.

        One message is one ``relay_publish`` call; several (a batch request) are one
        ``relay_publish_many`` call per topic, each topic's messages in request order.
        """
        calls = _by_topic(messages) if len(messages) > 1 else [[0]]
        loads_seen = self._loads
        results = await self._pipeline.execute(
            partial(_add_calls, messages, calls, self._retention), len(calls)
        )
        missing = [i for i, result in enumerate(results) if _is_missing(result)]
        if missing:
            await self.load_functions(loads_seen)
            retried = await self._pipeline.execute(
                partial(_add_calls, messages, [calls[i] for i in missing], self._retention),
                len(missing),
            )
            for index, result in zip(missing, retried, strict=True):
                results[index] = result
        published: list[Published] = [_NOT_YET] * len(messages)
        for call, result in zip(calls, results, strict=True):
            if isinstance(result, BaseException):
                self._count_error("publish")
                log.error("valkey_publish_failed", error=str(result))
                raise Unavailable("storage refused the write") from result
            replies = parse_publish_many(result) if len(messages) > 1 else [result]
            for index, (raw_id, duplicate) in zip(call, replies, strict=True):
                published[index] = _published(raw_id, duplicate)
        return published

    async def load_functions(self, loads_seen: int | None = None) -> None:
        """Load the function library; concurrent callers that saw the same failure load once."""
        async with self._load_lock:
            if loads_seen is not None and loads_seen != self._loads:
                return  # another request reloaded it after our calls failed
            try:
                await ensure_functions(self._client)
            except GlideError as error:
                self._count_error("function_load")
                log.error("valkey_function_load_failed", error=str(error))
                raise Unavailable("storage is unavailable") from error
            self._loads += 1
            log.info("valkey_functions_loaded")

    def _count_error(self, operation: str) -> None:
        if self._metrics is not None:
            self._metrics.valkey_errors.labels(self._metrics.service, operation).inc()


_NOT_YET = Published("", 0, False)


def _published(raw_id: Any, duplicate: Any) -> Published:
    message_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
    return Published(message_id, int(message_id.partition("-")[0]), duplicate in (1, True))


def _is_missing(result: Any) -> bool:
    return isinstance(result, BaseException) and is_missing_function(result)
