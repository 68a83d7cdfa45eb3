"""Server-Sent Events, ``GET /api/v1/sse?topic=&since=`` (contract §5).

Each message is one event block ``id: <id>`` / ``event: message`` / ``data: <envelope>``, so a
browser's ``EventSource`` reconnects with ``Last-Event-ID`` (which overrides ``since``) and
resumes exactly. A gap — at the cursor or later, live — is an ``event: gap`` block whose data is
``{"topic", "reason", "from"}``. A comment line goes out whenever the stream has been quiet for
``RELAY_SSE_HEARTBEAT`` (15 s), so proxies keep it open and dead peers are noticed.

The resume decision is made before the response starts, so a resume that needs Valkey while it
is unreachable is a 503 with ``Retry-After``, not a stream that ends at once. A stream whose
queue plus transport write buffer passes ``RELAY_MAX_QUEUE_BYTES`` is a slow consumer: a last
comment line (``: slow consumer``) goes out if it fits, then the connection is closed and, if
the peer still has not taken its bytes after ``RELAY_CLOSE_TIMEOUT``, aborted.

Output takes one of two paths, one at a time so events keep their order. With the server's
``relay.response`` extension (:mod:`relaycore.prepared`, uvicorn with
:mod:`relaycore.uvicorn_ext.responses`) the hub's fan-out writes each live batch's event blocks,
framed as one HTTP chunk built once for every stream (:attr:`~relay_gateway.hot.Batch.sse_chunk`),
straight to the transport while it is below its high-water mark and nothing is queued: no ASGI
message and no task wake-up per stream and message (the per-stream task sends and Starlette's
wrappers were most of the cost of an SSE delivery). Otherwise — the transport is full, history
is being replayed, or there is no extension (any other ASGI server) — events are queued and the
stream's writer task sends them through ASGI ``send``, which waits for the transport to drain.
The writer task also sends the heartbeats.
"""

from __future__ import annotations

import asyncio

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from relay_gateway.client_queue import OutboundQueue
from relay_gateway.hot import Batch, Message
from relay_gateway.hub import Feed, Topic
from relay_gateway.limits import principal_key, too_many_connections
from relay_gateway.params import (
    check_access,
    cursor_param,
    draining,
    topic_param,
    unavailable,
)
from relay_gateway.recovery import Resume, catch_up, decide
from relay_gateway.source import Unavailable
from relay_gateway.state import GatewayState, gateway_state
from relaycore.http import ApiError, origin_allowed
from relaycore.ids import Cursor
from relaycore.prepared import ResponseWriter, response_writer, stream_chunk

__all__ = ["sse_endpoint"]

HISTORY_PAGE = 500
KEEPALIVE = b": keepalive\n\n"
KEEPALIVE_CHUNK = stream_chunk(KEEPALIVE)
# A live batch larger than this goes out message by message, each checked against the bound.
PACKED_CHUNK_BYTES = 256 * 1024
SLOW = b": slow consumer: reconnect with Last-Event-ID\n\n"
_encode = msgspec.json.Encoder().encode


class EventStream(Response):
    """The SSE response: one feed, written straight to the transport or queued for a writer
    task (which also sends the heartbeats)."""

    def __init__(
        self, state: GatewayState, topic: Topic, cursor: Cursor | None, principal_key: str = ""
    ) -> None:
        super().__init__(
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        # A stream has no length: drop the Content-Length: 0 set for the empty initial body.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.state = state
        self.topic = topic
        self.cursor = cursor
        self.metrics = state.metrics.transport("sse")
        self.queue: OutboundQueue[bytes] = OutboundQueue(state.settings.max_queue_bytes)
        self.packed_limit = min(PACKED_CHUNK_BYTES, state.settings.max_queue_bytes)
        self.ended = asyncio.Event()
        self.slow = False
        # The slot taken in state.connection_cap, given back when the stream ends.
        self.principal_key = principal_key
        self.feed: Feed | None = None
        self.resume: Resume | None = None
        # The relay.response extension (relaycore.prepared; None under other servers).
        self.writer: ResponseWriter | None = None
        # The writer task holds items it took, or waits in an ASGI send: what comes next
        # queues behind them.
        self.sending = False
        # History is being replayed (a resume): queued, so the writer packs it into few writes.
        self.replaying = False

    async def prepare(self) -> None:
        """Register the feed and decide the resume; raises :class:`Unavailable` (detached)."""
        hub = self.state.hub
        self.feed = feed = hub.attach(self.topic, self)
        if self.cursor is None:
            return
        try:
            self.resume = await decide(hub, self.topic, self.cursor, HISTORY_PAGE)
        except BaseException:
            hub.detach(feed)
            self.feed = None
            raise

    def _fits(self, size: int) -> bool:
        writer = self.writer
        held = self.queue.bytes + (writer.buffered_bytes if writer is not None else 0)
        return held == 0 or held + size <= self.queue.max_bytes

    def _push(self, item: bytes, count: int = 0, oldest_ms: int = 0) -> None:
        if self.slow:
            return  # being cut: nothing more is held
        if not self._fits(len(item)) or not self.queue.push(item, count, oldest_ms):
            self.overflow()

    def _emit(self, body: bytes, chunk: bytes | None, count: int = 0, oldest_ms: int = 0) -> bool:
        """Write ``body`` (as ``chunk``, its HTTP chunk, when built already) straight to the
        transport when nothing is ahead of it, else queue it. True: written straight (the
        caller counts the deliveries)."""
        if self.slow:
            return False  # being cut: nothing more is sent or held
        writer = self.writer
        if writer is not None and not (self.queue.items or self.sending or self.replaying):
            if chunk is None:
                chunk = stream_chunk(body)
            if not self._fits(len(chunk)):
                self.overflow()
                return False
            if writer.write_stream(chunk):
                return True
        self._push(body, count, oldest_ms)
        return False

    # -- Sink: called synchronously by the hub while fanning out ---------------------------

    def deliver(self, message: Message) -> None:
        if self._emit(message.sse_bytes, None, 1, message.id.ms):
            self.metrics.written(1, message.id.ms)

    def deliver_batch(self, batch: Batch) -> None:
        if len(batch.sse_bytes) > self.packed_limit and batch.count > 1:
            # One item always fits an empty stream: a big batch as one could pass the bound.
            for message in batch.messages:
                self.deliver(message)
            return
        # The hot path: the same chunk bytes for every stream; the hub accounts them.
        if self._emit(batch.sse_bytes, batch.sse_chunk, batch.count, batch.oldest_ms):
            self.metrics.pending += batch.count

    def gap(self, topic: str, reason: str, first: Message) -> None:
        data = _encode({"topic": topic, "reason": reason, "from": str(first.id)})
        self._emit(b"event: gap\ndata: " + data + b"\n\n", None)

    def overflow(self) -> None:
        self.queue.take_now()  # dropped: its memory is freed at once
        if not self.ended.is_set():
            self.slow = True
            self.metrics.slow_consumers.inc()
            self.ended.set()

    def drain(self) -> None:
        self.ended.set()

    # --------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._stream(scope, receive, send)
        finally:
            self.state.connection_cap.release(self.principal_key)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub = self.state.hub
        feed = self.feed
        if feed is None:
            await self.prepare()
            feed = self.feed
            assert feed is not None
        self.writer = response_writer(scope)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send(
                {"type": "http.response.body", "body": b": connected\n\n", "more_body": True}
            )
        except BaseException:
            hub.detach(feed)
            raise
        self.state.drain.streams.add(self)
        self.metrics.connections.inc()
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._until_disconnect(receive)),
                    group.create_task(self._write(send)),
                    group.create_task(self._start(feed)),
                ]
                await self.ended.wait()
                for task in tasks:
                    task.cancel()
        finally:
            self.metrics.connections.dec()
            self.state.drain.streams.discard(self)
            hub.detach(feed)
            self.queue.close()
        timeout = self.state.settings.close_timeout
        writer = self.writer
        if self.slow and writer is not None:
            # Cut at the socket: the last comment only if it fits the bound.
            writer.cut(SLOW if self._fits(len(SLOW)) else b"", timeout=timeout)
            return
        try:
            async with asyncio.timeout(timeout):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            return  # the client is gone
        except TimeoutError:
            # The peer is not reading: drop the socket (other servers: close it).
            if writer is not None:
                writer.cut(b"", timeout=0.0)

    async def _until_disconnect(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.ended.set()

    async def _start(self, feed: Feed) -> None:
        hub = self.state.hub
        resume = self.resume
        if resume is None:
            feed.go_live()
            return
        self.replaying = True
        try:
            pending_gap = None
            if not resume.recovered:
                assert resume.reason is not None
                if resume.messages:
                    self.gap(self.topic.name, resume.reason, resume.messages[0])
                else:
                    pending_gap = resume.reason
            feed.resume_after(resume.after, check=resume.check_first, pending_gap=pending_gap)

            async def deliver(messages: list[Message]) -> None:
                for message in messages:
                    if self.queue.filling:
                        await self.queue.room()
                    feed.deliver(message)

            await catch_up(hub, feed, resume, deliver, HISTORY_PAGE)
        except Unavailable:
            # The client reconnects with Last-Event-ID and resumes where it stopped.
            self.ended.set()
        finally:
            self.replaying = False

    async def _write(self, send: Send) -> None:
        heartbeat = self.state.settings.sse_heartbeat
        loop = asyncio.get_running_loop()
        # A comment goes out at least every heartbeat, busy or quiet, so proxies and clients
        # can rely on the cadence to tell a live stream from a dead one.
        next_comment = loop.time() + heartbeat
        while True:
            try:
                async with asyncio.timeout_at(next_comment):
                    items = await self.queue.take()
            except TimeoutError:
                items = None
            if items == []:
                return  # closed
            self.sending = True
            try:
                if items is None or loop.time() >= next_comment:
                    await self._send(send, KEEPALIVE, KEEPALIVE_CHUNK)
                    next_comment = loop.time() + heartbeat
                if items:
                    body = items[0][0] if len(items) == 1 else b"".join(i for i, _, _ in items)
                    await self._send(send, body, None)
                    self.metrics.written_items(items)
            finally:
                self.sending = False

    async def _send(self, send: Send, body: bytes, chunk: bytes | None) -> None:
        """``body`` straight to the transport if it takes it now, else through ASGI ``send``."""
        writer = self.writer
        if writer is not None and writer.write_stream(chunk or stream_chunk(body)):
            return
        await send({"type": "http.response.body", "body": body, "more_body": True})


async def sse_endpoint(request: Request) -> Response:
    state = gateway_state(request)
    if state.drain.draining:
        raise draining()
    if not origin_allowed(state.settings, request.headers.get("origin")):
        raise ApiError(403, "forbidden", "origin not allowed")
    name = topic_param(request.query_params)
    last_event_id = request.headers.get("last-event-id")
    if last_event_id:
        cursor = cursor_param("Last-Event-ID", last_event_id)
    else:
        cursor = cursor_param("since", request.query_params.get("since"))
    principal = check_access(state, request, name)
    cap = state.connection_cap
    key = principal_key(request, principal, auth=state.auth.enabled)
    if not cap.acquire(key):
        raise too_many_connections(cap.limit)
    try:
        try:
            topic = await state.hub.acquire(name)
        except Unavailable:
            raise unavailable() from None
        stream = EventStream(state, topic, cursor, key)
        try:
            await stream.prepare()
        except Unavailable:
            raise unavailable() from None
    except BaseException:
        cap.release(key)
        raise
    return stream
