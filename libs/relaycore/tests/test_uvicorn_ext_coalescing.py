"""The coalescing httptools protocol: whole small responses in one write, nothing held back."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from relay_devtools.testing import UvicornServer
from relaycore.uvicorn_ext.coalescing import CoalescingHttpToolsProtocol, CoalescingTransport


async def streaming_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers ``/stream`` with a body sent in parts, pausing between them; anything else
    with a short fixed body (``HEAD`` too, where the body is dropped)."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b"three"})
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
    )
    await send({"type": "http.response.body", "body": b"hello"})


class CountingTransport(asyncio.Transport):
    """A real socket transport that also counts the writes it is given."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.transport.close()


async def test_writes_of_one_iteration_go_out_as_one() -> None:
    loop = asyncio.get_running_loop()
    ours, peer = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    reader, writer = await asyncio.open_connection(sock=peer)
    counting = CountingTransport(transport)
    held = CoalescingTransport(counting, loop)
    try:
        held.write(b"head;")
        held.write(b"body")
        assert counting.writes == []  # held until the response completes or the loop turns
        held.flush()  # what on_response_complete does
        assert counting.writes == [b"head;body"]
        held.write(b"alone")
        await asyncio.sleep(0)  # a lone write never waits past the current iteration
        assert counting.writes == [b"head;body", b"alone"]
        held.write(b"last")
        held.close()  # closing flushes first
        assert counting.writes[-1] == b"last"
        assert await asyncio.wait_for(reader.read(), timeout=5) == b"head;bodyalonelast"
    finally:
        writer.close()
        await writer.wait_closed()


async def test_streaming_head_and_continue_are_not_held_back() -> None:
    async with (
        UvicornServer(streaming_app, http=CoalescingHttpToolsProtocol).running() as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        async with client.stream("GET", "/stream") as response:
            parts = [part async for part in response.aiter_raw()]
        assert b"".join(parts) == b"one,two,three"
        assert len(parts) >= 2  # the parts went out as they were sent, not all at the end

        head = await client.head("/plain")
        assert head.status_code == 200
        assert head.headers["content-length"] == "5"
        assert (await client.get("/plain")).text == "hello"

        # Expect: 100-continue: the interim answer must arrive before the body is sent.
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(
                b"POST /plain HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n"
                b"expect: 100-continue\r\n\r\n"
            )
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            assert interim.startswith(b"HTTP/1.1 100")
            writer.write(b"{}")
            final = await asyncio.wait_for(reader.readuntil(b"hello"), timeout=5)
            assert final.startswith(b"HTTP/1.1 200")
        finally:
            writer.close()
            await writer.wait_closed()


async def test_malformed_request_still_gets_its_400() -> None:
    async with UvicornServer(streaming_app, http=CoalescingHttpToolsProtocol).running() as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), timeout=5)  # then closed
            assert answer.startswith(b"HTTP/1.1 400")
        finally:
            writer.close()
            await writer.wait_closed()
