"""5,000 topics with one subscriber each on one gateway, over a bounded number of Valkey
connections: the reader pool multiplexes them instead of opening one per topic."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack

import msgspec
import pytest
from glide import Batch

from relay_devtools.testing import UvicornServer
from relay_devtools.testing.gateway import RETAIN, WsClient, ws_client
from relaycore.streams import add_publish, ensure_functions
from relaycore.valkey import ValkeyClient

Gateway = Callable[..., AbstractAsyncContextManager[UvicornServer]]
TOPICS = 5000
PER_CONNECTION = 100  # RELAY_MAX_SUBSCRIPTIONS default
READERS = 4


async def gateway_connections(client: ValkeyClient) -> int:
    listing = await client.custom_command(["CLIENT", "LIST"])
    text = listing.decode() if isinstance(listing, bytes) else str(listing)
    return sum(1 for line in text.splitlines() if " name=relay-gateway" in line)


@pytest.mark.slow
async def test_five_thousand_topics_on_one_gateway(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    await ensure_functions(valkey_client)
    names = [f"{topic}.{n}" for n in range(TOPICS)]
    async with gateway(reader_pool_size=READERS) as server, AsyncExitStack() as stack:
        clients: list[WsClient] = []
        for _ in range(0, TOPICS, PER_CONNECTION):
            ws = await stack.enter_async_context(ws_client(server))
            clients.append(ws)

        async def subscribe_all(ws: WsClient, chunk: list[str]) -> None:
            for req, name in enumerate(chunk):
                await ws.send(op="subscribe", topic=name, req=req)
            for _ in chunk:
                await ws.expect("subscribed", wait=60)

        chunks = [names[i : i + PER_CONNECTION] for i in range(0, TOPICS, PER_CONNECTION)]
        await asyncio.gather(
            *(subscribe_all(ws, chunk) for ws, chunk in zip(clients, chunks, strict=True))
        )
        await asyncio.sleep(0.3)  # the last subscriptions join their readers' next XREAD

        for start in range(0, TOPICS, 500):
            batch = Batch(is_atomic=False)
            for name in names[start : start + 500]:
                add_publish(batch, name, msgspec.json.encode(name), None, None, RETAIN)
            await valkey_client.exec(batch, raise_on_error=True)

        async def receive_all(ws: WsClient, chunk: list[str]) -> None:
            got = await ws.messages(len(chunk), wait=60)
            assert sorted(m["payload"] for m in got) == sorted(chunk)
            assert all(m["topic"] == m["payload"] for m in got)

        await asyncio.gather(
            *(receive_all(ws, chunk) for ws, chunk in zip(clients, chunks, strict=True))
        )
        # One client for non-blocking commands plus the fixed reader pool, whatever the topics.
        assert READERS <= await gateway_connections(valkey_client) <= READERS + 1
