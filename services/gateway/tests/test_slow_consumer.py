"""A consumer that stops reading is cut with 4008; others keep receiving; memory stays bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest
import websockets

from relay_devtools.testing import UvicornServer
from relay_devtools.testing.gateway import (
    TCP_ESTABLISHED,
    StalledClient,
    publish,
    tcp_states,
    ws_client,
)
from relaycore.valkey import ValkeyClient

Gateway = Callable[..., AbstractAsyncContextManager[UvicornServer]]
PAYLOAD = "x" * 8_000
MESSAGES = 1600  # 12.8 MB: far more than the socket buffers and the 256 KiB queue hold


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def slow_consumer_count(server: UvicornServer) -> float:
    async with httpx.AsyncClient(base_url=server.url) as http:
        text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith('relay_slow_consumer_disconnects_total{transport="ws"}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("metric missing")


@pytest.mark.parametrize("relay_protocols", [True, False], ids=["relay-protocols", "uvicorn"])
async def test_slow_consumer_is_cut_and_others_keep_up(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str, relay_protocols: bool
) -> None:
    async with (
        gateway(
            max_queue_bytes=256 * 1024, ws_ping_interval=10.0, relay_protocols=relay_protocols
        ) as server,
        ws_client(server) as fast,
        # max_queue=1: the client library stops reading the socket once one frame is buffered.
        ws_client(server, max_queue=1, max_size=None) as slow,
    ):
        await fast.subscribe(topic)
        await slow.subscribe(topic)
        rss_before = rss_bytes()

        async def read_all() -> list[str]:
            return [m["id"] for m in await fast.messages(MESSAGES, wait=30)]

        reader = asyncio.create_task(read_all())
        ids: list[str] = []
        for _ in range(0, MESSAGES, 20):
            ids += await publish(valkey_client, topic, [PAYLOAD] * 20)
        assert await reader == ids  # the fast subscriber got everything, in order
        for _ in range(100):
            if await slow_consumer_count(server) == 1:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the slow consumer was not cut")
        assert rss_bytes() - rss_before < 64 * 1024 * 1024

        # Reading again, the slow client finds what got through, the error, then close 4008.
        events: list[dict[str, object]] = []

        async def read_until_closed() -> None:
            while True:
                events.append(await slow.event(wait=15))

        with pytest.raises(websockets.ConnectionClosed) as closed:
            await read_until_closed()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4008
        assert events[-1]["op"] == "error"
        assert events[-1]["code"] == "slow_consumer"
        delivered = [e["id"] for e in events if e["op"] == "message"]
        assert delivered == ids[: len(delivered)]
        assert len(delivered) < MESSAGES


async def wait_cut(server: UvicornServer, ports: list[int], within: float) -> float:
    """Seconds until no server-side socket of ``ports`` is ESTABLISHED (fails after ``within``)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        states = tcp_states(server.port)
        held = [port for port in ports if states.get(port) == TCP_ESTABLISHED]
        if not held:
            return loop.time() - start
        if loop.time() - start > within:
            raise AssertionError(f"{len(held)} of {len(ports)} sockets still ESTABLISHED")
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_stalled_websocket_and_sse_sockets_are_cut_and_memory_bounded(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    """Consumers that stop reading (tiny receive buffers, no pong): each server-side socket
    leaves ESTABLISHED soon after its queue passes the bound, while a reader gets everything."""
    async with (
        gateway(max_queue_bytes=256 * 1024, close_timeout=1.0, hot_max_bytes=4 * 1024 * 1024)
        as server,
        ws_client(server) as fast,
    ):  # fmt: skip
        await fast.subscribe(topic)
        rss_before = rss_bytes()
        stalled: list[StalledClient] = []
        for _ in range(6):
            client = StalledClient(server.host, server.port)
            await asyncio.to_thread(
                client.websocket, "/api/v1/ws", {"op": "subscribe", "topic": topic, "req": 1}
            )
            stalled.append(client)
        for _ in range(3):
            client = StalledClient(server.host, server.port)
            await asyncio.to_thread(client.sse, f"/api/v1/sse?topic={topic}")
            stalled.append(client)
        ports = [client.local_port for client in stalled]
        await asyncio.sleep(0.3)  # the subscriptions reach the hub
        states = tcp_states(server.port)
        assert all(states.get(port) == TCP_ESTABLISHED for port in ports)
        try:
            reader = asyncio.create_task(fast.messages(MESSAGES, wait=30))
            ids: list[str] = []
            for _ in range(0, MESSAGES, 20):
                ids += await publish(valkey_client, topic, [PAYLOAD] * 20)
            # 12.8 MB went out; each stalled socket must be gone within the close timeout.
            await wait_cut(server, ports, within=10.0)
            assert [m["id"] for m in await reader] == ids
            growth = rss_bytes() - rss_before
            assert growth < 64 * 1024 * 1024, f"RSS grew {growth / 2**20:.0f} MiB"
            async with httpx.AsyncClient(base_url=server.url) as http:
                text = (await http.get("/metrics")).text
            assert 'relay_slow_consumer_disconnects_total{transport="ws"} 6.0' in text
            assert 'relay_slow_consumer_disconnects_total{transport="sse"} 3.0' in text
            assert 'relay_gateway_connections{transport="ws"} 1.0' in text
            assert 'relay_gateway_connections{transport="sse"} 0.0' in text
        finally:
            for client in stalled:
                client.close()


async def test_peer_that_stops_answering_pings_is_dropped(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    """A peer that vanishes without closing (no pong, no close, nothing read) is cut after the
    ping interval + ping timeout (+ the close timeout when our bytes cannot reach it)."""
    async with gateway(ws_ping_interval=0.5, ws_ping_timeout=0.5, close_timeout=0.5) as server:
        idle = StalledClient(server.host, server.port)
        busy = StalledClient(server.host, server.port)
        try:
            await asyncio.to_thread(
                idle.websocket, "/api/v1/ws", {"op": "subscribe", "topic": topic + "-idle"}
            )
            await asyncio.to_thread(
                busy.websocket, "/api/v1/ws", {"op": "subscribe", "topic": topic}
            )
            await asyncio.sleep(0.3)
            # Enough to fill the busy peer's buffers, not enough to make it a slow consumer.
            await publish(valkey_client, topic, ["x" * 4000] * 60)
            elapsed = await wait_cut(server, [idle.local_port, busy.local_port], within=8.0)
            assert elapsed < 8.0
        finally:
            idle.close()
            busy.close()
