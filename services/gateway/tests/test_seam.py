"""Ordering, no duplicates, no gaps while a publisher writes and subscribers keep joining.

Subscribers join at staggered moments on all three transports, with and without ``since``, so
the history→live seam is crossed while messages arrive. A small hot window makes older cursors
go to Valkey, so both history sources meet the live feed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest

from relay_devtools.testing import UvicornServer
from relay_devtools.testing.gateway import SseReader, publish, ws_client
from relaycore.valkey import ValkeyClient

# Every case runs on the single node and on the three-primary cluster.
pytestmark = pytest.mark.backends

Gateway = Callable[..., AbstractAsyncContextManager[UvicornServer]]
BATCHES = 80
PER_BATCH = 4


async def test_seam_under_continuous_publishing(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    published: list[str] = []

    async def publisher() -> None:
        for batch in range(BATCHES):
            payloads = [{"n": batch * PER_BATCH + k} for k in range(PER_BATCH)]
            published.extend(await publish(valkey_client, topic, payloads))
            await asyncio.sleep(0.01)

    last_n = BATCHES * PER_BATCH - 1
    # A consumer is done when it saw the final payload (its id may not be known to it yet).
    seen_last: set[int] = set()

    def done(received: list[str]) -> bool:
        return id(received) in seen_last

    async def ws_consumer(server: UvicornServer, since: str | None) -> list[str]:
        received: list[str] = []
        async with ws_client(server) as ws:
            subscribed = await ws.subscribe(topic, since)
            if since is not None:
                assert subscribed["recovered"] is True
            while not done(received):
                message = (await ws.messages(1))[0]
                received.append(message["id"])
                if message["payload"]["n"] == last_n:
                    seen_last.add(id(received))
        return received

    async def poll_consumer(server: UvicornServer, since: str | None) -> list[str]:
        received: list[str] = []
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            cursor = since
            while not done(received):
                params = {"topic": topic, "timeout": "5", "limit": "7"}
                if cursor is not None:
                    params["since"] = cursor
                body = (await http.get("/api/v1/poll", params=params)).json()
                assert body["recovered"] is True
                received.extend(m["id"] for m in body["messages"])
                if any(m["payload"]["n"] == last_n for m in body["messages"]):
                    seen_last.add(id(received))
                cursor = body["next"]
        return received

    async def sse_consumer(server: UvicornServer, since: str | None) -> list[str]:
        received: list[str] = []
        params = {"topic": topic} if since is None else {"topic": topic, "since": since}
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=30) as http,
            http.stream("GET", "/api/v1/sse", params=params) as response,
        ):
            reader = SseReader(response)
            while not done(received):
                event = await reader.event()
                assert event["event"] == "message", event
                received.append(event["id"])
                if event["data"]["payload"]["n"] == last_n:
                    seen_last.add(id(received))
        return received

    consumers = {"ws": ws_consumer, "poll": poll_consumer, "sse": sse_consumer}
    async with gateway(hot_max_messages=40) as server, asyncio.TaskGroup() as group:
        group.create_task(publisher())
        joined: list[tuple[str | None, asyncio.Task[list[str]]]] = []
        for wave in range(4):
            await asyncio.sleep(0.25)
            for name, consumer in consumers.items():
                since = published[len(published) // (wave + 2)] if published else None
                for cursor in (None, since):
                    task = group.create_task(asyncio.wait_for(consumer(server, cursor), 40))
                    task.set_name(f"{name}-{wave}-{cursor}")
                    joined.append((cursor, task))
    assert len(published) == BATCHES * PER_BATCH
    for cursor, task in joined:
        received = task.result()
        assert len(set(received)) == len(received), f"{task.get_name()}: duplicates"
        if cursor is not None:
            start = published.index(cursor) + 1
        else:
            assert received, task.get_name()
            start = published.index(received[0])
        assert received == published[start:], f"{task.get_name()}: not the exact sequence"
