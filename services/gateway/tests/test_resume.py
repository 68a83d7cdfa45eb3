"""The resume table (contract §6) on all three transports, against a real Valkey.

Each case publishes through the ingest write path, then resumes with a cursor and checks both
the ``recovered`` answer (or ``gap`` event, for SSE) and exactly which messages follow.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from relay_devtools.testing import UvicornServer
from relay_devtools.testing.gateway import SseReader, id_key, publish, ws_client
from relaycore.ids import ZERO
from relaycore.streams import StreamRetention, read_after
from relaycore.valkey import ValkeyClient

# Every case runs on the single node and on the three-primary cluster.
pytestmark = pytest.mark.backends

Gateway = Callable[..., AbstractAsyncContextManager[UvicornServer]]
TRANSPORTS = ["ws", "poll", "sse"]


@dataclass
class Resumed:
    recovered: bool
    ids: list[str]
    gap: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


async def resume(
    server: UvicornServer, transport: str, topic: str, since: str, count: int
) -> Resumed:
    """Resume ``topic`` after ``since`` and read ``count`` messages."""
    if transport == "ws":
        async with ws_client(server) as ws:
            subscribed = await ws.subscribe(topic, since)
            got = await ws.messages(count)
            return Resumed(subscribed["recovered"], [m["id"] for m in got], extra=subscribed)
    if transport == "poll":
        async with httpx.AsyncClient(base_url=server.url) as http:
            response = await http.get(
                "/api/v1/poll",
                params={"topic": topic, "since": since, "timeout": "0", "limit": "1000"},
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert len(body["messages"]) == count
            return Resumed(body["recovered"], [m["id"] for m in body["messages"]], extra=body)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        http.stream("GET", "/api/v1/sse", params={"topic": topic, "since": since}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(response)
        gap = None
        ids: list[str] = []
        while len(ids) < count:
            event = await reader.event()
            if event["event"] == "gap":
                assert gap is None
                gap = event["data"]
                continue
            assert event["event"] == "message"
            assert event["id"] == event["data"]["id"]
            ids.append(event["id"])
        return Resumed(gap is None, ids, gap)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_empty_stream(
    gateway: Gateway, transport: str, topic: str, valkey_client: ValkeyClient
) -> None:
    async with gateway() as server:
        resumed = await resume(server, transport, topic, "0-0", 0)
        assert resumed.recovered
        assert resumed.ids == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_since_newest(
    gateway: Gateway, transport: str, topic: str, valkey_client: ValkeyClient
) -> None:
    ids = await publish(valkey_client, topic, list(range(5)))
    async with gateway() as server:
        resumed = await resume(server, transport, topic, ids[-1], 0)
        assert resumed.recovered
        assert resumed.ids == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_since_inside_hot_window(
    gateway: Gateway, transport: str, topic: str, valkey_client: ValkeyClient
) -> None:
    async with gateway() as server, ws_client(server) as warm:
        # A live subscriber makes the gateway read the topic; what it reads fills the window.
        await warm.subscribe(topic)
        ids = await publish(valkey_client, topic, list(range(20)))
        await warm.messages(20)
        hits = await metric(server, "relay_hot_tier_hits_total")
        resumed = await resume(server, transport, topic, ids[4], 15)
        assert resumed.recovered
        assert resumed.ids == ids[5:]
        assert await metric(server, "relay_hot_tier_hits_total") == hits + 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_since_older_than_hot_window_but_retained(
    gateway: Gateway, transport: str, topic: str, valkey_client: ValkeyClient
) -> None:
    async with gateway(hot_max_messages=5) as server, ws_client(server) as warm:
        await warm.subscribe(topic)
        ids = await publish(valkey_client, topic, list(range(30)))
        await warm.messages(30)
        misses = await metric(server, "relay_hot_tier_misses_total")
        resumed = await resume(server, transport, topic, ids[2], 27)
        assert resumed.recovered
        assert resumed.ids == ids[3:]
        assert await metric(server, "relay_hot_tier_misses_total") == misses + 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_since_trimmed_away(
    gateway: Gateway, transport: str, topic: str, valkey_client: ValkeyClient
) -> None:
    tiny = StreamRetention(maxlen=1, max_age_ms=0, idempotency_ttl_ms=1000)
    # Approximate MAXLEN trims whole 100-entry nodes: write enough that some go.
    ids = await publish(valkey_client, topic, list(range(350)), retention=tiny)
    oldest = str((await read_after(valkey_client, topic, ZERO, 1))[0].id)
    assert id_key(oldest) > id_key(ids[5])
    expected = ids[ids.index(oldest) :]
    async with gateway() as server:
        resumed = await resume(server, transport, topic, ids[5], len(expected))
        assert not resumed.recovered
        assert resumed.ids == expected
        if transport == "sse":
            assert resumed.gap == {"topic": topic, "reason": "trimmed", "from": oldest}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_since_ahead_of_stream_is_a_reset(
    gateway: Gateway, transport: str, topic: str, valkey_client: ValkeyClient
) -> None:
    ids = await publish(valkey_client, topic, list(range(4)))
    ahead = f"{id_key(ids[-1])[0] + 10_000}-0"
    async with gateway() as server:
        resumed = await resume(server, transport, topic, ahead, 4)
        assert not resumed.recovered
        assert resumed.ids == ids  # delivery restarts from the oldest retained message
        if transport == "sse":
            assert resumed.gap == {"topic": topic, "reason": "reset", "from": ids[0]}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_timestamp_cursor_rewinds_by_time_and_is_never_a_reset(
    gateway: Gateway, transport: str, topic: str, valkey_client: ValkeyClient
) -> None:
    ids = await publish(valkey_client, topic, list(range(3)))
    async with gateway() as server:
        later = await resume(server, transport, topic, str(id_key(ids[-1])[0] + 60_000), 0)
        assert later.recovered
        assert later.ids == []
    first_ms = id_key(ids[0])[0]
    async with gateway() as server:
        everything = await resume(server, transport, topic, str(first_ms), 3)
        assert everything.recovered
        assert everything.ids == ids


async def metric(server: UvicornServer, name: str) -> float:
    async with httpx.AsyncClient(base_url=server.url) as http:
        text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")
