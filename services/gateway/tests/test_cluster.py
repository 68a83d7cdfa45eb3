"""Gateway readers on a real three-primary Valkey Cluster: wake-ups, slot reads, idle cost.

Valkey rejects a cross-slot XREAD in cluster mode, and topics live on different primaries, so
these only pass if readers group topics per slot and follow the publish signal to each node.
"""

from __future__ import annotations

import asyncio

import httpx

from relay_devtools.testing import ValkeyCluster
from relay_devtools.testing.gateway import gateway_settings, publish, run_gateway, ws_client
from relay_gateway.cluster_reader import SlotMap
from relaycore.keys import key_slot
from relaycore.valkey import ValkeyClient, ValkeyDsn, create_client


async def cluster_client(cluster: ValkeyCluster) -> ValkeyClient:
    return await create_client(
        ValkeyDsn.from_dsn(cluster.url), cluster=True, name="relay-tests", lazy=False
    )


async def test_topics_on_every_primary_are_delivered(
    valkey_cluster: ValkeyCluster, topic: str
) -> None:
    client = await cluster_client(valkey_cluster)
    try:
        # Several topics in distinct slots on all three primaries, all on one reader.
        names = [f"{topic}.{n}" for n in range(9)]
        assert len({key_slot(name) for name in names}) == len(names)
        assert {valkey_cluster.owner(name) for name in names} == {0, 1, 2}
        settings = gateway_settings(valkey_cluster.url, valkey_cluster=True, reader_pool_size=1)
        async with run_gateway(settings) as server, ws_client(server) as ws:
            for name in names:
                await ws.subscribe(name, since="0-0")
            expected: dict[str, list[str]] = {}
            for n, name in enumerate(names):
                expected[name] = await publish(client, name, [n, n + 100])
            got: dict[str, list[str]] = {name: [] for name in names}
            for message in await ws.messages(2 * len(names)):
                got[message["topic"]].append(message["id"])
            assert got == expected
    finally:
        await client.close()


async def test_signals_wake_readers_without_waiting_for_the_safety_read(
    valkey_cluster: ValkeyCluster, topic: str
) -> None:
    """With the safety read an hour apart, only the publish signal can deliver live messages."""
    client = await cluster_client(valkey_cluster)
    try:
        settings = gateway_settings(
            valkey_cluster.url, valkey_cluster=True, reader_safety_interval=3600.0
        )
        async with run_gateway(settings) as server, ws_client(server) as ws:
            await ws.subscribe(topic)
            await asyncio.sleep(0.3)  # the subscription is confirmed (it is read once then)
            for n in range(5):
                ids = await publish(client, topic, [n])
                (message,) = await ws.messages(1, wait=2.0)
                assert message["id"] == ids[0]
    finally:
        await client.close()


async def test_a_lost_signal_is_caught_by_the_safety_read(
    valkey_cluster: ValkeyCluster, topic: str
) -> None:
    """Entries written without any signal (plain XADD) still arrive, within the interval."""
    client = await cluster_client(valkey_cluster)
    try:
        settings = gateway_settings(
            valkey_cluster.url, valkey_cluster=True, reader_safety_interval=0.5
        )
        async with run_gateway(settings) as server, ws_client(server) as ws:
            await ws.subscribe(topic, since="0-0")
            first = await publish(client, topic, [0])
            assert [m["id"] for m in await ws.messages(1)] == first
            # Written like the function would, but silently: no SPUBLISH.
            silent = await client.custom_command(
                ["XADD", f"relay:{{{topic}}}:s", "*", "p", "1", "v", first[0]]
            )
            (message,) = await ws.messages(1, wait=5.0)
            assert message["id"] == (silent.decode() if isinstance(silent, bytes) else silent)
            async with httpx.AsyncClient(base_url=server.url) as http:
                assert (await http.get("/ready")).status_code == 200
    finally:
        await client.close()


def test_slot_map_groups_slots_by_primary() -> None:
    reply = [
        [0, 5460, [b"127.0.0.1", 7000, b"id-a"]],
        [10923, 16383, [b"127.0.0.1", 7002, b"id-c"], [b"127.0.0.1", 7005, b"id-r"]],
        [5461, 10922, [b"127.0.0.1", 7001, b"id-b"]],
    ]
    slots = SlotMap(reply)
    assert [slots.node(s) for s in (0, 5460, 5461, 10922, 10923, 16383)] == [
        "127.0.0.1:7000", "127.0.0.1:7000", "127.0.0.1:7001",
        "127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7002",
    ]  # fmt: skip
    # A slot no node claims (mid-migration, or its primary is gone): grouped on its own.
    assert SlotMap(reply[:1]).node(9000) == "slot:9000"
    assert SlotMap(None).node(1) == "slot:1"
