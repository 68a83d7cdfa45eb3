"""Requests answered inside the protocol (``relay.direct``), on a real uvicorn server and socket.

Every test runs on both protocols that offer requests to the direct handler: the gateway's lean
one (``lean``: connections start there) and uvicorn's (``uvicorn``: where the lean one hands a
connection over, and what serves when it is not used)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import websockets
from starlette.types import Receive, Scope, Send

from relay_devtools.testing import UvicornServer
from relaycore.direct import DIRECT, DirectRequest
from relaycore.uvicorn_ext import configure, server_protocols
from relaycore.uvicorn_ext.direct import DirectHttpProtocol
from relaycore.uvicorn_ext.lean import LeanHttpProtocol


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
        if request.path == "/boom":
            raise RuntimeError("a bug in the handler")
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
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": "ws"})
            await send({"type": "websocket.close", "code": 1000})
            return
        self.asgi_calls += 1
        while (await receive()).get("more_body"):
            pass
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]}
        )
        await send({"type": "http.response.body", "body": b"asgi"})


@pytest.fixture(params=["lean", "uvicorn"])
def http(request: pytest.FixtureRequest) -> type:
    """The HTTP protocol class under test."""
    return LeanHttpProtocol if request.param == "lean" else DirectHttpProtocol


def test_the_gateway_protocols_start_connections_on_the_lean_one() -> None:
    protocols = server_protocols(websockets=True, prepared_responses=True)
    assert protocols.extended
    assert protocols.http is LeanHttpProtocol


@asynccontextmanager
async def served(app: App, http: type, **config: object) -> AsyncIterator[UvicornServer]:
    protocols = server_protocols(websockets=True, prepared_responses=True)
    options: dict[str, object] = {"timeout_keep_alive": 5, **config}
    server = UvicornServer(app, http=http, ws=protocols.ws, **options)
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


async def test_taken_requests_are_answered_without_an_asgi_call_and_kept_alive(http: type) -> None:
    app = App()
    async with served(app, http) as server:
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


async def test_requests_with_a_body_or_100_continue_are_never_offered(http: type) -> None:
    app = App()
    async with served(app, http) as server:
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


async def test_a_parked_request_is_answered_later_and_the_next_one_waits_behind_it(
    http: type,
) -> None:
    app = App()
    async with served(app, http) as server:
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


async def test_a_parked_request_whose_peer_leaves_is_told_once(http: type) -> None:
    app = App()
    async with served(app, http) as server:
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


async def test_connection_close_is_answered_with_it_and_the_socket_closed(http: type) -> None:
    app = App()
    async with served(app, http) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(_get("/now", b"connection: close\r\n"))
            head, body = await _response(reader)
            assert b"\r\nconnection: close\r\n" in head
            assert body == b"direct "
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        finally:
            writer.close()


async def test_a_request_behind_a_parked_one_is_answered_after_it(http: type) -> None:
    app = App()
    async with served(app, http) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(_get("/park"))
            parked = await asyncio.wait_for(app.parked.get(), 5)
            writer.write(_get("/now?second"))  # a read of its own, while the first is parked
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.2)
            parked.respond(200, [(b"content-length", b"6")], b"parked")
            assert (await _response(reader))[1] == b"parked"
            second = (await _response(reader))[1]
        finally:
            writer.close()
    # uvicorn's protocol starts a pipelined request the ordinary way; the lean one offers it.
    assert second == (b"direct second" if http is LeanHttpProtocol else b"asgi")


async def test_a_request_split_over_several_reads_is_answered(http: type) -> None:
    app = App()
    async with served(app, http) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            request = _get("/now?split")
            writer.write(request[:7])
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(request[7:])
            assert (await _response(reader))[1] == b"direct split"
            writer.write(_get("/now?after"))  # and the connection still serves
            assert (await _response(reader))[1] == b"direct after"
        finally:
            writer.close()


async def test_http_1_0_is_answered_with_connection_close(http: type) -> None:
    app = App()
    async with served(app, http) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(b"GET /now?old HTTP/1.0\r\n\r\n")
            head, body = await _response(reader)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"\r\nconnection: close\r\n" in head
            assert body == b"direct old"
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()


async def test_a_malformed_request_gets_uvicorns_400(http: type) -> None:
    app = App()
    async with served(app, http) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(b"GET /now HTTP/1.1\r\nbad header\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 400")
        finally:
            writer.close()
    assert app.asgi_calls == 0


async def test_a_websocket_upgrade_is_served(http: type) -> None:
    app = App()
    async with served(app, http) as server, websockets.connect(server.ws_url + "/ws") as socket:
        assert await asyncio.wait_for(socket.recv(), 5) == "ws"


async def test_access_log_lines_are_uvicorns(http: type) -> None:
    app = App()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]  # a list as the log's sink
    access = logging.getLogger("uvicorn.access")
    async with served(app, http) as server:
        # After uvicorn configured its loggers (at WARNING, as the test servers run).
        level = access.level
        access.setLevel(logging.INFO)
        access.addHandler(handler)
        try:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            port = writer.get_extra_info("sockname")[1]
            try:
                writer.write(_get("/now?n=%C3%A9"))
                await _response(reader)
                writer.write(_get("/sp%20ace"))  # declined: the ASGI path logs it
                await _response(reader)
            finally:
                writer.close()
        finally:
            access.removeHandler(handler)
            access.setLevel(level)
    lines = [record.getMessage() for record in records]
    assert lines == [
        f'127.0.0.1:{port} - "GET /now?n=%C3%A9 HTTP/1.1" 200',
        f'127.0.0.1:{port} - "GET /sp%20ace HTTP/1.1" 200',
    ]


async def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(http: type) -> None:
    app = App()
    async with served(app, http, timeout_keep_alive=1) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(_get("/now"))
            await _response(reader)
            started = asyncio.get_running_loop().time()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert 0.9 <= asyncio.get_running_loop().time() - started < 2
        finally:
            writer.close()


async def test_a_silent_connection_gets_408_after_the_header_timeout(http: type) -> None:
    app = App()
    configure(header_timeout=0.5)
    try:
        async with served(app, http) as server:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            try:
                answer = await asyncio.wait_for(reader.read(), 5)
                assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
            finally:
                writer.close()
    finally:
        configure(header_timeout=10)


async def test_shutdown_closes_idle_connections(http: type) -> None:
    app = App()
    async with served(app, http) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(_get("/now"))
        await _response(reader)
    try:  # the server has stopped: the kept-alive connection is closed
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def test_a_failing_handler_fails_its_request_only() -> None:
    app = App()
    async with served(app, LeanHttpProtocol) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(_get("/boom"))
            head, body = await _response(reader)
            assert head.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
            assert b"\r\nconnection: close\r\n" in head
            assert b'"internal"' in body
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:  # the server still serves
            writer.write(_get("/now?again"))
            assert (await _response(reader))[1] == b"direct again"
        finally:
            writer.close()
