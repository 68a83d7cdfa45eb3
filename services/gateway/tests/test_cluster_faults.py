"""Faults on a real Valkey Cluster: a primary killed (-9) and restarted, a replica taking over.

Contract §6: a primary that is down makes only the topics in its slots unavailable; their
consumers keep their connections and resume with no gap once the slots are served again, also
after a replica takes over; topics on other primaries keep flowing at normal speed. Writes a
dead primary acknowledged but had not replicated are lost with it: consumers see each
acknowledged message at most once and in order, and the loss as a ``reset`` gap.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from glide import GlideError

from relay_devtools.testing import ValkeyCluster, ValkeyProcess
from relay_devtools.testing.cluster import command
from relay_devtools.testing.gateway import (
    WsClient,
    gateway_settings,
    publish,
    run_gateway,
    ws_client,
)
from relaycore.ids import StreamId
from relaycore.streams import read_after
from relaycore.valkey import ValkeyClient, ValkeyDsn, create_client

pytestmark = pytest.mark.slow


async def cluster_client(cluster: ValkeyCluster, request_timeout: float = 2.0) -> ValkeyClient:
    return await create_client(
        ValkeyDsn.from_dsn(cluster.url),
        cluster=True,
        name="relay-tests",
        lazy=False,
        request_timeout=request_timeout,
    )


async def publish_retrying(
    client: ValkeyClient, topic: str, payloads: list[int], wait: float = 30.0
) -> list[str]:
    deadline = time.monotonic() + wait
    while True:
        try:
            return await publish(client, topic, payloads)
        except GlideError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def ids(texts: list[str]) -> list[StreamId]:
    return [StreamId.parse(text) for text in texts]


def offset(node: ValkeyProcess) -> int:
    """The node's replication offset (a replica's: how much of its primary's stream it has)."""
    reply = command(node, "INFO", "replication").decode()
    return int(re.search(r"master_repl_offset:(\d+)", reply).group(1))  # type: ignore[union-attr]  # always in INFO replication


async def subscribed(ws: WsClient, topics: list[str]) -> None:
    for n, name in enumerate(topics):
        await ws.subscribe(name, req=n)


@pytest.fixture
async def client(valkey_cluster: ValkeyCluster) -> AsyncIterator[ValkeyClient]:
    client = await cluster_client(valkey_cluster, request_timeout=0.5)
    try:
        yield client
    finally:
        await client.close()


async def test_a_dead_primary_stops_only_its_topics_and_they_resume_without_a_gap(
    valkey_cluster: ValkeyCluster, client: ValkeyClient, topic: str
) -> None:
    down = valkey_cluster.topics_on(f"{topic}-down", 0, 2)
    up = valkey_cluster.topics_on(f"{topic}-up1", 1, 2) + valkey_cluster.topics_on(
        f"{topic}-up2", 2, 2
    )
    settings = gateway_settings(valkey_cluster.url, valkey_cluster=True)
    async with (
        run_gateway(settings) as server,
        ws_client(server) as down_ws,
        ws_client(server) as up_ws,
    ):
        await subscribed(down_ws, down)
        await subscribed(up_ws, up)
        before = {name: await publish(client, name, [0, 1]) for name in down}
        got = await down_ws.messages(4)
        assert sorted(m["id"] for m in got) == sorted(i for ids in before.values() for i in ids)
        await asyncio.sleep(1.1)  # appendfsync everysec: the AOF holds what was acknowledged

        valkey_cluster.kill(0)
        try:
            # Topics on the other primaries: delivered at normal speed all along.
            lags: list[float] = []
            for n in range(20):
                for name in up:
                    sent = time.monotonic()
                    (message_id,) = await publish(client, name, [n])
                    (message,) = await up_ws.messages(1, wait=5.0)
                    assert (message["topic"], message["id"]) == (name, message_id)
                    lags.append(time.monotonic() - sent)
                await asyncio.sleep(0.05)
            lags.sort()
            assert lags[int(len(lags) * 0.95)] < 0.5, lags  # was ~2 s: one backoff for all
            # The dead primary's topics: writes fail, their consumers stay connected.
            with pytest.raises(GlideError):
                await publish(client, down[0], [99])
            await down_ws.send(op="ping", req=7)
            assert (await down_ws.expect("pong"))["req"] == 7
            # Still serving every other topic: ready, so balancers keep sending consumers.
            async with httpx.AsyncClient(base_url=server.url) as http:
                assert (await http.get("/ready")).status_code == 200
        finally:
            valkey_cluster.restart(0)

        after = {name: await publish_retrying(client, name, [2, 3]) for name in down}
        got = await down_ws.messages(4, wait=20.0)
        for name in down:
            # In order, nothing repeated, no gap event (messages() asserts op == message).
            assert [m["id"] for m in got if m["topic"] == name] == after[name]


async def test_replica_takeover_reports_unreplicated_writes_as_a_gap(topic: str) -> None:
    """Writes the primary acknowledged but never replicated die with it: a ``reset`` gap."""
    with ValkeyCluster(primaries=3, replicas=1) as cluster:  # the replica follows primary 0
        (name,) = cluster.topics_on(topic, 0, 1)
        client = await cluster_client(cluster, request_timeout=0.5)
        try:
            settings = gateway_settings(cluster.url, valkey_cluster=True)
            async with run_gateway(settings) as server, ws_client(server) as ws:
                await ws.subscribe(name)
                replicated = await publish(client, name, [0, 1, 2])
                assert [m["id"] for m in await ws.messages(3)] == replicated
                primary, replica = cluster.nodes[0], cluster.replicas[0]
                cluster.wait_until(
                    lambda: offset(replica) >= offset(primary), 10, "the replica lags behind"
                )
                # Cut replication: the replica cannot authenticate any more when it reconnects.
                command(replica, "CONFIG", "SET", "masteruser", "nobody")
                command(replica, "CONFIG", "SET", "masterauth", "wrong")
                command(primary, "CLIENT", "KILL", "TYPE", "replica")
                lost = await publish(client, name, [3, 4])  # acknowledged, never replicated
                assert [m["id"] for m in await ws.messages(2)] == lost

                cluster.kill(0)
                cluster.wait_until(
                    lambda: cluster.role(3) == "primary", 30, "the replica was not promoted"
                )
                await publish_retrying(client, name, [5, 6])
                # What the new primary holds after the survivors (a retried publish whose first
                # attempt timed out may have written twice: the stream is the truth).
                later = [str(e.id) for e in await read_after(client, name, ids(replicated)[-1], 10)]
                gap = await ws.expect("gap", wait=20.0)
                assert (gap["reason"], gap["from"]) == ("reset", later[0])
                # Each acknowledged message at most once, in order: nothing repeated after it.
                assert [m["id"] for m in await ws.messages(len(later))] == later

            # A gateway with nothing in memory answers from Valkey alone (seeded by a live node).
            fresh = gateway_settings(cluster.nodes[1].url, valkey_cluster=True)
            async with run_gateway(fresh) as server:
                # A consumer that had seen only the first lost write is told, not skipped.
                async with ws_client(server) as late:
                    resumed = await late.subscribe(name, since=lost[0])
                    assert resumed["recovered"] is False
                # One that had seen every surviving write resumes exactly.
                async with ws_client(server) as exact:
                    resumed = await exact.subscribe(name, since=replicated[-1])
                    assert resumed["recovered"] is True
                    assert [m["id"] for m in await exact.messages(len(later))] == later
        finally:
            await client.close()
