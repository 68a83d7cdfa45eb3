"""Prepared long-poll answers on uvicorn's httptools protocol (the ``relay.response`` extension).

:class:`RelayHttpProtocol` is the one-write protocol (:mod:`relaycore.uvicorn_ext.coalescing`:
long-poll is nothing but small responses, and uvicorn's two writes per response were 40 % of
the gateway's CPU under the long-poll benchmark) plus the ASGI scope extension
``relay.response`` (:class:`relaycore.prepared.ResponseWriter`) on each HTTP request: the app
builds a :class:`~relaycore.prepared.PreparedResponse` once and writes the same bytes to every
waiting request's socket, completing its request cycle as uvicorn's own ``send`` would (access
log line, keep-alive, the next pipelined request, the keep-alive timer), without an ASGI message
or a task wake-up first. The writer declines (returns ``False``) whenever the ordinary path has
something to add: the connection is to close (HTTP/1.0, ``Connection: close``, shutdown), the
response already started, the peer is gone or not reading, or the request is a ``HEAD``.
Under another ASGI server there is no extension and the app answers the ordinary way.

A streamed response (SSE) that uvicorn started with chunked coding also takes body chunks built
once for many streams (``write_stream``: framed as uvicorn's ``send`` frames them, written at
once); it declines while the transport is above its high-water mark, and the app then sends
through ASGI and waits for the drain as usual.

Completing a cycle here repeats the tail of uvicorn's ``RequestResponseCycle.send``; every
field and the access-log format it relies on are checked in
:mod:`relaycore.uvicorn_ext.internals`, so an upgrade that changes them fails the tests loudly
and makes the services fall back to uvicorn's own protocol.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string
from uvicorn.server import ServerState

from relaycore.prepared import EXTENSION, PreparedResponse
from relaycore.uvicorn_ext.coalescing import CoalescingHttpToolsProtocol, CoalescingTransport

__all__ = [
    "ACCESS_LOG_FORMAT",
    "CycleResponseWriter",
    "RelayHttpProtocol",
    "start_response",
    "write_now",
]

# uvicorn's access-log line (RequestResponseCycle.send), repeated for prepared answers.
ACCESS_LOG_FORMAT = '%s - "%s %s HTTP/%s" %d'


def start_response(cycle: RequestResponseCycle, status: int) -> None:
    """Mark ``cycle``'s response started and log it, as uvicorn's ``send`` does for the
    response start."""
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    if cycle.access_log:
        scope = cycle.scope
        cycle.access_logger.info(
            ACCESS_LOG_FORMAT,
            get_client_addr(scope),
            scope["method"],
            get_path_with_query_string(scope),
            scope["http_version"],
            status,
        )


def write_now(transport: asyncio.Transport, data: bytes) -> None:
    """Write ``data`` now, after anything a coalescing transport still holds."""
    if isinstance(transport, CoalescingTransport):
        transport.write_now(data)
    else:
        transport.write(data)


class CycleResponseWriter:
    """``scope["extensions"]["relay.response"]`` for one uvicorn request cycle."""

    __slots__ = ("_cycle", "_server_state")

    def __init__(self, cycle: RequestResponseCycle, server_state: ServerState) -> None:
        self._cycle = cycle
        self._server_state = server_state

    @property
    def buffered_bytes(self) -> int:
        transport = self._cycle.transport
        # The real transport's own methods: asked once per delivery of every SSE stream, and the
        # proxy's __getattr__ was a tenth of the gateway's CPU under the SSE fan-out benchmark.
        if isinstance(transport, CoalescingTransport):
            transport = transport.transport
        return 0 if transport.is_closing() else transport.get_write_buffer_size()

    def cut(self, last: bytes, *, timeout: float) -> None:
        cycle = self._cycle
        transport = cycle.transport
        # From here on uvicorn's send returns at once instead of waiting for the peer to drain.
        cycle.disconnected = True
        cycle.message_event.set()
        if transport.is_closing():
            return
        if last:
            write_now(transport, last)
        transport.close()
        real = transport.transport if isinstance(transport, CoalescingTransport) else transport
        asyncio.get_running_loop().call_later(timeout, real.abort)

    def write_stream(self, chunk: bytes) -> bool:
        """Write ``chunk`` (:func:`relaycore.prepared.stream_chunk`) to the started response.

        What uvicorn's ``send`` of an ``http.response.body`` with ``more_body`` writes for a
        chunked response, minus the ASGI message, its wrappers and its wait for the transport:
        declined (``False``) unless uvicorn frames this response's body as chunks, it is not
        complete, and the transport would take the bytes without waiting.
        """
        cycle = self._cycle
        transport = cycle.transport
        # The real transport's own methods (see buffered_bytes); a coalescing proxy writes the
        # chunk after the response head and any body it still holds for this iteration.
        if isinstance(transport, CoalescingTransport):
            real = transport.transport
            write = transport.write_now
        else:
            real = transport
            write = transport.write
        if (
            cycle.chunked_encoding is not True
            or cycle.response_complete
            or cycle.disconnected
            or cycle.flow.write_paused
            or real.is_closing()
            or cycle.scope["method"] == "HEAD"
        ):
            return False
        write(chunk)
        return True

    def write_prepared(self, response: PreparedResponse) -> bool:
        """Answer the request with ``response`` now; ``False`` (nothing written) when it cannot.

        On success the request cycle is complete, exactly as after uvicorn's last
        ``http.response.body``: the app must send nothing more and simply return.
        """
        cycle = self._cycle
        transport = cycle.transport
        if (
            cycle.response_started
            or cycle.disconnected
            or not cycle.keep_alive
            or cycle.flow.write_paused
            or cycle.scope["method"] == "HEAD"
            or transport.is_closing()
        ):
            return False
        start_response(cycle, 200)
        write_now(transport, response.encode(self._server_state.default_headers))
        cycle.response_complete = True
        cycle.message_event.set()
        cycle.on_response()
        return True


class RelayHttpProtocol(CoalescingHttpToolsProtocol):
    """The shared one-write protocol plus the prepared-response extension for long-polls.

    Pass it as uvicorn's ``http=`` (a protocol class is accepted there).
    """

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        # A new cycle was made (not an upgrade) and its ASGI task has not run yet: the scope
        # can still gain the extension.
        if cycle is not None and cycle.scope is self.scope:
            extensions = self.scope.setdefault("extensions", {})
            extensions[EXTENSION] = CycleResponseWriter(cycle, self.server_state)  # type: ignore[assignment]  # typed as dict[object, object]
