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

The uvicorn internals this relies on are listed, and checked, in
:mod:`relaycore.uvicorn_ext.internals`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.http11 import Request

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


class RelayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, plus the ``relay.frames`` scope extension.

    Pass it as uvicorn's ``ws=`` (a protocol class is accepted there). It also holds an idle
    connection in less memory: a list-based inbox and a waiter-on-demand ``writable`` flag
    instead of an ``asyncio.Queue`` and an ``asyncio.Event`` (four deques of ~600 bytes), and
    the handshake's request and response objects are dropped once the handshake is done.
    """

    _frames_callback: Callable[[], None] | None = None

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

    def resume_writing(self) -> None:
        super().resume_writing()
        callback = self._frames_callback
        if callback is not None:
            callback()

    def connection_lost(self, exc: Exception | None) -> None:
        self._frames_callback = None
        super().connection_lost(exc)
