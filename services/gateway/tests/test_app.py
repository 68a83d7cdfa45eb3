"""Operations endpoints: /health, /ready, /metrics, /openapi.json, /docs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx

from relay_devtools.testing import UvicornServer, free_port
from relay_devtools.testing.gateway import gateway_settings, publish, run_gateway, ws_client
from relaycore.valkey import ValkeyClient

Gateway = Callable[..., AbstractAsyncContextManager[UvicornServer]]


async def test_health_ready_openapi_docs(gateway: Gateway) -> None:
    async with gateway() as server, httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        assert (await http.get("/ready")).status_code == 200
        document = (await http.get("/openapi.json")).json()
        assert {"/api/v1/poll", "/api/v1/sse", "/api/v1/ws"} <= set(document["paths"])
        assert "PollResponse" in document["components"]["schemas"]
        assert "swagger-ui" in (await http.get("/docs")).text


async def test_health_without_valkey_and_ready_503() -> None:
    settings = gateway_settings(f"valkey://127.0.0.1:{free_port()}", valkey_timeout=0.3)
    async with run_gateway(settings) as server, httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/ready")).status_code == 503
        response = await http.get("/api/v1/poll", params={"topic": "t", "timeout": "1"})
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert response.json()["error"]["code"] == "unavailable"


async def test_metrics_count_deliveries_and_lag(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    async with gateway() as server, ws_client(server) as ws:
        await ws.subscribe(topic)
        await publish(valkey_client, topic, [1, 2, 3])
        await ws.messages(3)
        async with httpx.AsyncClient(base_url=server.url) as http:
            text = (await http.get("/metrics")).text
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values['relay_gateway_connections{transport="ws"}'] == 1
    assert values['relay_gateway_deliveries_total{transport="ws"}'] == 3
    assert values['relay_delivery_lag_seconds_count{transport="ws"}'] >= 1
    assert values["relay_gateway_topics"] == 1
    for name in (
        "relay_hot_tier_hits_total",
        "relay_hot_tier_misses_total",
        'relay_slow_consumer_disconnects_total{transport="ws"}',
    ):
        assert name in values
    assert all(key.startswith(("relay_", "python_", "process_")) for key in values)


async def test_topic_is_dropped_after_the_linger(gateway: Gateway, topic: str) -> None:
    async with gateway(topic_linger=0.2) as server, ws_client(server) as ws:
        await ws.subscribe(topic)
        async with httpx.AsyncClient(base_url=server.url) as http:

            async def active_topics() -> float:
                text = (await http.get("/metrics")).text
                line = next(x for x in text.splitlines() if x.startswith("relay_gateway_topics "))
                return float(line.split()[1])

            assert await active_topics() == 1
            await ws.send(op="unsubscribe", topic=topic)
            await ws.expect("unsubscribed")
            for _ in range(100):
                if await active_topics() == 0:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the idle topic was never dropped")
