"""A consumer that stops reading is cut with 4008; others keep receiving; memory stays bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest
import websockets

from relay_gateway.testing import publish, ws_client
from relaycore.testing import UvicornServer
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
