"""Subscribe against real services: resume across a SIGTERMed gateway, gaps, auth errors."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from relay_client import (
    AuthenticationError,
    Gap,
    InvalidRequestError,
    Message,
    PermissionDeniedError,
    RelayClient,
    RetryPolicy,
    Subscription,
)
from relay_client.models import id_key
from relaycore.keys import stream_key
from relaycore.valkey import ValkeyClient

ServicesFactory = Callable[..., AbstractAsyncContextManager[Any]]

TRANSPORTS = ["ws", "sse", "poll"]


async def collect(subscription: Subscription, into: list[Any], count: int) -> None:
    async for item in subscription:
        into.append(item)
        if sum(isinstance(i, Message) for i in into) >= count:
            return


async def wait_for(predicate: Callable[[], bool], within: float = 30.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110  # polls state the iterator task updates
            await asyncio.sleep(0.02)


async def wait_for_gauge(client: RelayClient, gateway: str, transport: str, value: float) -> None:
    pattern = re.compile(rf'^relay_gateway_connections{{transport="{transport}"}} (\S+)$', re.M)
    async with asyncio.timeout(5):
        while True:
            text = (await client.http.get(gateway + "/metrics")).text
            match = pattern.search(text)
            if match is not None and float(match.group(1)) == value:
                return
            await asyncio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_gateway_restart_mid_iteration_loses_and_repeats_nothing(
    services: ServicesFactory,
    gateway_process: Callable[..., Any],
    topic: str,
    transport: str,
) -> None:
    async with services() as local:
        gateway = await gateway_process()
        # A short backoff cap keeps the test quick; the defaults back off up to 5 s.
        fast = RetryPolicy(initial=0.05, maximum=0.5, deadline=None)
        async with RelayClient(local.ingest_url, gateway.url, subscribe_retry=fast) as client:
            subscription = client.subscribe(topic, transport=transport)
            items: list[Any] = []
            reader = asyncio.create_task(collect(subscription, items, 150))
            await wait_for(lambda: subscription.state == "live")

            async def publish(numbers: range) -> None:
                for number in numbers:
                    await client.publish(topic, {"n": number})

            await publish(range(50))
            await wait_for(lambda: len(items) >= 50)
            stopping = asyncio.create_task(gateway.terminate())  # SIGTERM: drain, close 1012
            await publish(range(50, 100))  # while the gateway drains and exits
            assert await stopping in (0, -15)
            await publish(range(100, 120))  # while no gateway runs at all
            await gateway.start()
            await publish(range(120, 150))
            await asyncio.wait_for(reader, 30)
            await subscription.aclose()
    messages = [item for item in items if isinstance(item, Message)]
    assert not [item for item in items if isinstance(item, Gap)]
    assert [m.payload["n"] for m in messages] == list(range(150))
    keys = [id_key(m.id) for m in messages]
    assert keys == sorted(set(keys))
    assert subscription.reconnects >= 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_trimmed_cursor_yields_a_gap_first(
    services: ServicesFactory, valkey_client: ValkeyClient, topic: str, transport: str
) -> None:
    async with services() as local, RelayClient(local.ingest_url, local.gateway_url) as client:
        ids = [(await client.publish(topic, n)).id for n in range(10)]
        # Exact trim: only the last three stay; the cursor (the first id) is now trimmed.
        await valkey_client.custom_command(["XTRIM", stream_key(topic), "MAXLEN", "3"])
        items: list[Any] = []
        async with client.subscribe(topic, since=ids[0], transport=transport) as sub:
            await asyncio.wait_for(collect(sub, items, 3), 15)
    assert items[0] == Gap(topic=topic, reason="trimmed", from_id=ids[7])
    assert [(m.id, m.payload) for m in items[1:]] == [(ids[n], n) for n in range(7, 10)]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_since_replays_history_then_live(
    services: ServicesFactory, topic: str, transport: str
) -> None:
    async with services() as local, RelayClient(local.ingest_url, local.gateway_url) as client:
        first = await client.publish(topic, {"n": 0}, headers={"source": "sdk"})
        await client.publish_batch([{"topic": topic, "payload": {"n": n}} for n in (1, 2)])
        items: list[Any] = []
        # Any cursor form: "0", or the first message's ms timestamp (an int is fine too).
        since = {"ws": "0", "sse": str(first.ts), "poll": first.ts}[transport]
        async with client.subscribe(topic, since=since, transport=transport) as sub:
            reader = asyncio.create_task(collect(sub, items, 4))
            await wait_for(lambda: len(items) >= 3)
            await client.publish(topic, {"n": 3})
            await asyncio.wait_for(reader, 15)
        if transport != "poll":  # (a long-poll in flight ends with its timeout on the server)
            # Leaving the block closes the stream: the gateway sees the connection go.
            await wait_for_gauge(client, local.gateway_url, transport, 0.0)
    assert [m.payload["n"] for m in items] == [0, 1, 2, 3]
    assert items[0].id == first.id
    assert items[0].ts == first.ts
    assert items[0].headers == {"source": "sdk"}
    assert items[0].to_envelope()["headers"] == {"source": "sdk"}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_auth_errors_raise_typed_errors(
    services: ServicesFactory,
    jwt_secret: str,
    make_jwt: Callable[..., str],
    topic: str,
    transport: str,
) -> None:
    async with services(auth="jwt", jwt_secret=jwt_secret) as local:
        async with RelayClient(local.ingest_url, local.gateway_url) as anonymous:
            with pytest.raises(AuthenticationError) as unauthenticated:
                await anext(anonymous.subscribe(topic, transport=transport))
        assert unauthenticated.value.code == "unauthorized"
        other = make_jwt(publish=[], subscribe=["other.*"])
        async with RelayClient(local.ingest_url, local.gateway_url, other) as denied:
            with pytest.raises(PermissionDeniedError):
                await anext(denied.subscribe(topic, since="0", transport=transport))
        allowed = make_jwt(publish=[topic], subscribe=[topic])
        async with RelayClient(local.ingest_url, local.gateway_url, allowed) as client:
            published = await client.publish(topic, "hello")
            async with client.subscribe(topic, since="0", transport=transport) as sub:
                message = await asyncio.wait_for(anext(sub), 15)
    assert isinstance(message, Message)
    assert (message.id, message.payload) == (published.id, "hello")


async def test_bad_topic_and_cursor_raise_invalid_request(services: ServicesFactory) -> None:
    async with services() as local, RelayClient(local.ingest_url, local.gateway_url) as client:
        with pytest.raises(InvalidRequestError):
            client.subscribe("no spaces allowed")
        for transport in TRANSPORTS:
            with pytest.raises(InvalidRequestError):
                await anext(client.subscribe("fine", since="not-a-cursor", transport=transport))
        with pytest.raises(ValueError, match="transport"):
            client.subscribe("fine", transport="carrier-pigeon")
