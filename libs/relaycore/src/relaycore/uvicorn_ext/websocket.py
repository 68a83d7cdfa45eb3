"""The ``relay.frames`` extension on uvicorn's sans-I/O WebSocket protocol.

:class:`RelayWebSocketProtocol` is uvicorn's ``WebSocketsSansIOProtocol`` plus one ASGI scope
extension, ``relay.frames`` (:class:`relaycore.frames.FrameWriter`), which lets the app write
frames encoded once (:func:`relaycore.frames.text_frame`) straight to each connection's
transport: no ASGI message, no per-connection framing, no task wake-up per delivery.

The extension is only a fast path. Everything else — the handshake, inbound frames, pings and
pongs, the close handshake — stays uvicorn's, and an app served by any other ASGI server (no
``relay.frames`` in the scope) falls back to ``websocket.send``. The app keeps ordering by
writing through one path per connection, and keeps backpressure by writing raw frames only while
the transport is below its high-water mark (``frames_writable``); otherwise it queues and
flushes when ``on_frames_writable``'s callback runs (uvicorn's ``resume_writing``).

The extension also bounds how long a closing connection may hold its socket. uvicorn's own
close waits for the transport to become writable (forever, for a peer that stopped reading)
and then *closes* the transport, which keeps the socket ESTABLISHED while its write buffer
cannot drain. ``close_now`` writes the close frame at once and ``abort`` drops the socket with
its buffer; every server-side close (the app's, a keepalive timeout, a peer's close frame while
our buffer is full) aborts the transport when the connection is not gone ``close_timeout``
seconds later.

The uvicorn internals this relies on are listed, and checked, in
:mod:`relaycore.uvicorn_ext.internals`.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, cast

from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.frames import Frame
from websockets.http11 import Request
from websockets.protocol import OPEN, Protocol
from websockets.streams import StreamReader

from relaycore.frames import EXTENSION

__all__ = ["RelayWebSocketProtocol"]


class _Inbox:
    """``asyncio.Queue``'s subset uvicorn uses for inbound events, without its three deques.

    uvicorn pauses reading while an event waits, so it rarely holds more than a couple.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[ASGIReceiveEvent] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: ASGIReceiveEvent) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> ASGIReceiveEvent:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items


class _Flag:
    """``asyncio.Event``'s subset uvicorn uses for ``writable``; waiters only when waited on."""

    __slots__ = ("_waiters", "value")

    def __init__(self) -> None:
        self.value = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self.value

    def set(self) -> None:
        self.value = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self.value = False

    async def wait(self) -> None:
        while not self.value:
            waiter = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if self._waiters is not None and waiter in self._waiters:
                    self._waiters.remove(waiter)


class _Due:
    """One connection's next keepalive ping in a :class:`_Keepalive` wheel (a TimerHandle's job)."""

    __slots__ = ("cancelled", "protocol")

    def __init__(self, protocol: RelayWebSocketProtocol) -> None:
        self.protocol = protocol
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Keepalive:
    """Every connection's keepalive pings on one timer per event loop, ticking once a second.

    uvicorn schedules each connection's next ping with its own ``loop.call_later``: a timer
    handle, its libuv timer and a bound method, ~600 bytes held by every idle connection. Pings
    need no sub-second precision, so connections wait in per-second buckets instead, and the
    wheel's one timer exists only while some connection waits.
    """

    __slots__ = ("buckets", "timer")

    # Weak, and no wheel refers to its loop: a loop closed while connections still waited
    # (tests run many loops in one process) takes its wheel with it.
    _wheels: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Keepalive]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self) -> None:
        self.buckets: dict[int, list[_Due]] = {}
        self.timer: asyncio.TimerHandle | None = None

    @classmethod
    def add(cls, protocol: RelayWebSocketProtocol, delay: float) -> _Due:
        loop = protocol.loop
        wheel = cls._wheels.get(loop)
        if wheel is None:
            wheel = cls._wheels[loop] = cls()
        due = _Due(protocol)
        second = math.ceil(loop.time() + delay)
        bucket = wheel.buckets.get(second)
        if bucket is None:
            wheel.buckets[second] = [due]
        else:
            bucket.append(due)
        if wheel.timer is None:
            wheel.timer = loop.call_at(second, wheel._tick)
        return due

    def _tick(self) -> None:
        self.timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for second in sorted(s for s in self.buckets if s <= now):
            for due in self.buckets.pop(second):
                protocol = due.protocol
                if not due.cancelled and cast(object, protocol.ping_timer) is due:
                    protocol.send_keepalive_ping()
        if self.buckets:
            self.timer = loop.call_at(min(self.buckets), self._tick)
        else:
            self._wheels.pop(loop, None)


def _at_frame_boundary(conn: Protocol) -> bool:
    """Whether ``conn``'s parser waits for the first byte of a frame with nothing buffered."""
    outer = conn.parser
    inner = getattr(outer, "gi_yieldfrom", None)  # ServerProtocol.parse -> Protocol.parse
    waiting = getattr(inner, "gi_yieldfrom", None)  # Protocol.parse -> StreamReader.at_eof
    return (
        not conn.reader.buffer
        and getattr(inner, "gi_code", None) is Protocol.parse.__code__
        and getattr(waiting, "gi_code", None) is StreamReader.at_eof.__code__
    )


class RelayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, plus the ``relay.frames`` scope extension.

    Pass it as uvicorn's ``ws=`` (a protocol class is accepted there). It also holds an idle
    connection in less memory: a list-based inbox and a waiter-on-demand ``writable`` flag
    instead of an ``asyncio.Queue`` and an ``asyncio.Event`` (four deques of ~600 bytes),
    keepalive pings on one shared timer (:class:`_Keepalive`), and the handshake's request
    (with its headers) dropped once the handshake is done — by uvicorn's references, by the
    websockets parser, whose handshake frame would keep it for the connection's whole life, and
    by the ASGI scope: **after ``websocket.accept`` the scope's ``headers`` list is empty**
    (apps served by this protocol read headers during the handshake, as the gateway does).
    """

    _frames_callback: Callable[[], None] | None = None
    _abort_timeout = 2.0
    _deadline: asyncio.TimerHandle | None = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.queue = _Inbox()  # type: ignore[assignment]  # the subset of asyncio.Queue used
        self._writable = _Flag()
        self.writable = self._writable  # type: ignore[assignment]  # the subset of asyncio.Event used

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # Only the handshake reads these; an idle connection need not keep its headers.
            self.request = None  # type: ignore[assignment]  # released after the handshake
            self.response = None  # type: ignore[assignment]  # released after the handshake
            # The scope's header list too (~700 B of tuples), emptied in place so that views an
            # app built of it during the handshake (Starlette's Headers) let go as well.
            headers = self.scope["headers"]
            if isinstance(headers, list):  # what uvicorn builds; its types only promise an Iterable
                headers.clear()
            self._release_handshake_parser()
        elif message["type"] == "websocket.close" and self.close_sent:
            self._abort_later()

    def _release_handshake_parser(self) -> None:
        """Continue parsing frames in a parser that never saw the handshake request.

        websockets' server parser reads the request, then runs the frame parser from inside
        that frame, whose local ``request`` (every header) thus lives as long as the connection.
        The plain frame parser, started fresh, is the same state machine without it — provided
        it is swapped in between frames, with nothing buffered, which is where a connection
        waits right after the handshake (the client waits for the 101). Otherwise it is left.
        """
        conn = self.conn
        if conn.state is OPEN and _at_frame_boundary(conn):
            parser = Protocol.parse(conn)
            next(parser)
            conn.parser = parser

    def schedule_ping(self) -> None:
        assert self.ping_interval is not None
        delay = max(0.0, self.ping_interval - self.last_ping_rtt)
        self.ping_timer = _Keepalive.add(self, delay)  # type: ignore[assignment]  # cancel() is all uvicorn calls

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # The ASGI task is created but has not run yet: the scope can still gain the extension.
        if self.response.status_code == 101:
            self.scope["extensions"][EXTENSION] = self  # type: ignore[assignment]  # typed as dict[object, object]

    @property
    def frames_writable(self) -> bool:
        return (
            self._writable.value
            and self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and not self.transport.is_closing()
        )

    def write_frames(self, data: bytes) -> None:
        self.transport.write(data)

    def on_frames_writable(self, callback: Callable[[], None] | None) -> None:
        self._frames_callback = callback

    async def wait_frames_writable(self) -> None:
        await self.writable.wait()

    @property
    def buffered_bytes(self) -> int:
        transport = self.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def set_close_timeout(self, seconds: float) -> None:
        self._abort_timeout = seconds
        self.close_timeout = seconds  # uvicorn's wait for the peer's close reply

    def close_now(self, code: int, reason: str = "", *, frame: bool = True) -> None:
        if self.disconnected or self.close_sent or self.transport.is_closing():
            self._abort_later()
            return
        # What uvicorn's send({"type": "websocket.close"}) does, minus its wait for writable.
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        output = self.conn.data_to_send()
        if frame:
            self.transport.write(b"".join(output))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        if not frame:
            self.abort()
            return
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)
        self._abort_later()

    def abort(self) -> None:
        if not self.disconnected:
            self.transport.abort()

    def _abort_later(self) -> None:
        if self._deadline is None and not self.disconnected:
            self._deadline = self.loop.call_later(self._abort_timeout, self.abort)

    def keepalive_timeout(self) -> None:
        # uvicorn closes the transport, which a peer that vanished with data in flight would
        # hold open until TCP gives up (many minutes): abort it if it is still there later.
        super().keepalive_timeout()
        self._abort_later()

    def handle_close(self, event: Frame) -> None:
        super().handle_close(event)
        if self.transport.is_closing():
            # A peer may send its close frame without reading what we sent: do not let the
            # flush of our buffer keep the socket.
            self._abort_later()

    def resume_writing(self) -> None:
        super().resume_writing()
        callback = self._frames_callback
        if callback is not None:
            callback()

    def connection_lost(self, exc: Exception | None) -> None:
        self._frames_callback = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)
