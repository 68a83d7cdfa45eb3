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

**Header deadline (slowloris).** uvicorn bounds only the idle time between requests
(``timeout_keep_alive``, cancelled by the first byte of the next request); a client dribbling a
request's headers a byte at a time holds its connection, file descriptor and buffers for as long
as it likes. Each connection here must deliver a request's complete headers within the header
timeout (``RELAY_HTTP_HEADER_TIMEOUT``, counted from the connection's start or, on a kept-alive
connection, from the request's first byte); a late one gets ``408`` and the connection is closed.
Bodies are not covered: both services read bodies of at most ``RELAY_MAX_BODY_BYTES``; a proxy
in front should bound body time too (README, Security).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from relaycore.models import error_body
from relaycore.uvicorn_ext.deadlines import Deadlines

__all__ = [
    "TIMEOUT_RESPONSE",
    "CoalescingHttpToolsProtocol",
    "CoalescingTransport",
    "configure",
    "header_timeout",
]

# Process-wide, set once at start by the entry points (uvicorn builds protocols from a class,
# and with several workers that class must be importable, not configured per instance).
_header_timeout = 10.0

_TIMEOUT_BODY = error_body("request_timeout", "request headers not received in time", [])
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n" % len(_TIMEOUT_BODY)
) + _TIMEOUT_BODY


def configure(*, header_timeout: float) -> None:
    """Set the header deadline of every connection accepted from now on; ``0`` turns it off."""
    global _header_timeout
    _header_timeout = header_timeout


def header_timeout() -> float:
    return _header_timeout


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

    # The two asked on every response, defined rather than found through __getattr__.
    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:
        # is_closing, pause_reading, get_extra_info, ...: the real transport's.
        return getattr(self.transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing each response with one system call, with a
    deadline on each request's headers; the header deadline and uvicorn's keep-alive timeout
    wait on the loop's one deadline wheel (:mod:`relaycore.uvicorn_ext.deadlines`) instead of a
    timer handle each per request."""

    deadline = 0.0
    bucket: int | None = None
    _in_head = False  # between a request's first byte and the end of its headers
    _idle = False  # the deadline armed is the keep-alive timeout, not the header deadline
    _wheel: Deadlines | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
        super().connection_made(transport)
        # A proxy with the Transport methods uvicorn calls.
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]  # duck-typed Transport
        self._wheel = Deadlines.of(self.loop)
        # Counted from the connection's start: a client that sends nothing is cut too.
        self._in_head = True
        self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        self._idle = False
        if _header_timeout > 0 and self._wheel is not None:
            self._wheel.arm(self, self.loop.time() + _header_timeout)
        else:
            self.deadline = 0.0

    def deadline_passed(self) -> None:
        if not self._idle:
            self._headers_too_slow()
        else:
            # uvicorn's keep-alive timeout: an idle connection is closed.
            self.timeout_keep_alive_handler()

    def _headers_too_slow(self) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        cycle = self.cycle
        # A 408 only between responses: behind a response still being written (a pipelined
        # partial request after a long-poll) the connection just closes.
        if cycle is None or cycle.response_complete:
            transport.write(TIMEOUT_RESPONSE)
        transport.close()

    def on_message_begin(self) -> None:
        # The next request on a kept-alive connection: its headers get the same deadline
        # (replacing the keep-alive timeout, as uvicorn cancels it on the first byte).
        self._in_head = True
        self._arm_header_deadline()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        # No deadline while the request is served (uvicorn has none either).
        self._in_head = False
        self.deadline = 0.0
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._wheel is not None:
            self._wheel.forget(self)
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        # A complete response goes out now, not at the end of the iteration: when many answers
        # are finished in one iteration, the first must not wait for the last to be built.
        transport = self.transport
        if isinstance(transport, CoalescingTransport):
            transport.flush()
        # uvicorn's on_response_complete, with its keep-alive timer replaced by the wheel.
        self.server_state.total_requests += 1
        if transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._wheel is not None and not (self._in_head and self.deadline):
            # Idle now (unless the next request's head is already arriving under its header
            # deadline, which stays).
            self._idle = True
            self._wheel.arm(self, self.loop.time() + self.timeout_keep_alive)

    def handle_websocket_upgrade(self) -> None:
        if self._wheel is not None:
            self._wheel.forget(self)  # the WebSocket protocol keeps its own clocks
        coalescing = self.transport
        if isinstance(coalescing, CoalescingTransport):
            coalescing.flush()
            self.transport = coalescing.transport
        super().handle_websocket_upgrade()
