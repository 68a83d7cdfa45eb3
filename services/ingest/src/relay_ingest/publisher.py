"""The write path: messages → ``relay_publish_v1`` FCALLs on the shared pipeline.

A single publish is one call of the relay Valkey Function ``relay_publish``
(``relaycore.streams``): idempotency check, XADD with ``MAXLEN ~``, max-age trim and the
idempotency record, atomically, in one command, queued on the next shared batch. A batch request
is ONE pipeline operation holding one ``relay_publish_many`` call per topic, which does the same
for that topic's messages in request order (per-topic order in the stream = order in the
request): one round trip, and a command per topic rather than per message.

Concurrent single publishes to the same topic are merged the same way: the first queues one
pipeline operation for the topic, later ones join it until the flusher takes it (at most
``RELAY_PUBLISH_PIPELINE_SIZE`` messages), and it becomes one ``relay_publish_many`` call
(``relay_publish_payloads`` when no message has headers or a key, ``relay_publish`` for a lone
message). GLIDE's cost is per command, and Valkey looks up the
previous id and trims once per call, so under load a round trip carries a few large calls
instead of many small ones. Each request still gets its own result, in arrival order.

After a Valkey restart without data the function is gone: calls fail with "function not found".
The publisher then loads the library (once, however many requests noticed) and retries those
calls once. Anything else the server refuses, and any connection failure, is
:class:`~relay_ingest.pipeline.Unavailable`: the request gets 503 and never a 2xx for a message
that was not written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from glide import GlideError

from relay_ingest.pipeline import AnyBatch, Pipeline, Queued, Unavailable
from relaycore.logging import get_logger
from relaycore.metrics import CommonMetrics
from relaycore.retention import Retention, RetentionPolicy
from relaycore.streams import (
    StreamRetention,
    add_publish,
    add_publish_many,
    add_publish_payloads,
    ensure_functions,
    is_missing_function,
    parse_publish_many,
)
from relaycore.valkey import ValkeyClient

__all__ = ["OutgoingMessage", "Published", "Publisher", "TopicRetention"]

log = get_logger("relay_ingest.publisher")


# Not frozen: a frozen dataclass's __init__ goes through object.__setattr__ per field, which
# showed up in batch profiles (hundreds of these per request). Treat them as immutable.
@dataclass(slots=True)
class OutgoingMessage:
    """One validated message, encoded for storage."""

    topic: str
    payload: bytes
    headers: bytes | None
    key: str | None


@dataclass(slots=True)
class Published:
    """Where a message went: its stream id, and whether an earlier publish already wrote it."""

    id: str
    ts: int
    duplicate: bool


RetentionOf = Callable[[str], StreamRetention]
"""A topic's retention arguments for the publish functions."""


class TopicRetention:
    """Each topic's :class:`StreamRetention`: the policy's answer (``RELAY_RETENTION_RULES``
    over the defaults) plus the idempotency TTL.

    Asked once per publish call, i.e. per topic of a batch or merged call, never per message.
    The policy caches per topic; the StreamRetention objects are shared per distinct retention
    (at most one per rule, plus the defaults).
    """

    def __init__(self, policy: RetentionPolicy, idempotency_ttl_ms: int) -> None:
        self.policy = policy
        self._ttl_ms = idempotency_ttl_ms
        self._shared: dict[Retention, StreamRetention] = {}

    def __call__(self, topic: str) -> StreamRetention:
        retention = self.policy.for_topic(topic)
        found = self._shared.get(retention)
        if found is None:
            found = StreamRetention(retention.maxlen, retention.max_age_ms, self._ttl_ms)
            self._shared[retention] = found
        return found


def _same_retention(retention: StreamRetention, topic: str) -> StreamRetention:
    return retention


def _by_topic(messages: Sequence[OutgoingMessage]) -> list[list[int]]:
    """Indexes of the messages grouped by topic, each group in request order."""
    groups: dict[str, list[int]] = {}
    for index, message in enumerate(messages):
        groups.setdefault(message.topic, []).append(index)
    return list(groups.values())


def _is_plain(messages: Sequence[OutgoingMessage], call: Sequence[int]) -> bool:
    """No headers and no idempotency key: the call can pass one argument per message."""
    return all(messages[i].headers is None and messages[i].key is None for i in call)


def _add_calls(
    messages: Sequence[OutgoingMessage],
    calls: Sequence[Sequence[int]],
    retention_of: RetentionOf,
    batch: AnyBatch,
) -> None:
    # Every call is one topic's messages, so each call carries its own topic's retention.
    for call in calls:
        topic = messages[call[0]].topic
        retention = retention_of(topic)
        if len(messages) == 1:
            message = messages[call[0]]
            add_publish(batch, topic, message.payload, message.headers, message.key, retention)
        elif _is_plain(messages, call):
            payloads = [messages[i].payload for i in call]
            add_publish_payloads(batch, topic, payloads, retention)
        else:
            group = [(messages[i].payload, messages[i].headers, messages[i].key) for i in call]
            add_publish_many(batch, topic, group, retention)


def _replies(
    messages: Sequence[OutgoingMessage], call: Sequence[int], result: Any
) -> list[tuple[Any, Any]]:
    """``(id, duplicate)`` per message of one call added by :func:`_add_calls`."""
    if len(messages) == 1:
        return [result]
    if _is_plain(messages, call):
        return [(raw_id, 0) for raw_id in result]
    return parse_publish_many(result)


_MISSING = object()
"""What a merged call's waiters get when the function was missing: each retries on its own."""


@dataclass(slots=True)
class _TopicGroup:
    """Single publishes to one topic waiting for the same round trip (one command for all)."""

    topic: str
    messages: list[OutgoingMessage] = field(default_factory=list)
    waiters: list[asyncio.Future[Any]] = field(default_factory=list)
    sent: int = 0


class Publisher:
    """Publishes messages through the shared pipeline and interprets the function's replies."""

    def __init__(
        self,
        client: ValkeyClient,
        pipeline: Pipeline,
        retention: StreamRetention | RetentionOf,
        metrics: CommonMetrics | None = None,
        *,
        merge_limit: int = 256,
    ) -> None:
        self._client = client
        self._pipeline = pipeline
        # One retention for every topic, or a topic's own (TopicRetention).
        self._retention: RetentionOf = (
            partial(_same_retention, retention)
            if isinstance(retention, StreamRetention)
            else retention
        )
        self._metrics = metrics
        self._load_lock = asyncio.Lock()
        self._loads = 0
        # Most single publishes merged into one call; 1 turns merging off.
        self._merge_limit = merge_limit
        self._groups: dict[str, tuple[_TopicGroup, Queued]] = {}

    @property
    def function_loads(self) -> int:
        """How many times this publisher has loaded the function library."""
        return self._loads

    async def publish(self, messages: Sequence[OutgoingMessage]) -> list[Published]:
        """Write ``messages`` in order in one round trip; raise :class:`Unavailable` on failure.

        One message is one ``relay_publish`` call; several (a batch request) are one
        ``relay_publish_many`` call per topic, each topic's messages in request order.
        """
        if len(messages) == 1 and self._merge_limit > 1:
            return [await self._publish_merged(messages[0])]
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
            replies = _replies(messages, call, result)
            for index, (raw_id, duplicate) in zip(call, replies, strict=True):
                published[index] = _published(raw_id, duplicate)
        return published

    async def _publish_merged(self, message: OutgoingMessage) -> Published:
        """One message, in the topic's group for the next round trip (see module doc)."""
        loads_seen = self._loads
        entry = self._groups.get(message.topic)
        joined = (
            entry is not None
            and len(entry[0].messages) < self._merge_limit
            and self._pipeline.grow(entry[1], 1)  # raises Unavailable like submit
        )
        if entry is None or not joined:
            group = _TopicGroup(message.topic)
            queued = self._pipeline.submit(partial(self._build_group, group), 1)
            queued.future.add_done_callback(partial(self._group_done, group))
            entry = self._groups[message.topic] = (group, queued)
        group = entry[0]
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        group.messages.append(message)
        group.waiters.append(waiter)
        outcome = await waiter
        if outcome is not _MISSING:
            published: Published = outcome
            return published
        # The function was gone (a Valkey restart without data): load it once, retry alone.
        await self.load_functions(loads_seen)
        (result,) = await self._pipeline.execute(
            partial(_add_calls, [message], [[0]], self._retention), 1
        )
        if isinstance(result, BaseException):
            raise self._refused(result)
        return _published(*result)

    def _build_group(self, group: _TopicGroup, batch: AnyBatch) -> None:
        """At flush time: seal the group (later publishes start a new one), add its command."""
        self._forget(group)
        group.sent = len(group.messages)
        if group.sent == 1:
            _add_calls(group.messages, [[0]], self._retention, batch)
        else:
            _add_calls(group.messages, [range(group.sent)], self._retention, batch)

    def _group_done(self, group: _TopicGroup, future: asyncio.Future[list[Any]]) -> None:
        """Hand each waiter of a merged call its own result (or the shared failure)."""
        self._forget(group)
        outcomes: list[Any] | None = None
        error: BaseException | None = None
        if future.cancelled():
            error = Unavailable("the service is shutting down")
        elif future.exception() is not None:
            error = future.exception()
        else:
            (result,) = future.result()
            if _is_missing(result):
                outcomes = [_MISSING] * group.sent
            elif isinstance(result, BaseException):
                error = self._refused(result)
            else:
                try:
                    replies = _replies(group.messages, range(group.sent), result)
                    outcomes = [_published(raw_id, duplicate) for raw_id, duplicate in replies]
                except Exception:  # a reply of an unexpected shape must not leave waiters hanging
                    log.exception("valkey_publish_reply_unreadable")
                    error = Unavailable("storage returned an unexpected reply")
        for index, waiter in enumerate(group.waiters):
            if waiter.done():  # its request was cancelled
                continue
            if outcomes is not None and index < len(outcomes):
                waiter.set_result(outcomes[index])
            else:
                reason = error.reason if isinstance(error, Unavailable) else "the write failed"
                waiter.set_exception(Unavailable(reason))

    def _forget(self, group: _TopicGroup) -> None:
        entry = self._groups.get(group.topic)
        if entry is not None and entry[0] is group:
            del self._groups[group.topic]

    def _refused(self, result: BaseException) -> Unavailable:
        self._count_error("publish")
        log.error("valkey_publish_failed", error=str(result))
        error = Unavailable("storage refused the write")
        error.__cause__ = result
        return error

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
    return Published(message_id, int(message_id[: message_id.find("-")]), duplicate == 1)


def _is_missing(result: Any) -> bool:
    return isinstance(result, BaseException) and is_missing_function(result)
