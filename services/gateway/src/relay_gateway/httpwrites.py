"""The gateway's uvicorn HTTP protocol: one write per response, and prepared long-poll answers.

:class:`RelayHttpProtocol` is relaycore's one-write protocol
(:mod:`relaycore.httpprotocol`: long-poll is nothing but small responses, and uvicorn's two
writes per response were 40 % of the gateway's CPU under the long-poll benchmark) plus:

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

**Bounded streams.** The same extension lets a streamed response (SSE) see how many bytes wait
in its transport's write buffer (:attr:`ResponseWriter.buffered_bytes`, counted toward the
stream's ``RELAY_MAX_QUEUE_BYTES``) and :meth:`ResponseWriter.cut` it: a last chunk if it fits,
then close, and abort the socket if it is still there after the close timeout. uvicorn's own
path would wait for the peer to read before it can even end the response.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string
from uvicorn.server import ServerState

from relaycore.httpprotocol import CoalescingHttpToolsProtocol, CoalescingTransport

__all__ = [
    "EXTENSION",
    "CoalescingTransport",
    "PreparedResponse",
    "RelayHttpProtocol",
    "ResponseWriter",
    "response_writer",
]

EXTENSION = "relay.response"


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

    @property
    def buffered_bytes(self) -> int:
        """Bytes written to this connection that its transport has not handed to the kernel."""
        transport = self._cycle.transport
        return 0 if transport.is_closing() else transport.get_write_buffer_size()

    def cut(self, last: bytes, *, timeout: float) -> None:
        """End the connection now: ``last`` (when not empty) goes out before the close; the
        socket is aborted if the peer has not taken everything within ``timeout`` seconds.

        The request cycle counts as disconnected from here on: further sends return at once.
        """
        cycle = self._cycle
        transport = cycle.transport
        cycle.disconnected = True
        cycle.message_event.set()
        if transport.is_closing():
            return
        if last:
            if isinstance(transport, CoalescingTransport):
                transport.write_now(last)
            else:
                transport.write(last)
        transport.close()
        real = transport.transport if isinstance(transport, CoalescingTransport) else transport
        asyncio.get_running_loop().call_later(timeout, real.abort)

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
            extensions[EXTENSION] = ResponseWriter(cycle, self.server_state)  # type: ignore[assignment]  # typed as dict[object, object]
