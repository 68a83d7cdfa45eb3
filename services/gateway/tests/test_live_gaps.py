"""Live gaps on WebSocket and SSE: a stream trimmed past a subscriber's position (``trimmed``)
and a stream deleted and re-created while subscribed (``reset``) — never a silent jump."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import httpx
import pytest

from relay_devtools.testing import UvicornServer
from relay_devtools.testing.gateway import (
    SseReader,
    id_key,
    publish,
    publish_trimmed,
    ws_client,
)
from relaycore.keys import stream_key
from relaycore.valkey import ValkeyClient

Gateway = Callable[..., AbstractAsyncContextManager[UvicornServer]]


class Consumer(Protocol):
    async def next(self) -> dict[str, Any]: ...


class WsConsumer:
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def next(self) -> dict[str, Any]:
        event = await self.ws.event()
        if event["op"] == "message":
            return {"kind": "message", "id": event["id"]}
        assert event["op"] == "gap", event
        return {"kind": "gap", "reason": event["reason"], "from": event["from"]}


class SseConsumer:
    def __init__(self, reader: SseReader) -> None:
        self.reader = reader

    async def next(self) -> dict[str, Any]:
        event = await self.reader.event()
        data = event["data"]
        if event["event"] == "message":
            assert event["id"] == data["id"]
            return {"kind": "message", "id": data["id"]}
        assert event["event"] == "gap", event
        return {"kind": "gap", "reason": data["reason"], "from": data["from"]}


@contextlib.asynccontextmanager
async def consumer(kind: str, server: UvicornServer, topic: str) -> AsyncIterator[Consumer]:
    if kind == "ws":
        async with ws_client(server) as ws:
            await ws.subscribe(topic)
            yield WsConsumer(ws)
        return
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
        http.stream("GET", "/api/v1/sse", params={"topic": topic}) as stream,
    ):
        yield SseConsumer(SseReader(stream))


@pytest.mark.parametrize("kind", ["ws", "sse"])
async def test_trimmed_past_a_live_subscriber_is_a_trimmed_gap(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str, kind: str
) -> None:
    async with gateway() as server, consumer(kind, server, topic) as sub:
        await asyncio.sleep(0.3)  # the reader has the topic
        before = await publish(valkey_client, topic, [0, 1])
        assert [await sub.next() for _ in before] == [{"kind": "message", "id": i} for i in before]
        # Three published and two trimmed in one transaction: the reader only sees the last,
        # whose previous id it never delivered.
        ids = await publish_trimmed(valkey_client, topic, [2, 3, 4], keep=1)
        assert await sub.next() == {"kind": "gap", "reason": "trimmed", "from": ids[-1]}
        assert await sub.next() == {"kind": "message", "id": ids[-1]}
        more = await publish(valkey_client, topic, [5])
        assert await sub.next() == {"kind": "message", "id": more[0]}


@pytest.mark.parametrize("kind", ["ws", "sse"])
async def test_deleted_and_recreated_stream_is_a_reset_gap(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str, kind: str
) -> None:
    async with gateway() as server, consumer(kind, server, topic) as sub:
        await asyncio.sleep(0.3)
        first = await publish(valkey_client, topic, [1, 2])
        assert [await sub.next() for _ in first] == [{"kind": "message", "id": i} for i in first]
        await valkey_client.delete([stream_key(topic)])
        await asyncio.sleep(0.005)  # new ids must pass the old ones for XREAD to see them
        again = await publish(valkey_client, topic, [3, 4])
        assert id_key(again[0]) > id_key(first[-1])
        assert await sub.next() == {"kind": "gap", "reason": "reset", "from": again[0]}
        assert [await sub.next() for _ in again] == [{"kind": "message", "id": i} for i in again]
