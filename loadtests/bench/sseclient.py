"""A minimal Server-Sent Events subscriber for the SSE fan-out scenario (relay and nchan).

Why not httpx-sse/aiohttp: 1,000 subscribers at hundreds of messages per second on two shared
cores leave a few µs per delivery for the client. This is an ``asyncio.Protocol`` that parses
the response head once, then de-chunks the body incrementally (uvicorn and nginx both stream
``Transfer-Encoding: chunked``; a close-delimited body works too) and hands every *complete*
event block (up to the last blank line) to a callback, so a ``bench_t`` split across TCP
segments or chunk boundaries is never misread. Events are separated by ``\\n\\n`` — what both
servers send; ``\\r\\n`` line endings are not needed by either peer and not handled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

__all__ = ["SseError", "SseParser", "SseStream", "sse_request"]


class SseError(Exception):
    pass


def sse_request(path: str, host: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
        "Cache-Control: no-cache\r\n\r\n"
    ).encode("latin-1")


class SseParser:
    """Bytes in, complete event blocks out. ``status`` is set once the head is parsed."""

    __slots__ = ("_chunk_left", "_chunked", "_events", "_head", "_raw", "_skip", "ended", "status")

    def __init__(self) -> None:
        self.status = 0  # 0 until the response head is complete
        self.ended = False  # the server sent the last chunk
        self._head = bytearray()
        self._chunked = False
        self._raw = bytearray()  # chunked framing not yet decoded
        self._chunk_left = 0  # data bytes left in the current chunk
        self._skip = 0  # CRLF after a chunk's data still to drop
        self._events = bytearray()  # decoded body, not yet a complete event

    def feed(self, data: bytes) -> bytes:
        """Take the next bytes; return every event block completed by them (b"" if none)."""
        if not self.status:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return b""
            self._parse_head(bytes(self._head[:end]))
            data = bytes(self._head[end + 4 :])
            self._head.clear()
        if self._chunked:
            self._dechunk(data)
        else:
            self._events += data
        cut = self._events.rfind(b"\n\n")
        if cut < 0:
            return b""
        out = bytes(self._events[: cut + 2])
        del self._events[: cut + 2]
        return out

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise SseError(f"bad status line {lines[0][:100]!r}")
        self.status = int(parts[1])
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"transfer-encoding":
                self._chunked = b"chunked" in value.lower()

    def _dechunk(self, data: bytes) -> None:
        raw = self._raw
        raw += data
        pos, size = 0, len(raw)
        while pos < size and not self.ended:
            if self._chunk_left:
                take = min(self._chunk_left, size - pos)
                self._events += raw[pos : pos + take]
                pos += take
                self._chunk_left -= take
                if not self._chunk_left:
                    self._skip = 2
            elif self._skip:
                take = min(self._skip, size - pos)
                pos += take
                self._skip -= take
            else:
                line_end = raw.find(b"\r\n", pos)
                if line_end < 0:
                    break
                text = bytes(raw[pos:line_end]).split(b";", 1)[0].strip()
                try:
                    chunk = int(text, 16)
                except ValueError as exc:
                    raise SseError(f"bad chunk size {text[:40]!r}") from exc
                pos = line_end + 2
                if chunk == 0:
                    self.ended = True
                else:
                    self._chunk_left = chunk
        del raw[:pos]


class SseStream(asyncio.Protocol):
    """One subscriber connection: ``on_events(block)`` for every batch of complete events.

    ``ready`` resolves when the server answered 200 (fails on another status or a close).
    """

    def __init__(self, request: bytes, on_events: Callable[[bytes], object]) -> None:
        self._request = request
        self._on_events = on_events
        self._parser = SseParser()
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.error = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        stream = cast(asyncio.Transport, transport)
        self.transport = stream
        stream.write(self._request)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        try:
            events = parser.feed(data)
        except SseError as exc:
            self._fail(str(exc))
            return
        if not self.ready.done() and parser.status:
            if parser.status != 200:
                self._fail(f"status {parser.status}")
                return
            self.ready.set_result(None)
        if events:
            self._on_events(events)
        if parser.ended:
            self._fail("stream ended by the server")

    def _fail(self, text: str) -> None:
        self.error = self.error or text
        if not self.ready.done():
            self.ready.set_exception(SseError(text))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(SseError(f"closed before the answer: {exc}"))

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
