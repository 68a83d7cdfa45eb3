"""A minimal keep-alive HTTP/1.1 client for the fan-out publisher and the long-poll loops.

Why not httpx/aiohttp: on two shared cores the load generator must not be the bottleneck; a
``asyncio.Protocol`` with a bytes-level response parser costs a few µs per response, several
times less than a general client. It speaks only what the harness needs: one request in
flight per connection, ``Content-Length`` or ``chunked`` bodies, no redirects, no TLS.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

__all__ = ["HttpConnection", "HttpError", "Response", "build_request", "parse_response"]


class HttpError(Exception):
    pass


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[bytes, bytes]  # names lower-cased
    body: bytes


def build_request(
    method: str,
    path: str,
    host: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _parse_chunked(buffer: bytes | bytearray, start: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at ``start``; None while incomplete."""
    parts: list[bytes] = []
    pos = start
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size_text = bytes(buffer[pos:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise HttpError(f"bad chunk size {size_text!r}") from exc
        data_start = line_end + 2
        if size == 0:
            # Trailers (none expected) end with an empty line.
            end = buffer.find(b"\r\n\r\n", line_end)
            if end < 0:
                return None
            return b"".join(parts), end + 4
        if len(buffer) < data_start + size + 2:
            return None
        parts.append(bytes(buffer[data_start : data_start + size]))
        pos = data_start + size + 2


def parse_response(buffer: bytes | bytearray) -> tuple[Response, int] | None:
    """Parse one complete response from the start of ``buffer``.

    Returns the response and the number of bytes it used, or None when more bytes are needed.
    """
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buffer[:head_end]).split(b"\r\n")
    status_line = head[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
        raise HttpError(f"bad status line {head[0]!r}")
    status = int(status_line[1])
    headers: dict[bytes, bytes] = {}
    for line in head[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    body_start = head_end + 4
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        chunked = _parse_chunked(buffer, body_start)
        if chunked is None:
            return None
        body, end = chunked
        return Response(status, headers, body), end
    length = int(headers.get(b"content-length", b"0"))
    end = body_start + length
    if len(buffer) < end:
        return None
    return Response(status, headers, bytes(buffer[body_start:end])), end


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection; ``request`` sends raw bytes and awaits the parsed response."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Response] | None = None
        self._transport: asyncio.Transport | None = None
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int, *, local_host: str | None = None) -> HttpConnection:
        loop = asyncio.get_running_loop()
        local_addr = (local_host, 0) if local_host else None
        _, protocol = await loop.create_connection(cls, host, port, local_addr=local_addr)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is None or self._waiter.done():
            return
        try:
            parsed = parse_response(self._buffer)
        except (HttpError, ValueError) as exc:
            self._waiter.set_exception(HttpError(str(exc)))
            return
        if parsed is not None:
            response, used = parsed
            del self._buffer[:used]
            self._waiter.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(HttpError(f"connection lost: {exc}"))

    async def request(self, raw: bytes) -> Response:
        if self.closed or self._transport is None:
            raise HttpError("connection closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(raw)
        try:
            return await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
