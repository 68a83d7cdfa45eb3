"""uvicorn's httptools protocol, sending each small response in one socket write.

uvicorn writes the status line and headers when the app sends ``http.response.start`` and the
body when it sends ``http.response.body``: two ``send`` syscalls and two TCP segments for every
publish answer. Profiled under ``wrk`` these two writes were the largest single cost in ingest,
and on loopback the second segment costs the sender nearly as much as the first.

:class:`CoalescingHttpToolsProtocol` (passed to uvicorn as ``http=``) is uvicorn's own
``HttpToolsProtocol`` with the connection's transport wrapped so that one write is *held*
until the next write, which then goes out joined with it: headers and body become one segment.
The ASGI spec allows this (a server need not flush the response start before the first body
message). A held write never waits longer than the current event-loop iteration: it is also
flushed when the response completes, when the connection closes, and by a ``call_soon``
fallback, so streaming responses, ``HEAD`` answers and ``100 Continue`` are never delayed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CoalescingHttpToolsProtocol", "HeldWriteTransport"]


class HeldWriteTransport(asyncio.Transport):
    """A transport whose writes go out joined with the write after them (see module doc)."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._held = None
            self._transport.write(held + data)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def flush(self) -> None:
        """Send the held write now, if any."""
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's ``HttpToolsProtocol`` sending headers and body in one write."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn narrows BaseTransport to Transport too
        super().connection_made(HeldWriteTransport(transport, self.loop))

    def on_response_complete(self) -> None:
        transport = self.transport
        if isinstance(transport, HeldWriteTransport):
            transport.flush()
        super().on_response_complete()
