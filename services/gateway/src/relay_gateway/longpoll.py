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

from starlette.requests import Request
from starlette.responses import Response

from relay_gateway.hot import Batch, Message
from relay_gateway.hub import Topic, Unavailable
from relay_gateway.params import (
    check_access,
    cursor_param,
    draining,
    integer_param,
    number_param,
    topic_param,
    unavailable,
)
from relay_gateway.recovery import decide, stream_end
from relay_gateway.state import GatewayState, gateway_state

__all__ = ["DEFAULT_LIMIT", "DEFAULT_TIMEOUT", "MAX_LIMIT", "MAX_TIMEOUT", "poll_endpoint"]

DEFAULT_TIMEOUT = 25.0
MAX_TIMEOUT = 55.0
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class PollCollector:
    """The sink of a waiting long-poll: collects up to ``limit`` messages, then wakes it.

    The hub hands it the messages as they are fanned out; the waiting request is woken by
    resolving one future (no Event, no timeout context: a poll is one short-lived object).
    """

    __slots__ = ("full", "gapped", "limit", "messages", "wake")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.messages: list[Message] = []
        self.gapped = False
        self.full = False
        self.wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _wake(self) -> None:
        if not self.wake.done():
            self.wake.set_result(None)

    def deliver(self, message: Message) -> None:
        if not self.full and len(self.messages) < self.limit:
            self.messages.append(message)
            self._wake()

    def deliver_batch(self, batch: Batch) -> None:
        if not self.full and not self.messages and len(batch) <= self.limit:
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


class PollAnswer(Response):
    """A long-poll answer: encoded JSON bytes and two prebuilt headers.

    Starlette's ``Response`` builds a header list through its generic path for every answer;
    a poll answer needs only the type and the length.
    """

    def __init__(self, body: bytes) -> None:  # the generic init is the cost avoided
        self.body = body
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
        ]


def _body(topic: Topic, messages: list[Message], next_cursor: str, recovered: bool) -> bytes:
    return b"".join(
        (
            b'{"topic":',
            topic.json,
            b',"messages":[',
            b",".join(message.envelope for message in messages),
            b'],"next":"',
            next_cursor.encode(),
            b'","recovered":',
            b"true" if recovered else b"false",
            b"}",
        )
    )


def _answer(
    state: GatewayState, topic: Topic, messages: list[Message], next_cursor: str, recovered: bool
) -> Response:
    if messages:
        # One lag observation per answer, for its oldest message (as for the other transports).
        state.metrics.transport("poll").written(len(messages), messages[0].ts)
        next_cursor = str(messages[-1].id)
    return PollAnswer(_body(topic, messages, next_cursor, recovered))


async def poll_endpoint(request: Request) -> Response:
    state = gateway_state(request)
    if state.drain.draining:
        raise draining()
    name = topic_param(request)
    since = request.query_params.get("since")
    cursor = cursor_param("since", since)
    timeout = number_param(request, "timeout", DEFAULT_TIMEOUT, 0.0, MAX_TIMEOUT)
    limit = integer_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    check_access(state, request, name)
    hub = state.hub
    try:
        if timeout == 0:
            return await _history_read(state, name, since, limit)
        topic = await hub.acquire(name)
    except Unavailable:
        raise unavailable() from None
    collector = PollCollector(limit)
    feed = hub.attach(topic, collector)
    metrics = state.metrics.transport("poll")
    metrics.connections.inc()
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
                return _answer(state, topic, resume.messages, "", resume.recovered)
            recovered = resume.recovered
            # A bare-timestamp cursor stays valid as is; after a gap, resume at the stream's end.
            next_cursor = since if recovered and since is not None else str(resume.after)
            feed.resume_after(resume.after, check=recovered)
        feed.go_live()
        if not collector.messages and not state.drain.draining:
            await collector.wait(timeout)
        return _answer(
            state, topic, collector.messages, next_cursor, recovered and not collector.gapped
        )
    finally:
        state.drain.streams.discard(collector)
        metrics.connections.dec()
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
