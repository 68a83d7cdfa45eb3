"""kill -9 one of two gateways under 200 WebSocket clients: every client resumes on the other
gateway from the last id it saw, with no gap, duplicate or reordering."""

from __future__ import annotations

import asyncio
import time

import pytest

from relay_devtools.testing import ValkeyProcess
from relay_devtools.testing.gateway import publish
from relaycore.ids import StreamId
from relaycore.streams import read_after
from relaycore.valkey import ValkeyDsn, create_client

from .conftest import Service
from .consumers import Seen, check_consumer, consume_ws

CLIENTS = 200
TOPICS = 10
RATE = 100  # messages/s over all topics (each is fanned out to 20 clients)


@pytest.mark.slow
@pytest.mark.reliability
@pytest.mark.timeout(120)
async def test_clients_of_a_killed_gateway_resume_on_the_other(services: list[Service]) -> None:
    with ValkeyProcess() as valkey:
        doomed = Service("relay_gateway", valkey.url, TOPIC_LINGER="60s")
        survivor = Service("relay_gateway", valkey.url, TOPIC_LINGER="60s")
        services += [doomed, survivor]
        doomed.start()
        survivor.start()
        client = await create_client(ValkeyDsn.from_dsn(valkey.url), name="producer", lazy=False)
        topics = [f"gw-kill-{n}" for n in range(TOPICS)]
        clients = [Seen(f"ws-{n}", "0") for n in range(CLIENTS)]
        stop_publishing = asyncio.Event()
        stop_consuming = asyncio.Event()
        published = 0

        async def producer() -> None:
            nonlocal published
            while not stop_publishing.is_set():
                started = time.monotonic()
                for topic in topics:
                    await publish(client, topic, [published])
                    published += 1
                await asyncio.sleep(max(0.0, TOPICS / RATE - (time.monotonic() - started)))

        try:
            async with asyncio.TaskGroup() as tasks:
                for n, seen in enumerate(clients):
                    urls = [doomed.ws_url, survivor.ws_url]
                    tasks.create_task(consume_ws(urls, topics[n % TOPICS], seen, stop_consuming))
                deadline = time.monotonic() + 30
                while not all(seen.subscribed for seen in clients):
                    assert time.monotonic() < deadline, "not every client subscribed"
                    await asyncio.sleep(0.05)
                tasks.create_task(producer())
                await asyncio.sleep(2.0)
                assert all(seen.ids for seen in clients), "a client received nothing"
                killed = time.monotonic()
                doomed.kill()  # SIGKILL: no close frames, no drain
                deadline = killed + 30
                while not all(len(seen.subscribed) == 2 for seen in clients):
                    assert time.monotonic() < deadline, "not every client resumed"
                    await asyncio.sleep(0.05)
                resumed = max(seen.subscribed[1][0] for seen in clients) - killed
                await asyncio.sleep(2.0)
                stop_publishing.set()
                await asyncio.sleep(0.2)
                streams = {
                    topic: [
                        str(e.id) for e in await read_after(client, topic, StreamId(0, 0), 100_000)
                    ]
                    for topic in topics
                }
                deadline = time.monotonic() + 30
                while any(
                    seen.last != streams[topics[n % TOPICS]][-1] for n, seen in enumerate(clients)
                ):
                    assert time.monotonic() < deadline, "clients did not catch up"
                    await asyncio.sleep(0.1)
                stop_consuming.set()
        finally:
            await client.close()
        print(
            f"\n{CLIENTS} clients, {published} messages on {TOPICS} topics; all resumed on the "
            f"other gateway {resumed:.2f} s after the kill; "
            f"{sum(len(s.ids) for s in clients)} deliveries"
        )
        for n, seen in enumerate(clients):
            assert [gateway for _, gateway in seen.subscribed] == [0, 1], seen.subscribed
            check_consumer(seen, streams[topics[n % TOPICS]])
