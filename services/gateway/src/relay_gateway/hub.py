"""Topics this gateway serves, their subscribers, and fan-out with an exact history→live seam.

Model (after centrifugal/centrifuge's hub): a :class:`Topic` exists while it has local
subscribers (and for ``RELAY_TOPIC_LINGER`` after the last leaves). A reader feeds it entries in
id order through :meth:`Hub.dispatch`, which builds each :class:`~relay_gateway.hot.Message`
once, appends it to the topic's hot window and offers it to every :class:`Feed`.

A :class:`Feed` is one subscription of one consumer. It is registered *before* history is read
and buffers live messages while the history is delivered; going live then replays the buffer,
dropping every id at or below the last one delivered. Every message handed to the sink passes a
chain check — its ``previous`` id must be the id delivered before it — so a trimmed or reset
stream is always reported as a gap, never skipped silently.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Protocol, cast

import msgspec
import structlog
from opentelemetry.trace import NonRecordingSpan, SpanKind, Tracer, set_span_in_context

from relay_gateway.hot import Batch, HotTier, HotWindow, Message, topic_json
from relay_gateway.metrics import GatewayMetrics
from relay_gateway.source import Followed, StreamSource, Unavailable
from relaycore.ids import MAX_SEQ, ZERO, StreamId
from relaycore.keys import stream_key
from relaycore.models import decode_headers
from relaycore.prepared import PreparedResponse
from relaycore.settings import Settings
from relaycore.streams import StreamEntry
from relaycore.tracing import link_from_traceparent

__all__ = ["RESET", "TRIMMED", "Feed", "Hub", "Sink", "Topic"]

log = structlog.get_logger("relay_gateway.hub")

TRIMMED = "trimmed"
RESET = "reset"


class Sink(Protocol):
    """Where a feed's messages go: a WebSocket connection, an SSE stream, a long-poll."""

    def deliver(self, message: Message) -> None: ...

    def deliver_batch(self, batch: Batch) -> None:
        """Every message of ``batch``, in order; each already passed the feed's chain check."""
        ...

    def gap(self, topic: str, reason: str, first: Message) -> None: ...

    def overflow(self) -> None: ...


class Topic:
    """One topic's live state on this gateway."""

    __slots__ = (
        "feeds",
        "hot",
        "idle_since",
        "json",
        "key",
        "name",
        "poll_answer",
        "position",
        "ready",
        "users",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.json = topic_json(name)
        self.key = stream_key(name)
        # The last id read from Valkey (all messages up to it were dispatched).
        self.position = ZERO
        self.hot = HotWindow()
        self.feeds: set[Feed] = set()
        self.users = 0
        self.idle_since: float | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # The last prepared long-poll answer: (first id, last id, response), owned by longpoll.
        self.poll_answer: tuple[StreamId, StreamId, PreparedResponse] | None = None

    @classmethod
    def detached(cls, name: str) -> Topic:
        """A topic no reader feeds (a plain history read): its empty window covers nothing."""
        topic = cls(name)
        # covers(c) needs base <= c and c <= position: no cursor satisfies both.
        topic.hot.base = StreamId(MAX_SEQ, MAX_SEQ)
        topic.position = ZERO
        return topic


# Chain-check modes of a feed's next message.
_STRICT = 0  # previous must equal the last id delivered
_LOOSE = 1  # first message after a client cursor: previous may be older (timestamp cursors)
_ACCEPT = 2  # first message after a gap already reported: take it as is


class Feed:
    """One subscriber of one topic: buffers while catching up, then delivers live."""

    __slots__ = (
        "buffer",
        "buffer_bytes",
        "buffer_limit",
        "catching_up",
        "delivered",
        "lost",
        "mode",
        "pending_gap",
        "sink",
        "topic",
    )

    def __init__(self, topic: Topic, sink: Sink, buffer_limit: int) -> None:
        self.topic = topic
        self.sink = sink
        self.delivered = topic.position
        self.mode = _STRICT
        self.pending_gap: str | None = None
        self.catching_up = True
        self.buffer: list[Message] = []
        self.buffer_bytes = 0
        self.buffer_limit = buffer_limit
        self.lost = False  # the buffer overflowed: the sink is being cut off

    def resume_after(self, after: StreamId, *, check: bool, pending_gap: str | None = None) -> None:
        """Deliver next what follows ``after``; ``check`` whether its first message may show a gap.

        ``pending_gap`` reports a gap known now whose first message is not yet known (the
        stream holds nothing after the cursor): it goes out just before that message.
        """
        self.delivered = after
        self.mode = _LOOSE if check else _ACCEPT
        self.pending_gap = pending_gap

    def offer(self, message: Message) -> None:
        """A live message from the reader."""
        if self.catching_up:
            if self.lost:
                return
            self.buffer.append(message)
            self.buffer_bytes += len(message.envelope)
            if self.buffer_bytes > self.buffer_limit:
                self.buffer.clear()
                self.lost = True
                self.sink.overflow()
            return
        self.deliver(message)

    def offer_batch(self, batch: Batch) -> None:
        """Live messages from the reader, consecutive: one sink call when the chain holds."""
        if (
            self.catching_up
            or self.mode == _ACCEPT
            or self.pending_gap is not None
            or not batch.contiguous
            or batch.first.previous != self.delivered
        ):
            for message in batch.messages:
                self.offer(message)
            return
        # _LOOSE (the first message after a client's cursor) whose chain holds exactly is the
        # same as _STRICT: no overlap, no gap — a long-poll or resume that is caught up.
        self.mode = _STRICT
        self.delivered = batch.last.id
        self.sink.deliver_batch(batch)

    def deliver(self, message: Message) -> None:
        if message.id <= self.delivered:
            return  # already delivered: the history/live overlap at the seam
        previous = message.previous
        if self.mode == _STRICT:
            if previous != self.delivered:
                self.sink.gap(
                    self.topic.name, TRIMMED if previous > self.delivered else RESET, message
                )
        elif self.pending_gap is not None:
            self.sink.gap(self.topic.name, self.pending_gap, message)
            self.pending_gap = None
        elif self.mode == _LOOSE and previous != self.delivered and previous != ZERO:
            if previous > self.delivered:
                self.sink.gap(self.topic.name, TRIMMED, message)
            elif self.delivered.seq != MAX_SEQ:
                # An older previous id is fine after a timestamp cursor (an instant between
                # entries, ``<ms-1>-<MAX_SEQ>``), never after an id cursor: the stream that id
                # came from is gone (e.g. Valkey restored from an older backup).
                self.sink.gap(self.topic.name, RESET, message)
        self.mode = _STRICT
        self.delivered = message.id
        self.sink.deliver(message)

    def go_live(self) -> None:
        """Replay what arrived while catching up (minus what history already gave), then live."""
        buffered, self.buffer = self.buffer, []
        self.buffer_bytes = 0
        self.catching_up = False
        for message in buffered:
            self.deliver(message)


class Hub:
    """Topics by name, their readers, the hot tier, and fan-out."""

    def __init__(
        self,
        settings: Settings,
        source: StreamSource,
        metrics: GatewayMetrics,
        tracer: Tracer | None = None,
    ) -> None:
        self.settings = settings
        # Only when tracing is on: a delivery span per message, linked to the producer's span.
        self.tracer = tracer
        # Storage, behind the seam (relay_gateway.source): the hub never calls Valkey itself.
        self.source = source
        self.metrics = metrics
        self.topics: dict[str, Topic] = {}
        self.hot = HotTier(
            window=settings.hot_window,
            max_messages=settings.hot_max_messages,
            max_bytes=settings.hot_max_bytes,
        )

    async def acquire(self, name: str) -> Topic:
        """The topic, started if new: its reader begins at the stream's current last id."""
        topic = self.topics.get(name)
        if topic is not None:
            topic.users += 1
            topic.idle_since = None
            if topic.ready.done() and topic.ready.exception() is None:
                return topic  # the common case: no shield, no suspension
            try:
                await asyncio.shield(topic.ready)
            except BaseException:
                self.release(topic)
                raise
            return topic
        topic = Topic(name)
        topic.users = 1
        self.topics[name] = topic
        try:
            last = await self.source.last_id(name)
        except BaseException as error:
            if self.topics.get(name) is topic:
                del self.topics[name]
            topic.ready.set_exception(
                error if isinstance(error, Unavailable) else Unavailable(str(error))
            )
            topic.ready.exception()  # retrieved here; waiters get it through shield()
            raise
        topic.position = last
        topic.hot.base = topic.position
        self.source.follow(topic)
        self.metrics.active_topics.set(len(self.topics))
        topic.ready.set_result(None)
        return topic

    def acquire_now(self, name: str) -> Topic | None:
        """:meth:`acquire` without waiting: the topic if a reader already feeds it (its user
        count raised; :meth:`release` it), else ``None`` and nothing changed."""
        topic = self.active(name)
        if topic is not None:
            topic.users += 1
            topic.idle_since = None
        return topic

    def active(self, name: str) -> Topic | None:
        """The topic if a reader already feeds it."""
        topic = self.topics.get(name)
        if topic is not None and topic.ready.done() and topic.ready.exception() is None:
            return topic
        return None

    def release(self, topic: Topic) -> None:
        topic.users -= 1
        if topic.users <= 0:
            topic.users = 0
            topic.idle_since = time.monotonic()

    def attach(self, topic: Topic, sink: Sink) -> Feed:
        """Register a feed that buffers live messages until :meth:`Feed.go_live`."""
        feed = Feed(topic, sink, self.settings.max_queue_bytes)
        topic.feeds.add(feed)
        return feed

    def detach(self, feed: Feed) -> None:
        feed.topic.feeds.discard(feed)
        self.release(feed.topic)

    def dispatch(self, followed: Followed, entries: Sequence[StreamEntry]) -> None:
        """Entries read after ``topic.position``, in id order: cache once, offer to every feed.

        Without tracing the new messages go out as one :class:`~relay_gateway.hot.Batch`, so a
        subscriber that keeps up gets them in one write whose bytes are shared by all.
        """
        # The source hands back the very topics the hub asked it to follow.
        topic = cast(Topic, followed)
        hot = self.hot
        fresh: list[Message] = []
        for entry in entries:
            if entry.id <= topic.position:
                continue
            message = Message.from_entry(topic.json, entry)
            topic.position = entry.id
            hot.add(topic.name, topic.hot, message)
            if self.tracer is not None and entry.headers and b"traceparent" in entry.headers:
                self._traced_fan_out(topic, message, entry.headers)
                continue
            fresh.append(message)
        if fresh:
            batch = Batch(fresh)
            for feed in topic.feeds:
                feed.offer_batch(batch)
            self.metrics.flush_writes(batch.oldest_ms)
        self.metrics.hot_bytes.set(hot.bytes)

    def _traced_fan_out(self, topic: Topic, message: Message, headers: bytes) -> None:
        assert self.tracer is not None
        try:
            traceparent = decode_headers(headers).get("traceparent", "")
        except msgspec.DecodeError:
            traceparent = ""
        link = link_from_traceparent(traceparent)
        # One message per span: a child of the producer's span (so the publish and its
        # delivery are one trace in Jaeger/Tempo) that also links to it, as the messaging
        # semantic conventions describe for single-message consumers.
        parent = set_span_in_context(NonRecordingSpan(link.context)) if link is not None else None
        with self.tracer.start_as_current_span(
            "relay.deliver",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=[link] if link is not None else None,
            attributes={
                "messaging.system": "valkey",
                "messaging.destination.name": topic.name,
                "messaging.message.id": str(message.id),
                "relay.subscribers": len(topic.feeds),
            },
        ):
            for feed in topic.feeds:
                feed.offer(message)

    def message(self, topic: Topic, entry: StreamEntry) -> Message:
        """A message built from a history read (not cached: the window holds only live reads)."""
        return Message.from_entry(topic.json, entry)

    def drop_idle(self, now: float) -> None:
        linger = self.settings.topic_linger
        for name, topic in list(self.topics.items()):
            if (
                topic.users == 0
                and topic.idle_since is not None
                and now - topic.idle_since >= linger
            ):
                del self.topics[name]
                self.source.unfollow(topic)
                self.hot.forget(name, topic.hot)
        self.metrics.active_topics.set(len(self.topics))
        self.metrics.hot_bytes.set(self.hot.bytes)

    async def sweep_forever(self) -> None:
        """Drop topics idle longer than the linger and age out the hot tier."""
        interval = min(1.0, max(0.05, self.settings.topic_linger / 4))
        while True:
            await asyncio.sleep(interval)
            self.drop_idle(time.monotonic())
            self.hot.sweep()
