"""``relay.response``'s ``write_stream``: chunks of a started streamed response, written at once.

What a client sees is the contract: chunks written straight to the transport and bodies sent
through ASGI make one correctly chunked body, in order; the writer declines when uvicorn would
not chunk (not started, ``HEAD``, a ``Content-Length``, complete) and while the peer is not
reading, and the ASGI ``send`` after it waits for the drain as usual.
"""

from __future__ import annotations

import asyncio
import socket

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

from relay_devtools.testing import UvicornServer
from relaycore.prepared import ResponseWriter, response_writer, stream_chunk
from relaycore.uvicorn_ext.responses import RelayHttpProtocol

BIG = b"x" * 65536


def _writer(scope: Scope) -> ResponseWriter:
    writer = response_writer(scope)
    assert writer is not None
    return writer


def make_app(seen: dict[str, list[bool]]) -> ASGIApp:
    """``/mixed``: a body from both paths; ``/plain``: a Content-Length answer; ``/flood``:
    direct chunks until the writer declines, then the rest through ASGI. ``seen[path]``
    records what ``write_stream`` returned at each point."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        writer = _writer(scope)
        path = scope["path"]
        results = seen.setdefault(f"{scope['method']} {path}", [])
        results.append(writer.write_stream(stream_chunk(b"too early")))
        if path == "/plain":
            headers = [(b"content-length", b"5")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            results.append(writer.write_stream(stream_chunk(b"extra")))
            await send({"type": "http.response.body", "body": b"hello"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if path == "/mixed":
            await send({"type": "http.response.body", "body": b"a,", "more_body": True})
            results.append(writer.write_stream(stream_chunk(b"b,")))
            await send({"type": "http.response.body", "body": b"c,", "more_body": True})
            results.append(writer.write_stream(stream_chunk(b"d,")))
            results.append(writer.write_stream(stream_chunk(b"e")))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            results.append(writer.write_stream(stream_chunk(b"after the end")))
            return
        # /flood: a peer that does not read makes the writer decline within a few MB.
        written = 0
        while written < 256 and writer.write_stream(stream_chunk(BIG)):
            written += 1
        results.append(written < 256)
        results.append(writer.buffered_bytes > 0)
        await send({"type": "http.response.body", "body": b"%d" % written, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def test_direct_chunks_and_asgi_bodies_make_one_body_in_order() -> None:
    seen: dict[str, list[bool]] = {}
    async with (
        UvicornServer(make_app(seen), http=RelayHttpProtocol).running() as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        response = await client.get("/mixed")
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.content == b"a,b,c,d,e"
        # Before the start: no; into the started stream: yes; after the last body: no.
        assert seen["GET /mixed"] == [False, True, True, True, False]

        assert (await client.get("/plain")).text == "hello"
        assert seen["GET /plain"] == [False, False]  # a Content-Length answer is not chunked

        head = await client.head("/mixed")
        assert head.status_code == 200
        assert head.content == b""
        assert seen["HEAD /mixed"][1:] == [False, False, False, False]

        # The connection stays usable: the chunked framing ended exactly where it should.
        assert (await client.get("/mixed")).content == b"a,b,c,d,e"


async def test_writer_declines_while_the_peer_is_not_reading() -> None:
    seen: dict[str, list[bool]] = {}
    async with UvicornServer(make_app(seen), http=RelayHttpProtocol).running() as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(sock, (server.host, server.port))
            await loop.sock_sendall(sock, b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
            for _ in range(100):
                if len(seen.get("GET /flood", [])) == 3:
                    break
                await asyncio.sleep(0.05)
            assert seen["GET /flood"] == [False, True, True]  # declined, with bytes buffered
            # Now read everything: the ASGI bodies follow the direct chunks once drained.
            received = bytearray()
            while not received.endswith(b"0\r\n\r\n"):
                data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), timeout=10)
                assert data
                received += data
        finally:
            sock.close()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    decoded, rest = bytearray(), body
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        decoded += rest[:size]
        assert rest[size : size + 2] == b"\r\n"
        rest = rest[size + 2 :]
    written = int(decoded[len(decoded.rstrip(b"0123456789")) :])
    assert 0 < written < 256
    assert decoded == BIG * written + b"%d" % written
