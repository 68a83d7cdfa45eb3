"""Requests answered inside the protocol (``relay.direct``), on a real uvicorn server and socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from starlette.types import Receive, Scope, Send

from relay_devtools.testing import UvicornServer
from relaycore.direct import DIRECT, DirectRequest
from relaycore.uvicorn_ext import server_protocols


class App:
    """A raw ASGI app offering a direct handler through its lifespan state.

    ``/now``: answered directly at once; ``/park``: taken and kept in :attr:`parked` until the
    test answers it; anything else declined, then answered by the ASGI call with ``asgi``.
    """

    def __init__(self) -> None:
        self.parked: asyncio.Queue[DirectRequest] = asyncio.Queue()
        self.asgi_calls = 0
        self.disconnects = 0

    def handle(self, request: DirectRequest) -> bool:
        if request.path == "/now":
            body = b"direct " + request.query_string
            request.respond(200, [(b"content-length", b"%d" % len(body))], body)
            return True
        if request.path == "/park":

            def gone() -> None:
                self.disconnects += 1

            request.on_disconnect = gone
            self.parked.put_nowait(request)
            return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    scope["state"][DIRECT] = self.handle
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        self.asgi_calls += 1
        while (await receive()).get("more_body"):
            pass
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]}
        )
        await send({"type": "http.response.body", "body": b"asgi"})


@asynccontextmanager
async def served(app: App) -> AsyncIterator[UvicornServer]:
    protocols = server_protocols(websockets=True, prepared_responses=True)
    assert protocols.extended
    server = UvicornServer(app, http=protocols.http, ws=protocols.ws, timeout_keep_alive=5)
    async with server.running():
        yield server


async def _response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head, await asyncio.wait_for(reader.readexactly(length), 5)


def _get(path: str, *extra: bytes) -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nhost: x\r\n" + b"".join(extra) + b"\r\n"


async def test_taken_requests_are_answered_without_an_asgi_call_and_kept_alive() -> None:
    app = App()
    async with served(app) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            for n in range(3):
                writer.write(_get(f"/now?n={n}"))
                head, body = await _response(reader)
                assert head.startswith(b"HTTP/1.1 200 OK\r\n")
                assert b"\r\ndate: " in head  # the server's default headers
                assert b"connection: close" not in head
                assert body == b"direct n=%d" % n
            writer.write(_get("/other"))  # declined: the ASGI app answers, same connection
            assert (await _response(reader))[1] == b"asgi"
        finally:
            writer.close()
    assert app.asgi_calls == 1


async def test_requests_with_a_body_or_100_continue_are_never_offered() -> None:
    app = App()
    async with served(app) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(b"POST /now HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi")
            assert (await _response(reader))[1] == b"asgi"
            writer.write(
                b"POST /now HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                b"2\r\nhi\r\n0\r\n\r\n"
            )
            assert (await _response(reader))[1] == b"asgi"
            writer.write(_get("/now", b"expect: 100-continue\r\n"))
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(
                b"HTTP/1.1 100"
            )
            assert (await _response(reader))[1] == b"asgi"
        finally:
            writer.close()
    assert app.asgi_calls == 3


async def test_a_parked_request_is_answered_later_and_the_next_one_waits_behind_it() -> None:
    app = App()
    async with served(app) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            # Pipelined: the second request arrives while the first is parked.
            writer.write(_get("/park") + _get("/now?second"))
            parked = await asyncio.wait_for(app.parked.get(), 5)
            with pytest.raises(TimeoutError):  # nothing answered yet, not even the second
                await asyncio.wait_for(reader.read(1), 0.2)
            parked.respond(201, [(b"content-length", b"6")], b"parked")
            parked.respond(500, [(b"content-length", b"4")], b"late")  # answered: ignored
            head, body = await _response(reader)
            assert head.startswith(b"HTTP/1.1 201 Created\r\n")
            assert body == b"parked"
            # The queued request is started the ordinary way once the first is complete.
            assert (await _response(reader))[1] == b"asgi"
        finally:
            writer.close()
    assert app.disconnects == 0


async def test_a_parked_request_whose_peer_leaves_is_told_once() -> None:
    app = App()
    async with served(app) as server:
        _, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(_get("/park"))
        parked = await asyncio.wait_for(app.parked.get(), 5)
        writer.close()
        await writer.wait_closed()
        for _ in range(100):
            if app.disconnects:
                break
            await asyncio.sleep(0.02)
        assert app.disconnects == 1
        parked.respond(200, [(b"content-length", b"2")], b"no")  # the peer is gone: nothing
    assert app.asgi_calls == 0


async def test_connection_close_is_answered_with_it_and_the_socket_closed() -> None:
    app = App()
    async with served(app) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(_get("/now", b"connection: close\r\n"))
            head, body = await _response(reader)
            assert b"\r\nconnection: close\r\n" in head
            assert body == b"direct "
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        finally:
            writer.close()
