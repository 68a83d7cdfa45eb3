"""The WebSocket transport, ``GET /api/v1/ws`` (contract §5).

Client → server: one JSON object per text frame, ``op`` one of ``subscribe`` (``topic``,
``since``?, ``req``?), ``unsubscribe`` (``topic``, ``req``?), ``ping`` (``req``?) and ``auth``
(``token``). Server → client: text frames of one or more JSON events separated by ``\\n``:
``subscribed``, ``message``, ``gap``, ``unsubscribed``, ``pong``, ``error``.

A connection's own task reads and handles the client's frames; output goes straight to the
transport through the raw frame path (:mod:`relaycore.frames`) or, without it, through a
writer task draining the connection's :class:`~relay_gateway.client_queue.OutboundQueue`; with
auth a third task watches the token's expiry. Whatever asks to close interrupts the reader,
which then sends what is left and the close frame. Close codes: 1007 invalid UTF-8 (the
server's frame parser), 1009 frame too big, 1012 shutdown, 4008 slow consumer, 4400 repeated
protocol errors or op-rate abuse, 4401 token missing/invalid/expired.

A connection's memory is bounded at ``RELAY_MAX_QUEUE_BYTES``: its queue *plus* what sits in
the transport's write buffer (shared frames written straight to the transport included). On
the raw frame path a close never waits for the peer: a slow consumer gets its ``error`` event
and close frame only when they fit in that bound, and the transport is aborted when the close
has not completed within ``RELAY_CLOSE_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Annotated, Any

import msgspec
import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect

from relay_gateway.client_queue import OutboundQueue
from relay_gateway.hot import Batch, Message
from relay_gateway.hub import Feed
from relay_gateway.limits import OpBudget, principal_key, too_many_connections
from relay_gateway.recovery import catch_up, decide
from relay_gateway.source import Unavailable
from relay_gateway.state import GatewayState, authenticate, gateway_state
from relaycore.auth import AuthError, Principal
from relaycore.frames import FrameWriter, frame_writer, text_frame
from relaycore.http import error_response, origin_allowed
from relaycore.ids import ZERO, Cursor, parse_cursor
from relaycore.keys import is_valid_topic

__all__ = ["websocket_endpoint"]

log = structlog.get_logger("relay_gateway.websocket")

CLOSE_TOO_BIG = 1009
CLOSE_RESTART = 1012
CLOSE_SLOW = 4008
CLOSE_PROTOCOL = 4400
CLOSE_UNAUTHENTICATED = 4401
HISTORY_PAGE = 500
PACKED_FRAME_BYTES = 256 * 1024


# The integers every JSON client can represent exactly (JavaScript's safe range).
MAX_REQ = 2**53 - 1
ReqId = Annotated[int, msgspec.Meta(ge=-MAX_REQ, le=MAX_REQ)]


class ClientFrame(msgspec.Struct):
    """One client op: a JSON object in a text frame; unknown fields are ignored."""

    op: str
    topic: str | None = None
    since: str | Annotated[int, msgspec.Meta(ge=0)] | None = None
    req: ReqId | None = None
    token: str | None = None


_decode_frame = msgspec.json.Decoder(ClientFrame).decode
_encode = msgspec.json.Encoder().encode


def _event(op: str, req: int | str | None = None, **fields: Any) -> bytes:
    body: dict[str, Any] = {"op": op}
    if req is not None:
        body["req"] = req
    body.update(fields)
    return _encode(body)


def _error(
    code: str, message: str, req: int | str | None = None, topic: str | None = None
) -> bytes:
    fields: dict[str, Any] = {"code": code, "message": message}
    if topic is not None:
        fields["topic"] = topic
    return _event("error", req, **fields)


def _pack(items: list[tuple[bytes, int, int]]) -> list[bytes]:
    """Queued events as few text frames as possible, each at most ``PACKED_FRAME_BYTES``.

    The cap keeps packed frames under common client limits (the ``websockets`` library
    refuses frames over 1 MiB by default) however far behind the writer fell.
    """
    if len(items) == 1:
        return [items[0][0]]
    frames: list[bytes] = []
    batch: list[bytes] = []
    size = 0
    for item, _, _ in items:
        if batch and size + len(item) > PACKED_FRAME_BYTES:
            frames.append(b"\n".join(batch))
            batch, size = [], 0
        batch.append(item)
        size += len(item) + 1
    frames.append(b"\n".join(batch))
    return frames


class _ReqOnly(msgspec.Struct):
    req: ReqId | None = None


_decode_req = msgspec.json.Decoder(_ReqOnly).decode


def _salvage_req(text: str) -> int | None:
    """The ``req`` of a frame that failed validation, when it is valid, to match the error."""
    try:
        return _decode_req(text).req
    except (msgspec.DecodeError, RecursionError):
        return None


class Connection:
    """One WebSocket consumer: its subscriptions (feeds), outbound queue and tasks.

    Output goes through one path per connection so events keep their order. With the server's
    raw frame path (:mod:`relaycore.frames`, uvicorn with
    :class:`~relaycore.uvicorn_ext.websocket.RelayWebSocketProtocol`) an event is written to the
    transport at once — the hub's fan-out writes the same pre-built frame to every subscriber —
    while the transport is below its high-water mark and nothing is queued; otherwise it is
    queued and the whole queue is packed into frames when the transport drains. Without that
    path (any other ASGI server) a writer task sends the queue through ``websocket.send``.
    """

    __slots__ = (
        "auth_changed",
        "budget",
        "close_code",
        "close_reason",
        "closed",
        "feeds",
        "final_event",
        "frames",
        "metrics",
        "principal",
        "protocol_errors",
        "queue",
        "settings",
        "state",
        "task",
        "ws",
    )

    def __init__(self, websocket: WebSocket, state: GatewayState, principal: Principal) -> None:
        self.ws = websocket
        self.frames: FrameWriter | None = frame_writer(websocket.scope)
        self.state = state
        self.settings = state.settings
        self.principal = principal
        self.metrics = state.metrics.transport("ws")
        self.queue: OutboundQueue[bytes] = OutboundQueue(state.settings.max_queue_bytes)
        self.feeds: dict[str, Feed] = {}
        self.protocol_errors = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self.final_event: bytes | None = None
        self.closed = False
        # The task running this connection: interrupted when something else asks to close.
        self.task: asyncio.Task[Any] | None = None
        self.auth_changed: asyncio.Event | None = asyncio.Event() if state.auth.enabled else None
        rate = state.settings.ws_op_rate
        self.budget = OpBudget(rate.count, rate.per_seconds) if rate.enabled else None
        if self.frames is not None:
            self.frames.set_close_timeout(state.settings.close_timeout)

    def _fits(self, size: int) -> bool:
        """Whether ``size`` more bytes stay within the bound: queue plus transport buffer.

        One item always fits an empty connection, so a single big message is no overflow.
        """
        frames = self.frames
        held = self.queue.bytes + (frames.buffered_bytes if frames is not None else 0)
        return held == 0 or held + size <= self.settings.max_queue_bytes

    def _push(self, item: bytes, count: int = 0, oldest_ms: int = 0) -> None:
        if self.closed:
            return  # closing: nothing more is sent, nothing more is held
        if not self._fits(len(item)) or not self.queue.push(item, count, oldest_ms):
            self.overflow()

    # -- Sink: called synchronously by the hub while fanning out ---------------------------

    def deliver(self, message: Message) -> None:
        if self.closed:
            # Closing (a slow consumer's queue was dropped): a later message written now would
            # reach the client after a hole it is never told about.
            return
        frames = self.frames
        if frames is not None and not self.queue.items and frames.frames_writable:
            frame = message.ws_frame
            if not self._fits(len(frame)):
                self.overflow()
                return
            frames.write_frames(frame)
            self.metrics.written(1, message.id.ms)
        else:
            self._push(message.ws_bytes, 1, message.id.ms)

    def deliver_batch(self, batch: Batch) -> None:
        if self.closed:
            return
        frames = self.frames
        if frames is not None and not self.queue.items and frames.frames_writable:
            # The hot path: the same frame bytes for every subscriber; the hub accounts them.
            frame = batch.ws_frame
            if len(frame) <= PACKED_FRAME_BYTES:
                if not self._fits(len(frame)):
                    self.overflow()
                    return
                frames.write_frames(frame)
                self.metrics.pending += batch.count
                return
        if len(batch.ws_bytes) > PACKED_FRAME_BYTES:
            for message in batch.messages:
                self.deliver(message)
        else:
            self._push(batch.ws_bytes, batch.count, batch.oldest_ms)

    def gap(self, topic: str, reason: str, first: Message) -> None:
        self.send(_event("gap", topic=topic, reason=reason, **{"from": str(first.id)}))

    def overflow(self) -> None:
        self.queue.take_now()  # what it held is dropped: the memory is freed at once
        if self.close_code is None and not self.closed:
            self.metrics.slow_consumers.inc()
            log.info("slow_consumer", queued_limit=self.settings.max_queue_bytes)
            self.request_close(
                CLOSE_SLOW,
                "slow consumer",
                _error("slow_consumer", "outbound queue overflowed; reconnect and resume"),
            )

    # -- Drainable -------------------------------------------------------------------------

    def drain(self) -> None:
        self.request_close(CLOSE_RESTART, "server restarting")

    # --------------------------------------------------------------------------------------

    def send(self, event: bytes) -> None:
        if self.closed:
            return
        frames = self.frames
        if frames is not None and not self.queue.items and frames.frames_writable:
            frame = text_frame(event)
            if not self._fits(len(frame)):
                self.overflow()
                return
            frames.write_frames(frame)
        else:
            self._push(event)

    def request_close(self, code: int | None, reason: str = "", event: bytes | None = None) -> None:
        """End the connection: ``code`` None when the peer is already gone."""
        if self.closed:
            return
        self.close_code = code
        self.close_reason = reason
        self.final_event = event
        self.closed = True
        task = self.task
        if task is not None and task is not asyncio.current_task():
            # The connection's task is waiting for the client's next frame (or inside an op).
            task.cancel()

    async def run(self) -> None:
        """Read and handle the client's frames in this task until the connection ends.

        The reader is the connection's own task — no extra task per idle connection. A writer
        task exists only without the raw frame path, an expiry watch only with auth.
        """
        frames = self.frames
        self.task = asyncio.current_task()
        if frames is not None:
            # The transport's drain callback flushes what was queued while it was full.
            frames.on_frames_writable(self._flush)
        try:
            if frames is not None and self.auth_changed is None:
                await self._guard(self._read())
            else:
                async with asyncio.TaskGroup() as group:
                    helpers = []
                    if frames is None:
                        helpers.append(group.create_task(self._guard(self._write())))
                    if self.auth_changed is not None:
                        helpers.append(group.create_task(self._guard(self._watch_expiry())))
                    await self._guard(self._read())
                    for helper in helpers:
                        helper.cancel()
        finally:
            self.task = None
            if frames is not None:
                frames.on_frames_writable(None)
        await self._close()

    async def _guard(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self.closed or task is not self.task or task is None:
                raise
            # request_close interrupted the reader: a close, not a cancellation of the task.
            task.uncancel()
        except WebSocketDisconnect:
            self.request_close(None)
        except Exception:
            log.exception("websocket_task_failed")
            self.request_close(1011, "internal error")

    def _flush(self) -> None:
        """The transport drained: write everything queued meanwhile, packed."""
        frames = self.frames
        if frames is None or self.closed or not self.queue.items:
            return
        items = self.queue.take_now()
        for packed in _pack(items):
            frames.write_frames(text_frame(packed))
        self.metrics.written_items(items)

    async def _close(self) -> None:
        code = self.close_code
        if code is None:
            return
        frames = self.frames
        if frames is not None:
            await self._close_raw(frames, code)
            return
        # Without the raw frame path there is no way to abort the transport: the close waits
        # for the peer at most a ping interval, then the server closes the connection.
        try:
            async with asyncio.timeout(self.settings.ws_ping_interval):
                pending = self._take_now()
                if self.final_event is not None:
                    pending.append((self.final_event, 0, 0))
                if pending:
                    await self._send_now(pending)
                await self.ws.close(code, self.close_reason)
        except (TimeoutError, WebSocketDisconnect, RuntimeError, OSError):
            # The peer is gone or not reading: nothing more can reach it.
            return

    async def _close_raw(self, frames: FrameWriter, code: int) -> None:
        """Close on the raw frame path, never holding the socket past the close timeout."""
        final = b"" if self.final_event is None else text_frame(self.final_event)
        if code == CLOSE_SLOW:
            # Nothing queued is sent: the error and the close frame go out only if they fit.
            fits = frames.buffered_bytes + len(final) <= self.settings.max_queue_bytes
            if fits and final:
                frames.write_frames(final)
            frames.close_now(code, self.close_reason, frame=fits)
            return
        pending = self.queue.take_now()
        if pending or final:
            try:
                async with asyncio.timeout(self.settings.close_timeout):
                    await frames.wait_frames_writable()
            except TimeoutError:
                pending, final = [], b""  # the peer is not reading: only the close frame
            if frames.frames_writable:
                if pending:
                    for packed in _pack(pending):
                        frames.write_frames(text_frame(packed))
                if final:
                    frames.write_frames(final)
        frames.close_now(code, self.close_reason)

    async def _send_now(self, items: list[tuple[bytes, int, int]]) -> None:
        frames = self.frames
        if frames is None:
            for packed in _pack(items):
                await self.ws.send_text(packed.decode())
            return
        await frames.wait_frames_writable()
        if frames.frames_writable:
            for packed in _pack(items):
                frames.write_frames(text_frame(packed))

    def _take_now(self) -> list[tuple[bytes, int, int]]:
        if self.close_code == CLOSE_SLOW:
            return []
        return self.queue.take_now()

    async def _write(self) -> None:
        while True:
            items = await self.queue.take()
            if not items:
                return
            for packed in _pack(items):
                await self.ws.send_text(packed.decode())
            self.metrics.written_items(items)

    async def _read(self) -> None:
        limit = self.settings.max_ws_frame_bytes
        budget = self.budget
        while not self.closed:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self.request_close(None)
                return
            if budget is not None and not budget.take():
                rate = self.settings.ws_op_rate
                self._protocol_error(
                    _error(
                        "rate_limited",
                        f"more than {rate.count} ops per {rate.per_seconds:g} s; slow down",
                    )
                )
                continue
            text = message.get("text")
            if text is None:
                self._protocol_error(_error("bad_frame", "frames must be JSON text"))
                continue
            if len(text) > limit:
                # uvicorn enforces ws_max_size already; this guards servers configured otherwise.
                self.request_close(CLOSE_TOO_BIG, "frame too big")
                return
            await self._handle(text)

    async def _watch_expiry(self) -> None:
        changed = self.auth_changed
        assert changed is not None
        while True:
            changed.clear()
            expires_at = self.principal.expires_at
            if expires_at is None:
                await changed.wait()
                continue
            try:
                async with asyncio.timeout(max(0.0, expires_at - time.time())):
                    await changed.wait()
            except TimeoutError:
                if self.principal.expired():
                    self.request_close(
                        CLOSE_UNAUTHENTICATED,
                        "token expired",
                        _error("token_expired", "the token expired; reconnect with a new one"),
                    )
                    return

    def _protocol_error(self, event: bytes) -> None:
        if self.closed:
            return
        self.protocol_errors += 1
        if self.protocol_errors > self.settings.ws_max_protocol_errors:
            self.request_close(
                CLOSE_PROTOCOL,
                "protocol violation",
                _error("protocol_violation", "too many invalid frames"),
            )
        else:
            self.send(event)

    async def _handle(self, text: str) -> None:
        try:
            frame = _decode_frame(text)
        except msgspec.DecodeError as error:
            self._protocol_error(_error("bad_request", str(error), _salvage_req(text)))
            return
        except RecursionError:
            # msgspec's depth limit, hit when skipping a deeply nested unknown field.
            self._protocol_error(
                _error("bad_request", "JSON nested too deeply", _salvage_req(text))
            )
            return
        if frame.op == "subscribe":
            await self._subscribe(frame)
        elif frame.op == "unsubscribe":
            self._unsubscribe(frame)
        elif frame.op == "ping":
            self.send(_event("pong", frame.req))
        elif frame.op == "auth":
            self._auth(frame)
        else:
            self._protocol_error(_error("unknown_op", f"unknown op {frame.op!r}", frame.req))

    def _topic_of(self, frame: ClientFrame) -> str | None:
        topic = frame.topic
        if topic is None or not is_valid_topic(topic):
            self._protocol_error(
                _error("invalid_topic", "topic must match ^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$",
                       frame.req, topic if isinstance(topic, str) and len(topic) <= 200 else None)
            )  # fmt: skip
            return None
        return topic

    async def _subscribe(self, frame: ClientFrame) -> None:
        name = self._topic_of(frame)
        if name is None:
            return
        req = frame.req
        cursor: Cursor | None = None
        if frame.since is not None:
            try:
                cursor = parse_cursor(str(frame.since))
            except ValueError as error:
                self._protocol_error(_error("invalid_cursor", str(error), req, name))
                return
        if not self.principal.may_subscribe(name):
            self.send(_error("forbidden", "not permitted to subscribe to this topic", req, name))
            return
        if name in self.feeds:
            self.send(_error("already_subscribed", "already subscribed", req, name))
            return
        if len(self.feeds) >= self.settings.max_subscriptions:
            limit = self.settings.max_subscriptions
            self.send(
                _error("too_many_subscriptions", f"at most {limit} per connection", req, name)
            )
            return
        hub = self.state.hub
        try:
            topic = await hub.acquire(name)
        except Unavailable:
            self.send(_error("unavailable", "storage unavailable, retry shortly", req, name))
            return
        feed = hub.attach(topic, self)
        self.feeds[name] = feed
        last_id = None if topic.position == ZERO else str(topic.position)
        if cursor is None:
            self.send(_event("subscribed", req, topic=name, last_id=last_id))
            feed.go_live()
            return
        try:
            resume = await decide(hub, topic, cursor, HISTORY_PAGE)
        except Unavailable:
            del self.feeds[name]
            hub.detach(feed)
            self.send(_error("unavailable", "storage unavailable, retry shortly", req, name))
            return
        self.send(
            _event("subscribed", req, topic=name, last_id=last_id, recovered=resume.recovered)
        )
        # The subscribed event already told the client about a gap at the cursor.
        feed.resume_after(resume.after, check=resume.check_first)

        async def deliver(messages: list[Message]) -> None:
            for message in messages:
                if self.queue.filling:
                    await self.queue.room()
                feed.deliver(message)

        try:
            await catch_up(hub, feed, resume, deliver, HISTORY_PAGE)
        except Unavailable:
            # History stopped half way: the client resumes from the last id it got.
            del self.feeds[name]
            hub.detach(feed)
            self.send(_error("unavailable", "storage unavailable, resubscribe", None, name))
            self.send(_event("unsubscribed", topic=name))

    def _unsubscribe(self, frame: ClientFrame) -> None:
        name = self._topic_of(frame)
        if name is None:
            return
        feed = self.feeds.pop(name, None)
        if feed is None:
            self.send(_error("not_subscribed", "not subscribed to this topic", frame.req, name))
            return
        self.state.hub.detach(feed)
        self.send(_event("unsubscribed", frame.req, topic=name))

    def _auth(self, frame: ClientFrame) -> None:
        try:
            principal = self.state.auth.authenticate(frame.token)
        except AuthError as error:
            self.send(_error("unauthorized", str(error), frame.req))
            return
        self.principal = principal
        if self.auth_changed is not None:
            self.auth_changed.set()
        for name in [name for name in self.feeds if not principal.may_subscribe(name)]:
            self.state.hub.detach(self.feeds.pop(name))
            self.send(_error("forbidden", "the new token does not permit this topic", None, name))
            self.send(_event("unsubscribed", topic=name))

    def detach_all(self) -> None:
        for feed in self.feeds.values():
            self.state.hub.detach(feed)
        self.feeds.clear()
        self.queue.close()


async def websocket_endpoint(websocket: WebSocket) -> None:
    state = gateway_state(websocket)
    if state.drain.draining or not origin_allowed(state.settings, websocket.headers.get("origin")):
        # Closing before accept makes the server answer the handshake with 403.
        await websocket.close()
        return
    try:
        principal = authenticate(state, websocket)
    except AuthError as error:
        await websocket.accept()
        await websocket.send_text(_error("unauthorized", str(error)).decode())
        await websocket.close(CLOSE_UNAUTHENTICATED, "unauthenticated")
        return
    cap = state.connection_cap
    key = principal_key(websocket, principal, auth=state.auth.enabled)
    if not cap.acquire(key):
        # Before the upgrade: an HTTP 429 with the standard error body.
        await websocket.send_denial_response(error_response(too_many_connections(cap.limit)))
        return
    try:
        await websocket.accept()
        connection = Connection(websocket, state, principal)
        state.drain.websockets.add(connection)
        connection.metrics.connections.inc()
        try:
            await connection.run()
        finally:
            connection.detach_all()
            state.drain.websockets.discard(connection)
            connection.metrics.connections.dec()
    finally:
        cap.release(key)
