"""Valkey killed and restarted mid-stream: connections stay, nothing is lost, no gap."""

from __future__ import annotations

import asyncio
import shutil

import httpx
from glide import GlideError

from relay_devtools.testing import ValkeyProcess
from relay_devtools.testing.gateway import (
    SseReader,
    gateway_settings,
    publish,
    run_gateway,
    ws_client,
)
from relaycore.valkey import ValkeyClient, ValkeyDsn, create_client


async def publish_retrying(client: ValkeyClient, topic: str, payloads: list[int]) -> list[str]:
    for _ in range(100):
        try:
            return await publish(client, topic, payloads)
        except GlideError:
            await asyncio.sleep(0.1)
    raise AssertionError("Valkey did not come back")


async def ready_status(http: httpx.AsyncClient) -> int:
    return (await http.get("/ready")).status_code


async def test_subscribers_get_everything_after_valkey_restarts(
    valkey_process: ValkeyProcess, topic: str
) -> None:
    client = await create_client(
        ValkeyDsn.from_dsn(valkey_process.url), name="relay-tests", lazy=False
    )
    settings = gateway_settings(valkey_process.url, valkey_timeout=0.5)
    try:
        async with (
            run_gateway(settings) as server,
            ws_client(server) as ws,
            httpx.AsyncClient(base_url=server.url, timeout=20) as http,
            http.stream("GET", "/api/v1/sse", params={"topic": topic}) as stream,
        ):
            sse = SseReader(stream)
            await ws.subscribe(topic)
            before = await publish(client, topic, list(range(10)))
            assert [m["id"] for m in await ws.messages(10)] == before
            assert [m["id"] for m in await sse.messages(10)] == before
            assert await ready_status(http) == 200
            await asyncio.sleep(1.2)  # appendfsync everysec: let the AOF hold what was published

            valkey_process.stop()
            for _ in range(50):
                if await ready_status(http) == 503:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("/ready stayed 200 with Valkey down")
            await asyncio.sleep(1.0)  # readers retry with backoff meanwhile
            valkey_process.start()

            after = await publish_retrying(client, topic, list(range(10, 30)))
            got = await ws.messages(20, wait=20)
            assert [m["id"] for m in got] == after
            assert [m["id"] for m in await sse.messages(20, wait=20)] == after
            for _ in range(50):
                if await ready_status(http) == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("/ready did not recover")
    finally:
        await client.close()


async def test_valkey_restarted_without_its_data_is_a_reset_gap(
    valkey_process: ValkeyProcess, topic: str
) -> None:
    client = await create_client(
        ValkeyDsn.from_dsn(valkey_process.url), name="relay-tests", lazy=False
    )
    settings = gateway_settings(valkey_process.url, valkey_timeout=0.5)
    try:
        async with run_gateway(settings) as server, ws_client(server) as ws:
            await ws.subscribe(topic)
            await publish(client, topic, list(range(3)))
            await ws.messages(3)
            valkey_process.stop()
            shutil.rmtree(valkey_process.data_dir / "appendonlydir")
            await asyncio.sleep(0.5)
            valkey_process.start()
            after = await publish_retrying(client, topic, [10, 11])
            gap = await ws.expect("gap", wait=20)
            assert (gap["reason"], gap["from"]) == ("reset", after[0])
            assert [m["id"] for m in await ws.messages(2)] == after
    finally:
        await client.close()
