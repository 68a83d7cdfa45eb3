"""Two ingest and two gateway processes on one Valkey, as a node runs them: producers spread
over both ingests, consumers (WebSocket, SSE, long-poll) over both gateways, and every consumer
gets every message of its topics exactly once, in stream order."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from typing import Any

import httpx
import pytest
import websockets

from relay_devtools.testing import Deployment
from relay_devtools.testing.gateway import WsClient
from relaycore.ids import StreamId
from relaycore.streams import read_after
from relaycore.valkey import ValkeyClient

PRODUCERS = 4
PER_PRODUCER = 39  # a multiple of the 3 topics: every topic gets the same count
BATCH = 30
WS_PER_GATEWAY = 3
WAIT = 30.0


class _Ready:
    """Counts consumers that are subscribed, so producers start after all of them."""

    def __init__(self) -> None:
        self.count = 0
        self.changed = asyncio.Event()

    def set_one(self) -> None:
        self.count += 1
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        while self.count < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), WAIT)


async def _ws_consumer(
    ready: _Ready, url: str, topics: list[str], total: int
) -> list[dict[str, Any]]:
    async with websockets.connect(f"{url}/api/v1/ws", compression=None) as connection:
        client = WsClient(connection)
        for req, topic in enumerate(topics, start=1):
            await client.subscribe(topic, req=req)
        ready.set_one()
        return await client.messages(total, wait=WAIT)


async def _sse_consumer(
    ready: _Ready, http: httpx.AsyncClient, topic: str, total: int
) -> list[dict[str, Any]]:
    received: list[dict[str, Any]] = []
    async with http.stream("GET", "/api/v1/sse", params={"topic": topic}) as stream:
        assert stream.status_code == 200
        ready.set_one()
        async for line in stream.aiter_lines():
            if line.startswith("data:"):
                received.append(json.loads(line[5:]))
                if len(received) == total:
                    return received
    raise AssertionError("the SSE stream ended early")


async def _poll_consumer(
    ready: _Ready, http: httpx.AsyncClient, topic: str, total: int
) -> list[dict[str, Any]]:
    received: list[dict[str, Any]] = []
    # A history read first: its cursor is the seam; nothing is published yet.
    first = (await http.get("/api/v1/poll", params={"topic": topic, "timeout": "0"})).json()
    cursor = first["next"] or "0"
    ready.set_one()
    while len(received) < total:
        params = {"topic": topic, "since": cursor, "timeout": "10"}
        answer = (await http.get("/api/v1/poll", params=params)).json()
        received += answer["messages"]
        cursor = answer["next"]
    return received


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_two_ingests_two_gateways_everyone_gets_everything_in_order(
    valkey_url: str, valkey_client: ValkeyClient, topic: str
) -> None:
    ready = _Ready()
    topics = [f"{topic}.{n}" for n in range(3)]
    per_topic = (PRODUCERS * PER_PRODUCER + 2 * BATCH) // len(topics)
    deployment = Deployment(valkey_url, ingests=2, gateways=2)
    async with deployment, contextlib.AsyncExitStack() as stack:
        ingests = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=s.url, timeout=WAIT))
            for s in deployment.ingest
        ]
        gateways = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=s.url, timeout=WAIT))
            for s in deployment.gateway
        ]
        consumers: list[asyncio.Task[list[dict[str, Any]]]] = []
        for service, http in zip(deployment.gateway, gateways, strict=True):
            consumers += [
                asyncio.create_task(
                    _ws_consumer(ready, service.ws_url, topics, per_topic * len(topics))
                )
                for _ in range(WS_PER_GATEWAY)
            ]
            consumers.append(asyncio.create_task(_sse_consumer(ready, http, topics[0], per_topic)))
            consumers.append(asyncio.create_task(_poll_consumer(ready, http, topics[1], per_topic)))
        await ready.wait_for(len(consumers))

        async def producer(number: int) -> list[tuple[str, str]]:
            ingest = ingests[number % 2]  # producers alternate between the two ingests
            sent = []
            for n in range(PER_PRODUCER):
                name = topics[(number + n) % len(topics)]
                body = {"topic": name, "payload": {"producer": number, "n": n}}
                response = await ingest.post("/api/v1/messages", json=body)
                assert response.status_code == 201, response.text
                sent.append((name, response.json()["id"]))
            return sent

        async def batch_producer(number: int) -> list[tuple[str, str]]:
            messages = [
                {"topic": topics[n % len(topics)], "payload": {"batch": number, "n": n}}
                for n in range(BATCH)
            ]
            response = await ingests[number].post(
                "/api/v1/messages/batch", json={"messages": messages}
            )
            assert response.status_code == 201, response.text
            return [(r["topic"], r["id"]) for r in response.json()["results"]]

        sent_lists = await asyncio.gather(
            *(producer(n) for n in range(PRODUCERS)), batch_producer(0), batch_producer(1)
        )
        received = await asyncio.wait_for(asyncio.gather(*consumers), WAIT * 2)

    # The streams' order is the truth every consumer must reproduce.
    stored = {
        name: [str(e.id) for e in await read_after(valkey_client, name, StreamId(0, 0), 10_000)]
        for name in topics
    }
    acknowledged: dict[str, set[str]] = defaultdict(set)
    for sent in sent_lists:
        for name, message_id in sent:
            acknowledged[name].add(message_id)
        # One producer's messages are in the stream in the order it sent them.
        for name in topics:
            ids = [message_id for topic_name, message_id in sent if topic_name == name]
            positions = [stored[name].index(message_id) for message_id in ids]
            assert positions == sorted(positions)
    for name in topics:
        assert set(stored[name]) == acknowledged[name]
        assert len(stored[name]) == per_topic
    for messages in received:
        by_topic: dict[str, list[str]] = defaultdict(list)
        for message in messages:
            by_topic[message["topic"]].append(message["id"])
        for name, ids in by_topic.items():
            assert ids == stored[name]  # everything, once, in stream order
