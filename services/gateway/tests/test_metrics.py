"""Contract §9 metrics move when their event happens: connections by transport, the end-to-end
lag histogram, Valkey errors and the Valkey health gauges the alerts use.

(Hot-tier hits/misses: test_resume.py; slow-consumer disconnects: test_slow_consumer.py;
deliveries: test_app.py and test_httpwrites.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx

from relay_devtools.testing import UvicornServer, ValkeyProcess
from relay_devtools.testing.gateway import (
    SseReader,
    gateway_settings,
    publish,
    run_gateway,
    ws_client,
)
from relaycore.valkey import ValkeyClient

Gateway = Callable[..., AbstractAsyncContextManager[UvicornServer]]


async def scrape(http: httpx.AsyncClient) -> dict[str, float]:
    text = (await http.get("/metrics")).text
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def connections(values: dict[str, float]) -> dict[str, float]:
    return {
        t: values[f'relay_gateway_connections{{transport="{t}"}}'] for t in ("ws", "sse", "poll")
    }


async def test_connections_by_transport_open_and_close(gateway: Gateway, topic: str) -> None:
    async with gateway() as server, httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        assert connections(await scrape(http)) == {"ws": 0, "sse": 0, "poll": 0}
        async with (
            ws_client(server) as ws,
            httpx.AsyncClient(base_url=server.url, timeout=20) as other,
            other.stream("GET", "/api/v1/sse", params={"topic": topic}) as stream,
        ):
            await ws.subscribe(topic)
            assert stream.status_code == 200
            poll = asyncio.create_task(
                other.get("/api/v1/poll", params={"topic": topic, "timeout": "2"})
            )
            try:
                for _ in range(100):
                    if connections(await scrape(http)) == {"ws": 1, "sse": 1, "poll": 1}:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(connections(await scrape(http)))
            finally:
                poll.cancel()
                await asyncio.gather(poll, return_exceptions=True)
        for _ in range(100):
            if connections(await scrape(http)) == {"ws": 0, "sse": 0, "poll": 0}:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(connections(await scrape(http)))


async def test_lag_histogram_observes_each_transport(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    async with (
        gateway() as server,
        httpx.AsyncClient(base_url=server.url, timeout=20) as http,
        ws_client(server) as ws,
        http.stream("GET", "/api/v1/sse", params={"topic": topic}) as stream,
    ):
        sse = SseReader(stream)
        await ws.subscribe(topic)
        before = await scrape(http)
        await publish(valkey_client, topic, [1])
        await ws.messages(1)
        await sse.messages(1)
        after = await scrape(http)
    for transport in ("ws", "sse"):
        count = f'relay_delivery_lag_seconds_count{{transport="{transport}"}}'
        total = f'relay_delivery_lag_seconds_sum{{transport="{transport}"}}'
        assert after[count] == before.get(count, 0) + 1
        # Publish → send on one machine: positive and well under the 10 s top bucket.
        assert 0 <= after[total] - before.get(total, 0) < 10


async def test_valkey_errors_and_health_gauges_follow_an_outage(
    valkey_process: ValkeyProcess, topic: str
) -> None:
    settings = gateway_settings(valkey_process.url, valkey_timeout=0.5)
    async with (
        run_gateway(settings) as server,
        httpx.AsyncClient(base_url=server.url, timeout=20) as http,
        ws_client(server) as ws,
    ):
        await ws.subscribe(topic)
        healthy = await scrape(http)
        assert healthy['relay_valkey_up{service="gateway"}'] == 1
        assert healthy['relay_valkey_loading{service="gateway"}'] == 0
        assert healthy['relay_valkey_persistence_ok{service="gateway"}'] == 1
        assert healthy['relay_valkey_aof_enabled{service="gateway"}'] == 1
        assert healthy['relay_ready{service="gateway"}'] == 1
        valkey_process.stop()
        await asyncio.sleep(1.0)  # the blocked XREAD fails; readers retry with backoff
        down = await scrape(http)
        assert down['relay_valkey_up{service="gateway"}'] == 0
        assert down['relay_ready{service="gateway"}'] == 0
        errors = 'relay_valkey_errors_total{operation="%s",service="gateway"}'
        assert down[errors % "xread"] >= 1
        assert down[errors % "info"] >= 1
        valkey_process.start()
        for _ in range(100):
            if (await scrape(http))['relay_valkey_up{service="gateway"}'] == 1:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("relay_valkey_up never returned to 1")
