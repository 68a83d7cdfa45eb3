"""SSE: Last-Event-ID resume, heartbeats, live delivery."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest

from relay_devtools.testing import UvicornServer
from relay_devtools.testing.gateway import SseReader, StalledClient, publish
from relaycore.valkey import ValkeyClient

# Every case runs on the single node and on the three-primary cluster.
pytestmark = pytest.mark.backends

Gateway = Callable[..., AbstractAsyncContextManager[UvicornServer]]


async def test_last_event_id_overrides_since(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    ids = await publish(valkey_client, topic, list(range(6)))
    async with (
        gateway() as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        http.stream(
            "GET",
            "/api/v1/sse",
            params={"topic": topic, "since": ids[0]},
            headers={"Last-Event-ID": ids[3]},
        ) as response,
    ):
        assert response.headers["cache-control"] == "no-cache"
        got = await SseReader(response).messages(2)
        assert [m["id"] for m in got] == ids[4:]


async def test_heartbeat_comments_and_live_messages(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    async with (
        gateway(sse_heartbeat=0.2) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        http.stream("GET", "/api/v1/sse", params={"topic": topic}) as response,
    ):
        reader = SseReader(response)
        lines = response.aiter_lines()
        assert await anext(lines) == ": connected"
        assert await anext(lines) == ""
        assert await anext(lines) == ": keepalive"
        ids = await publish(valkey_client, topic, [{"a": 1}])
        reader.lines = lines
        event = await reader.event()
        assert event == {
            "id": ids[0],
            "event": "message",
            "data": {
                "topic": topic,
                "id": ids[0],
                "ts": int(ids[0].split("-")[0]),
                "payload": {"a": 1},
            },
        }


async def test_bad_last_event_id_is_422(gateway: Gateway, topic: str) -> None:
    async with gateway() as server, httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get(
            "/api/v1/sse", params={"topic": topic}, headers={"Last-Event-ID": "nope"}
        )
        assert response.status_code == 422


async def test_origin_not_allowed_is_403(gateway: Gateway, topic: str) -> None:
    async with (
        gateway(allowed_origins=("https://good.example",)) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        response = await http.get(
            "/api/v1/sse", params={"topic": topic}, headers={"Origin": "https://evil.example"}
        )
        assert response.status_code == 403


def dechunk(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body, decoded; every chunk must be framed exactly."""
    decoded = bytearray()
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(decoded)
        assert body[size : size + 2] == b"\r\n"
        decoded += body[:size]
        body = body[size + 2 :]


async def test_a_stream_that_falls_behind_and_catches_up_gets_every_message_in_order(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    """Live events go straight to the socket while it keeps up and queue while it is full: a
    reader whose buffers fill (a tiny receive buffer, not reading) and that then reads again
    gets every message once, in order, within a well-framed body."""
    count, payload = 800, "x" * 8_000  # 6.4 MB: more than the socket buffers hold
    async with gateway(max_queue_bytes=16 * 1024 * 1024) as server:
        client = StalledClient(server.host, server.port)
        try:
            await asyncio.to_thread(client.sse, f"/api/v1/sse?topic={topic}")
            await asyncio.sleep(0.3)  # the stream reaches the hub
            ids: list[str] = []
            for _ in range(0, count, 20):
                ids += await publish(valkey_client, topic, [payload] * 20)

            def read_events() -> bytes:
                received = bytearray()
                while received.count(b"\nevent: message\n") < count:
                    data = client.sock.recv(1 << 20)
                    assert data, "closed early"
                    received += data
                while not received.endswith(b"\r\n"):  # the end of the last chunk
                    received += client.sock.recv(1 << 20)
                return bytes(received)

            # The head was read by client.sse: what follows is the chunked body so far.
            body = dechunk(await asyncio.to_thread(read_events) + b"0\r\n\r\n")
        finally:
            client.close()
    assert body.startswith(b": connected\n\n")
    assert re.findall(rb"^id: (\S+)$", body, re.MULTILINE) == [i.encode() for i in ids]
