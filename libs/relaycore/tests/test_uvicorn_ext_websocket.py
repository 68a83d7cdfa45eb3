"""RelayWebSocketProtocol's memory savers, seen from a raw socket: pings still come on time and
unanswered ones still drop the peer; the handshake request is gone once the connection is open,
and the parser holding it is only replaced between frames."""

from __future__ import annotations

import asyncio
import base64
import gc
import itertools
import os
import struct
import time
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import OPEN, Protocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from relay_devtools.testing import UvicornServer
from relaycore.uvicorn_ext.websocket import RelayWebSocketProtocol, _at_frame_boundary


async def lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


seen_headers: list[set[bytes]] = []


async def echo(scope: Any, receive: Any, send: Any) -> None:
    """Accepts, then echoes every text frame until the peer goes."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    await receive()
    seen_headers.append({name for name, _ in scope["headers"]})
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message["text"]})


def _handshake() -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "X-Padding: " + "p" * 2000 + "\r\n\r\n"
    ).encode()


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked, final frame, as a client must send it."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked


class RawClient:
    """A WebSocket client on a plain socket: it answers nothing by itself."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""

    @classmethod
    async def connect(cls, server: UvicornServer, after_handshake: bytes = b"") -> RawClient:
        reader, writer = await asyncio.open_connection(server.config.host, server.config.port)
        writer.write(_handshake() + after_handshake)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def _parse(self) -> Frame | None:
        """The first complete frame in the buffer (removed from it), if there is one."""
        stream = StreamReader()
        stream.feed_data(self.buffer)
        parser = Frame.parse(stream.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            self.buffer = bytes(stream.buffer)
            frame: Frame = done.value
            return frame
        return None

    async def frame(self, wait: float = 5.0) -> Frame:
        while (frame := self._parse()) is None:
            data = await asyncio.wait_for(self.reader.read(65536), wait)
            if not data:
                raise ConnectionError("closed by the server")
            self.buffer += data
        return frame

    def close(self) -> None:
        self.writer.close()


async def test_keepalive_pings_arrive_each_interval_and_silence_drops_the_peer() -> None:
    server = UvicornServer(echo, ws=RelayWebSocketProtocol, ws_ping_interval=1.0,
                           ws_ping_timeout=1.0)  # fmt: skip
    async with server.running():
        answering = await RawClient.connect(server)
        silent = await RawClient.connect(server)
        started = time.monotonic()
        pings = []
        for _ in range(3):
            frame = await answering.frame(wait=4)
            assert frame.opcode is Opcode.PING
            pings.append(time.monotonic() - started)
            answering.writer.write(_client_frame(0xA, frame.data))
        # One ping per interval (the wheel ticks on whole seconds: up to 1 s late, never early).
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert all(0.9 <= gap <= 2.6 for gap in gaps), pings
        # The silent peer got its ping, never answered, and was closed (1011) after the timeout.
        assert (await silent.frame(wait=4)).opcode is Opcode.PING
        close = await silent.frame(wait=4)
        assert close.opcode is Opcode.CLOSE
        assert struct.unpack("!H", close.data[:2])[0] == 1011
        # The answering one is still served.
        answering.writer.write(_client_frame(0x1, b"still here"))
        frame = await answering.frame()
        while frame.opcode is Opcode.PING:
            answering.writer.write(_client_frame(0xA, frame.data))
            frame = await answering.frame()
        assert frame.data == b"still here"
        answering.close()
        silent.close()


async def test_open_connections_hold_no_handshake_request() -> None:
    server = UvicornServer(echo, ws=RelayWebSocketProtocol)
    async with server.running():
        clients = [await RawClient.connect(server) for _ in range(20)]
        for client in clients:
            client.writer.write(_client_frame(0x1, b"hi"))
            assert (await client.frame()).data == b"hi"
        gc.collect()
        requests = [o for o in gc.get_objects() if isinstance(o, Request)]
        protocols = [c for c in server.server.server_state.connections
                     if isinstance(c, RelayWebSocketProtocol)]  # fmt: skip
        assert len(protocols) == 20
        # Every connection parses frames with the plain frame parser, not the handshake's.
        assert all(p.conn.parser.gi_code is Protocol.parse.__code__ for p in protocols)
        assert requests == []
        # The scope's header list is emptied once accepted (the app read it before accepting).
        assert all(p.scope["headers"] == [] for p in protocols)
        assert seen_headers
        assert all(b"x-padding" in names for names in seen_headers)
        for client in clients:
            client.close()


def test_the_parser_is_only_swapped_between_frames() -> None:
    conn = ServerProtocol()
    conn.receive_data(_handshake())
    (request,) = conn.events_received()
    conn.send_response(conn.accept(request))
    assert conn.state is OPEN
    assert _at_frame_boundary(conn)
    frame = _client_frame(0x1, b"hello")
    conn.receive_data(frame[:3])  # the parser took the header and waits inside the frame
    assert not _at_frame_boundary(conn)
    conn.receive_data(frame[3:])
    assert [event.data for event in conn.events_received()] == [b"hello"]
    assert _at_frame_boundary(conn)
