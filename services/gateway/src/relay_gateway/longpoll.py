"""Long-poll, ``GET /api/v1/poll?topic=&since=&timeout=&limit=`` (contract §5).

Answers at once when messages after ``since`` exist (from the hot window or Valkey), else waits
up to ``timeout`` seconds (default 25, at most 55; 0 = a plain history read) for live ones.
``limit`` caps the messages per answer (default 100, at most 1000). Without ``since`` it waits for
messages published after the request arrived. The body is
``{"topic", "messages", "next", "recovered"}``; ``next`` is the cursor for the next call.

The waiting request is a feed like any other subscriber, registered before history is read, so
the seam between "nothing yet" and "a message arrived" cannot lose one.
"""

from __future__ import annotations

import asyncio
import functools
from abc import ABC, abstractmethod
from typing import NamedTuple

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from relay_gateway.hot import Batch, Message
from relay_gateway.hub import Topic
from relay_gateway.metrics import TransportMetrics
from relay_gateway.params import (
    check_access,
    cursor_param,
    draining,
    integer_param,
    number_param,
    parse_query,
    topic_param,
    unavailable,
)
from relay_gateway.recovery import continues, decide, stream_end
from relay_gateway.source import Unavailable
from relay_gateway.state import GatewayState, gateway_state
from relaycore.ids import Cursor
from relaycore.prepared import PreparedResponse, ResponseWriter

__all__ = [
    "DEFAULT_LIMIT",
    "DEFAULT_TIMEOUT",
    "MAX_LIMIT",
    "MAX_TIMEOUT",
    "POLL_PATH",
    "PollCollector",
    "PollQuery",
    "PollSink",
    "answer_body",
    "answer_headers",
    "has_origin",
    "poll_endpoint",
    "poll_query",
    "prepared_answer",
]

# Validated query strings kept per process (least recently used first out).
QUERY_CACHE_SIZE = 256

POLL_PATH = "/api/v1/poll"

DEFAULT_TIMEOUT = 25.0
MAX_TIMEOUT = 55.0
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class PollSink(ABC):
    """The sink of a waiting long-poll: collects up to ``limit`` messages, then wakes it.

    The hub hands it the messages as they are fanned out. How the poll is woken is the
    subclass's: a future its request task awaits (:class:`PollCollector`), or a callback that
    answers it inside the server's protocol (``relay_gateway.longpoll_direct``).

    A poll that is caught up (its cursor is the batch's previous id), recovered, and served
    through the ``relay.response`` extension is answered right inside the fan-out: every such
    poll's answer is the same bytes — ``{"topic","messages","next","recovered":true}`` of the
    whole batch — so they are built once per batch and written as is to each socket. The woken
    request then only cleans up.
    """

    __slots__ = (
        "answered",
        "full",
        "gapped",
        "limit",
        "messages",
        "metrics",
        "recovered",
        "topic",
        "writer",
    )

    def __init__(
        self,
        limit: int,
        topic: Topic | None = None,
        writer: ResponseWriter | None = None,
        metrics: TransportMetrics | None = None,
    ) -> None:
        self.limit = limit
        self.messages: list[Message] = []
        self.gapped = False
        self.full = False
        # Prepared answers: only with a writer, and only once the resume is known recovered.
        self.topic = topic
        self.writer = writer
        self.metrics = metrics
        self.recovered = False
        self.answered = False

    @abstractmethod
    def _wake(self) -> None:
        """Wake the waiting poll (the subclass's way)."""

    def deliver(self, message: Message) -> None:
        if not self.full and len(self.messages) < self.limit:
            self.messages.append(message)
            self._wake()

    def deliver_batch(self, batch: Batch) -> None:
        if not self.full and not self.messages and len(batch) <= self.limit:
            writer = self.writer
            if writer is not None and self.topic is not None and self.recovered and not self.gapped:
                answer = batch.poll_answer
                if answer is None:
                    answer = batch.poll_answer = prepared_answer(self.topic, batch.messages)
                if writer.write_prepared(answer):
                    self.answered = True
                    self.full = True
                    if self.metrics is not None:
                        # Counted and lag-observed once per fan-out (GatewayMetrics.flush_writes).
                        self.metrics.pending += batch.count
                        self.metrics.shared += 1
                    self._wake()
                    return
            self.messages = batch.messages[:]
            self._wake()
            return
        for message in batch.messages:
            self.deliver(message)

    def gap(self, topic: str, reason: str, first: Message) -> None:
        if self.messages:
            # Answer what came before the gap; the next poll reports the gap.
            self.full = True
        else:
            self.gapped = True

    def overflow(self) -> None:
        self.full = True
        self._wake()

    def drain(self) -> None:
        self._wake()


class PollCollector(PollSink):
    """A poll awaited by its request's task: woken by resolving one future (no Event, no
    timeout context: a poll is one short-lived object)."""

    __slots__ = ("wake",)

    def __init__(
        self,
        limit: int,
        topic: Topic | None = None,
        writer: ResponseWriter | None = None,
        metrics: TransportMetrics | None = None,
    ) -> None:
        super().__init__(limit, topic, writer, metrics)
        self.wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _wake(self) -> None:
        if not self.wake.done():
            self.wake.set_result(None)

    async def wait(self, seconds: float) -> None:
        """Until a message (or a drain) wakes the poll, or ``seconds`` pass."""
        wake = self.wake
        timer = asyncio.get_running_loop().call_later(
            seconds, lambda: None if wake.done() else wake.set_result(None)
        )
        try:
            await wake
        finally:
            timer.cancel()


def answer_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    """A poll answer's headers: the type and the length, nothing per request."""
    return [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]


def has_origin(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request comes from a browser page (CORS has something to add to its answer)."""
    # A plain loop: any() over a generator cost 3% of the gateway's CPU under long-poll load.
    for name, _ in headers:  # noqa: SIM110  # see above
        if name == b"origin":
            return True
    return False


class PollAnswer(Response):
    """A long-poll answer: encoded JSON bytes and two prebuilt headers.

    Starlette's ``Response`` builds a header list through its generic path for every answer;
    a poll answer needs only the type and the length.
    """

    def __init__(self, body: bytes) -> None:  # the generic init is the cost avoided
        self.body = body
        self.status_code = 200
        self.background = None
        self.raw_headers = answer_headers(body)


class _Written(Response):
    """What the endpoint returns when its answer was already written as a prepared response."""

    def __init__(self) -> None:
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return


WRITTEN = _Written()


def answer_body(
    topic_json: bytes, messages: list[Message], next_cursor: str, recovered: bool
) -> bytes:
    return b"".join(
        (
            b'{"topic":',
            topic_json,
            b',"messages":[',
            b",".join(message.envelope for message in messages),
            b'],"next":"',
            next_cursor.encode(),
            b'","recovered":',
            b"true" if recovered else b"false",
            b"}",
        )
    )


class PollQuery(NamedTuple):
    """A long-poll's validated query parameters."""

    topic: str
    since: str | None
    cursor: Cursor | None
    timeout: float
    limit: int


@functools.lru_cache(maxsize=QUERY_CACHE_SIZE)
def poll_query(raw: bytes) -> PollQuery:
    """The validated parameters of query string ``raw`` (422 :class:`ApiError` when invalid).

    Polls caught up on one topic send the very same query string (same topic, same cursor), so
    the validated result is kept per string: a cache hit instead of splitting and four pattern
    checks per request. Validation depends on nothing but the string, so one cache serves the
    process; only valid strings are kept (an error is raised, not cached), at most
    ``QUERY_CACHE_SIZE``, least recently used first out.
    """
    query = parse_query(raw)
    since = query.get("since")
    return PollQuery(
        topic_param(query),
        since,
        cursor_param("since", since),
        number_param(query, "timeout", DEFAULT_TIMEOUT, 0.0, MAX_TIMEOUT),
        integer_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
    )


def prepared_answer(topic: Topic, messages: list[Message]) -> PreparedResponse:
    """The recovered answer carrying exactly ``messages`` (consecutive), built once.

    Between two fan-outs, polls arriving at the same cursor (behind by the same messages) get
    the same answer: the topic keeps the last one built, keyed by its first and last id — in a
    stream those two fix every message between them.
    """
    first, last = messages[0].id, messages[-1].id
    cached = topic.poll_answer
    if cached is not None and cached[0] == first and cached[1] == last:
        return cached[2]
    answer = PreparedResponse(answer_body(topic.json, messages, str(last), True))
    topic.poll_answer = (first, last, answer)
    return answer


def _answer_now(
    state: GatewayState, topic: Topic, messages: list[Message], writer: ResponseWriter | None
) -> Response:
    """A recovered answer with ``messages``: the shared prepared bytes when they can be written."""
    if writer is not None and writer.write_prepared(prepared_answer(topic, messages)):
        state.metrics.transport("poll").written(len(messages), messages[0].ts)
        state.metrics.poll_shared_answers.inc()
        return WRITTEN
    return _answer(state, topic, messages, "", True)


def _answer(
    state: GatewayState, topic: Topic, messages: list[Message], next_cursor: str, recovered: bool
) -> Response:
    if messages:
        # One lag observation per answer, for its oldest message (as for the other transports).
        state.metrics.transport("poll").written(len(messages), messages[0].ts)
        next_cursor = str(messages[-1].id)
    return PollAnswer(answer_body(topic.json, messages, next_cursor, recovered))


async def poll_endpoint(request: Request, writer: ResponseWriter | None = None) -> Response:
    """The long-poll endpoint; ``writer`` (``relay.response``) allows prepared answers.

    Pass a writer only when the answer needs no per-request headers (no CORS: no ``Origin``).
    """
    state = gateway_state(request)
    if state.drain.draining:
        raise draining()
    name, since, cursor, timeout, limit = poll_query(request.scope["query_string"])
    check_access(state, request, name)
    hub = state.hub
    try:
        if timeout == 0:
            return await _history_read(state, name, since, limit)
        topic = await hub.acquire(name)
    except Unavailable:
        raise unavailable() from None
    metrics = state.metrics.transport("poll")
    if cursor is not None and cursor.after < topic.position and topic.hot.covers(cursor.after):
        # Behind, inside the hot window (decide's first case): the answer is complete now, so
        # no feed, no collector — under load most polls arrive after the next message.
        messages = topic.hot.after(cursor.after, limit)
        if messages and continues(cursor, messages[0]):
            hub.release(topic)
            hub.metrics.hot_hits.inc()
            return _answer_now(state, topic, messages, writer)
    collector = PollCollector(limit, topic, writer, metrics)
    feed = hub.attach(topic, collector)
    metrics.open += 1
    state.drain.streams.add(collector)
    try:
        if cursor is None:
            recovered = True
            next_cursor = str(topic.position)
        else:
            try:
                resume = await decide(hub, topic, cursor, limit)
            except Unavailable:
                raise unavailable() from None
            if resume.messages:
                if resume.recovered:
                    return _answer_now(state, topic, resume.messages, writer)
                return _answer(state, topic, resume.messages, "", False)
            recovered = resume.recovered
            # A bare-timestamp cursor stays valid as is; after a gap, resume at the stream's end.
            next_cursor = since if recovered and since is not None else str(resume.after)
            feed.resume_after(resume.after, check=recovered)
        collector.recovered = recovered
        feed.go_live()
        if not collector.messages and not state.drain.draining:
            await collector.wait(timeout)
        if collector.answered:
            return WRITTEN
        return _answer(
            state, topic, collector.messages, next_cursor, recovered and not collector.gapped
        )
    finally:
        state.drain.streams.discard(collector)
        metrics.open -= 1
        hub.detach(feed)


async def _history_read(state: GatewayState, name: str, since: str | None, limit: int) -> Response:
    """``timeout=0``: what is retained after ``since`` now, without waiting or starting a reader."""
    hub = state.hub
    active = hub.active(name)
    topic = active or Topic.detached(name)
    cursor = cursor_param("since", since)
    if cursor is None:
        # Nothing can have been published after the request arrived: answer the stream's end.
        position = active.position if active is not None else await stream_end(hub, name)
        return _answer(state, topic, [], str(position), True)
    resume = await decide(hub, topic, cursor, limit)
    next_cursor = since if resume.recovered and since is not None else str(resume.after)
    return _answer(state, topic, resume.messages, next_cursor, resume.recovered)
