"""One socket write per HTTP response: uvicorn's httptools protocol with coalesced writes.

uvicorn writes a response's status line and headers when the app sends
``http.response.start`` and the body on ``http.response.body``: two ``send()`` system calls,
and on loopback or a busy host two packets, for every long-poll answer. Long-poll is nothing
but small responses, and those two writes were 40 % of the gateway's CPU under the long-poll
benchmark. :class:`RelayHttpProtocol` gives each request cycle a transport that holds writes
back until the response is complete (or, for a streamed response such as SSE, until the end
of the event-loop iteration) and then writes them as one.

A WebSocket upgrade hands the real transport to the WebSocket protocol: frames are never
delayed.

**Prepared responses, written many.** Long-polls waiting on the same topic at the same cursor
get byte-identical answers. The protocol offers each HTTP request the ASGI scope extension
``relay.response`` (a :class:`ResponseWriter`): the app builds a :class:`PreparedResponse` —
status line, headers and body — once and writes the same bytes to every waiting request's
socket, completing its request cycle as uvicorn's own ``send`` would (access log line,
keep-alive, the next pipelined request, the keep-alive timer), without an ASGI message or a
task wake-up first. The writer declines (returns ``False``) whenever the ordinary path has
something to add: the connection is to close (HTTP/1.0, ``Connection: close``, shutdown), the
response already started, the peer is gone or not reading, or the request is a ``HEAD``.
Under another ASGI server there is no extension and the app answers the ordinary way.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string
from uvicorn.server import ServerState

__all__ = [
    "EXTENSION",
    "CoalescingTransport",
    "PreparedResponse",
    "RelayHttpProtocol",
    "ResponseWriter",
    "response_writer",
]

EXTENSION = "relay.response"


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


class PreparedResponse:
    """A complete ``200`` response shared by many requests: its bytes are built once.

    The server's default headers (``date``, ``server``) change once a second; the bytes are
    rebuilt only when the list passed in is not the one they were built with.
    """

    __slots__ = ("_data", "_defaults", "body", "content_type")

    def __init__(self, body: bytes, content_type: bytes = b"application/json") -> None:
        self.body = body
        self.content_type = content_type
        self._defaults: list[tuple[bytes, bytes]] | None = None
        self._data = b""

    def encode(self, default_headers: list[tuple[bytes, bytes]]) -> bytes:
        """Status line, ``default_headers`` as uvicorn writes them, type, length, body."""
        if default_headers is not self._defaults:
            parts = [STATUS_LINE[200]]
            for name, value in default_headers:
                parts += (name, b": ", value, b"\r\n")
            parts += (
                b"content-type: ", self.content_type,
                b"\r\ncontent-length: ", b"%d" % len(self.body), b"\r\n\r\n", self.body,
            )  # fmt: skip
            self._data = b"".join(parts)
            self._defaults = default_headers
        return self._data


class ResponseWriter:
    """``scope["extensions"]["relay.response"]``: write a prepared response for one request."""

    __slots__ = ("_cycle", "_server_state")

    def __init__(self, cycle: RequestResponseCycle, server_state: ServerState) -> None:
        self._cycle = cycle
        self._server_state = server_state

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
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        if cycle.access_log:
            scope = cycle.scope
            cycle.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(scope),
                scope["method"],
                get_path_with_query_string(scope),
                scope["http_version"],
                200,
            )
        data = response.encode(self._server_state.default_headers)
        if isinstance(transport, CoalescingTransport):
            transport.write_now(data)
        else:
            transport.write(data)
        cycle.response_complete = True
        cycle.message_event.set()
        cycle.on_response()
        return True


def response_writer(scope: Any) -> ResponseWriter | None:
    """The prepared-response path of this request, if the server offers one."""
    extensions = scope.get("extensions")
    if extensions is None:
        return None
    writer: ResponseWriter | None = extensions.get(EXTENSION)
    return writer


class RelayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing each response with one system call.

    Pass it as uvicorn's ``http=`` (a protocol class is accepted there).
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
        super().connection_made(transport)
        # A proxy with the Transport methods uvicorn calls.
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        # A new cycle was made (not an upgrade) and its ASGI task has not run yet: the scope
        # can still gain the extension.
        if cycle is not None and cycle.scope is self.scope:
            extensions = self.scope.setdefault("extensions", {})
            extensions[EXTENSION] = ResponseWriter(cycle, self.server_state)  # type: ignore[assignment]  # typed as dict[object, object]

    def on_response_complete(self) -> None:
        # A complete response goes out now, not at the end of the iteration: when many polls
        # are answered in one iteration, the first must not wait for the last to be built.
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
