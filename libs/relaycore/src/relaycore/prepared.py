"""Prepared HTTP responses, and the ``relay.response`` scope extension that writes them.

Pure data and typing: no server code. Long-polls waiting on the same topic at the same cursor
get byte-identical answers, so the app builds a :class:`PreparedResponse` — status line,
headers, body — once and hands the same bytes to every waiting request whose server offers the
``relay.response`` ASGI scope extension (a :class:`ResponseWriter`;
relaycore.uvicorn_ext.responses implements it on uvicorn). Under any other server
:func:`response_writer` returns ``None`` and the app answers the ordinary way.

The same extension serves streamed responses (SSE): once the response has started, a chunk of
its body built once for many streams (:func:`stream_chunk`, the SSE bytes of one fan-out) is
written straight to each stream's transport (:meth:`ResponseWriter.write_stream`) with no ASGI
message and no task wake-up per stream; the bytes waiting in the transport's write buffer count
toward the stream's ``RELAY_MAX_QUEUE_BYTES``, and a slow stream is cut at the socket instead
of waiting, through uvicorn's ``send``, for a peer that does not read.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["EXTENSION", "PreparedResponse", "ResponseWriter", "response_writer", "stream_chunk"]

EXTENSION = "relay.response"

_STATUS_200 = b"HTTP/1.1 200 OK\r\n"


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
        """Status line, ``default_headers`` as the server writes them, type, length, body."""
        if default_headers is not self._defaults:
            parts = [_STATUS_200]
            for name, value in default_headers:
                parts += (name, b": ", value, b"\r\n")
            parts += (
                b"content-type: ", self.content_type,
                b"\r\ncontent-length: ", b"%d" % len(self.body), b"\r\n\r\n", self.body,
            )  # fmt: skip
            self._data = b"".join(parts)
            self._defaults = default_headers
        return self._data


def stream_chunk(body: bytes) -> bytes:
    """``body`` (not empty) as one chunk of HTTP/1.1's chunked transfer coding (RFC 9112 §7.1),
    framed exactly as uvicorn frames each ``http.response.body`` of a streamed response."""
    return b"%x\r\n%b\r\n" % (len(body), body)


class ResponseWriter(Protocol):
    """What the app sees under ``scope["extensions"]["relay.response"]``."""

    def write_prepared(self, response: PreparedResponse) -> bool:
        """Answer the request with ``response`` now; ``False`` (nothing written) when it cannot.

        On success the request is complete, exactly as after the last ``http.response.body``:
        the app must send nothing more and simply return.
        """
        ...

    @property
    def buffered_bytes(self) -> int:
        """Bytes written to this connection that its transport has not handed to the kernel
        (a streamed response counts them toward its bound)."""
        ...

    def write_stream(self, chunk: bytes) -> bool:
        """Write ``chunk`` — body bytes framed by :func:`stream_chunk` — to this request's
        started, chunked, streamed response now; ``False`` (nothing written) when it cannot:
        the response has not started, is not chunked or is complete, the peer is gone, or the
        transport is closing or above its high-water mark. The app then sends the body through
        ASGI ``send`` (which waits for the transport to drain); it must keep its own order
        between the two paths."""
        ...

    def cut(self, last: bytes, *, timeout: float) -> None:
        """End the connection now: ``last`` (when not empty) goes out before the close; the
        socket is aborted if the peer has not taken everything within ``timeout`` seconds.
        The request then counts as disconnected: further sends return at once."""
        ...


def response_writer(scope: Any) -> ResponseWriter | None:
    """The prepared-response path of this request, if the server offers one."""
    extensions = scope.get("extensions")
    if extensions is None:
        return None
    writer: ResponseWriter | None = extensions.get(EXTENSION)
    return writer
