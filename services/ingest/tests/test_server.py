"""Ingest behind a real uvicorn server (httptools, as in production) on a free port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx

from relay_devtools.testing import UvicornServer
from relay_ingest.app import create_app
from relaycore.settings import Settings
from relaycore.uvicorn_ext.coalescing import CoalescingHttpToolsProtocol

MESSAGES = "/api/v1/messages"


async def test_publish_through_uvicorn(valkey_url: str, topic: str) -> None:
    app = create_app(Settings(valkey_url=valkey_url))
    async with (
        UvicornServer(app, http="httptools", server_header=False).running() as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        responses = await asyncio.gather(
            *(client.post(MESSAGES, json={"topic": topic, "payload": n}) for n in range(50))
        )
        assert [r.status_code for r in responses] == [201] * 50
        assert "server" not in responses[0].headers
        assert (await client.get("/ready")).status_code == 200
        info = (await client.get(f"/api/v1/topics/{topic}")).json()
        assert info["length"] == 50


async def test_chunked_body_over_the_limit_is_413_while_streaming(
    valkey_url: str, topic: str
) -> None:
    app = create_app(Settings(valkey_url=valkey_url, max_body_bytes=50_000, max_message_bytes=1000))
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"topic": "%s", "payload": "' % topic.encode()
        for _ in range(100):
            sent += 10_000
            yield b"x" * 10_000
            await asyncio.sleep(0)
        yield b'"}'

    async with (
        UvicornServer(app, http="httptools").running() as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        response = await client.post(
            MESSAGES, content=body(), headers={"content-type": "application/json"}
        )
        assert "content-length" not in response.request.headers  # really chunked
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "too_large"
        big = await client.post(
            MESSAGES, content=b"x" * 60_000, headers={"content-type": "application/json"}
        )
        assert big.status_code == 413

        # A declared length over the limit is refused before any of the body is sent.
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            b"POST /api/v1/messages HTTP/1.1\r\nhost: ingest\r\n"
            b"content-type: application/json\r\ncontent-length: 999999\r\n\r\n"
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
        writer.close()
        await writer.wait_closed()
        assert status_line.startswith(b"HTTP/1.1 413")


async def test_publish_answer_arrives_as_one_segment(valkey_url: str, topic: str) -> None:
    app = create_app(Settings(valkey_url=valkey_url))
    body = b'{"topic": "%s", "payload": 1}' % topic.encode()
    request = (
        b"POST /api/v1/messages HTTP/1.1\r\nhost: ingest\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    async with UvicornServer(app, http=CoalescingHttpToolsProtocol).running() as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            for _ in range(3):  # keep-alive: the connection serves request after request
                writer.write(request)
                # One read returns the whole answer: status line, headers AND body.
                first = await asyncio.wait_for(reader.read(65536), timeout=5)
                head, _, rest = first.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 201")
                assert rest.startswith(b'{"id":"')
                assert rest.endswith(b"}")
        finally:
            writer.close()
            await writer.wait_closed()
