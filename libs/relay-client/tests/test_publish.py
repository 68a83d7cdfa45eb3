"""Publish against real services: retries across a Valkey outage, a lost answer and 429s
never write a message twice; unfixable errors raise typed errors at once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from relay_client import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RelayClient,
    RelayConnectionError,
    RetryPolicy,
)
from relay_devtools.testing import ValkeyProcess, free_port
from relaycore.keys import stream_key
from relaycore.settings import RateLimit
from relaycore.valkey import ValkeyClient, ValkeyDsn, create_client

ServicesFactory = Callable[..., AbstractAsyncContextManager[Any]]


async def entry_ids(client: ValkeyClient, topic: str) -> list[str]:
    """The ids stored in the topic's stream, oldest first."""
    result: Any = await client.custom_command(["XRANGE", stream_key(topic), "-", "+"])
    # GLIDE answers XRANGE as a mapping of entry id to fields.
    ids = result.keys() if isinstance(result, dict) else [entry[0] for entry in result or []]
    return [entry_id.decode() if isinstance(entry_id, bytes) else entry_id for entry_id in ids]


@pytest.mark.slow
async def test_publish_across_a_valkey_outage_writes_exactly_once(
    services: ServicesFactory, valkey_process: ValkeyProcess, topic: str
) -> None:
    async with (
        services(valkey_url=valkey_process.url) as local,
        RelayClient(local.ingest_url, local.gateway_url) as client,
    ):
        await client.publish(topic, "before")
        valkey_process.stop()  # SIGKILL: ingest answers 503 with Retry-After from now on
        publishing = asyncio.create_task(client.publish(topic, {"during": "outage"}))
        await asyncio.sleep(2.0)
        assert not publishing.done(), "no answer may come while Valkey is down"
        valkey_process.start()
        published = await asyncio.wait_for(publishing, 30)
    assert not published.duplicate
    valkey = await create_client(ValkeyDsn.from_dsn(valkey_process.url), name="check")
    try:
        stored = await entry_ids(valkey, topic)
    finally:
        await valkey.close()
    assert len(stored) == 2
    assert stored[1] == published.id


@contextlib.asynccontextmanager
async def answer_dropping_proxy(upstream_port: int, drops: int) -> AsyncIterator[str]:
    """A TCP proxy that forwards requests but cuts the first ``drops`` connections as soon as
    the answer starts: the request was served, the client never hears so."""
    dropped = 0

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        nonlocal dropped
        server_r, server_w = await asyncio.open_connection("127.0.0.1", upstream_port)
        if dropped < drops:
            dropped += 1
            request = await client_r.read(65536)
            server_w.write(request)
            await server_w.drain()
            await server_r.read(1)  # the answer is on its way: the write happened
            client_w.transport.abort()  # RST: the client sees a reset connection
            server_w.close()
            return
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        yield f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("batch", [False, True])
async def test_a_lost_answer_is_retried_without_a_second_write(
    services: ServicesFactory, valkey_client: ValkeyClient, topic: str, batch: bool
) -> None:
    async with (
        services() as local,
        answer_dropping_proxy(local.ingest.port, drops=2) as proxy,
        RelayClient(proxy, local.gateway_url) as client,
    ):
        if batch:
            results = await client.publish_batch([{"topic": topic, "payload": n} for n in range(3)])
        else:
            results = [await client.publish(topic, {"n": 1})]
    assert await entry_ids(valkey_client, topic) == [r.id for r in results]
    assert not any(r.duplicate for r in results)


async def test_a_callers_key_makes_a_duplicate(services: ServicesFactory, topic: str) -> None:
    async with services() as local, RelayClient(local.ingest_url, local.gateway_url) as client:
        first = await client.publish(topic, 1, key="order-42")
        again = await client.publish(topic, 1, key="order-42")
        info = await client.info(topic)
    assert again.duplicate
    assert again.id == first.id
    assert info.length == 1
    assert info.last_id == first.id


async def test_429_is_retried_after_retry_after(services: ServicesFactory, topic: str) -> None:
    async with (
        services(rate_limit=RateLimit(2, 1.0)) as local,
        RelayClient(local.ingest_url, local.gateway_url) as client,
    ):
        started = time.monotonic()
        results = [await client.publish(topic, n) for n in range(4)]
        elapsed = time.monotonic() - started
        info = await client.info(topic)
    assert info.length == 4
    assert len({r.id for r in results}) == 4
    assert elapsed >= 0.5  # the third publish waited for the next window


async def test_unfixable_errors_raise_at_once(
    services: ServicesFactory, jwt_secret: str, make_jwt: Callable[..., str], topic: str
) -> None:
    async with services(auth="jwt", jwt_secret=jwt_secret, max_message_bytes=1024) as local:
        async with RelayClient(local.ingest_url, local.gateway_url) as anonymous:
            with pytest.raises(AuthenticationError) as missing:
                await anonymous.publish(topic, 1)
        assert missing.value.status == 401
        token = make_jwt(publish=["other.*"], subscribe=[])
        async with RelayClient(local.ingest_url, local.gateway_url, token) as other:
            with pytest.raises(PermissionDeniedError):
                await other.publish(topic, 1)
        token = make_jwt(publish=[topic], subscribe=[])
        async with RelayClient(local.ingest_url, local.gateway_url, token) as client:
            with pytest.raises(PayloadTooLargeError):
                await client.publish(topic, "x" * 2000)
            with pytest.raises(InvalidRequestError) as bad_batch:
                await client.publish_batch([{"topic": topic, "payload": 1, "key": ""}])
            assert bad_batch.value.status == 422
            assert bad_batch.value.details
            with pytest.raises(InvalidRequestError):
                await client.publish("bad topic", 1)
            with pytest.raises(NotFoundError):
                await client.info(topic)


async def test_unreachable_ingest_gives_up_after_the_deadline() -> None:
    policy = RetryPolicy(initial=0.05, maximum=0.2, deadline=1.0)
    url = f"http://127.0.0.1:{free_port()}"
    async with RelayClient(url, url, publish_retry=policy) as client:
        started = time.monotonic()
        with pytest.raises(RelayConnectionError):
            await client.publish("t", 1)
    assert 0.5 < time.monotonic() - started < 5
