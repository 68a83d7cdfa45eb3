"""SSE: Last-Event-ID resume, heartbeats, live delivery."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest

from relay_devtools.testing import UvicornServer
from relay_devtools.testing.gateway import SseReader, publish
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
