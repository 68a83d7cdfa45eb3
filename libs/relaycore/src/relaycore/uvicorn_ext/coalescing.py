"""uvicorn's httptools protocol, sending each response with one socket write.

uvicorn writes a response's status line and headers when the app sends
``http.response.start`` and the body on ``http.response.body``: two ``send()`` system calls,
and on loopback or a busy host two packets, for every small answer. Profiled under load these
two writes were the largest single cost of both services (ingest's publish answers, the
gateway's long-polls). :class:`CoalescingHttpToolsProtocol` (passed to uvicorn as ``http=``)
gives each connection a transport that holds writes back until the response is complete — or,
for a streamed response, a ``HEAD`` answer or a ``100 Continue``, until the end of the current
event-loop iteration — and then writes them as one. The ASGI spec allows this (a server need
not flush the response start before the first body message).

A WebSocket upgrade hands the real transport to the WebSocket protocol: frames are never
delayed. The uvicorn internals this relies on are checked in
:mod:`relaycore.uvicorn_ext.internals`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CoalescingHttpToolsProtocol", "CoalescingTransport"]


class CoalescingTransport:
    """A transport proxy: writes of one loop iteration are joined into one ``write``."""

    __slots__ = ("_loop", "_pending", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(data)

    def flush(self) -> None:
        """Send what is pending now, as one write."""
        pending, self._pending = self._pending, None
        if pending and not self.transport.is_closing():
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def write_now(self, data: bytes) -> None:
        """Write ``data`` at once, after anything still pending."""
        if self._pending is not None:
            self.flush()
        self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        # is_closing, pause_reading, get_extra_info, ...: the real transport's.
        return getattr(self.transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing each response with one system call."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
        super().connection_made(transport)
        # A proxy with the Transport methods uvicorn calls.
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]  # duck-typed Transport

    def on_response_complete(self) -> None:
        # A complete response goes out now, not at the end of the iteration: when many answers
        # are finished in one iteration, the first must not wait for the last to be built.
        transport = self.transport
        if isinstance(transport, CoalescingTransport):
            transport.flush()
        super().on_response_complete()

    def handle_websocket_upgrade(self) -> None:
        coalescing = self.transport
        if isinstance(coalescing, CoalescingTransport):
            coalescing.flush()
            self.transport = coalescing.transport
        super().handle_websocket_upgrade()
