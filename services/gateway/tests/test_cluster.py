"""Valkey Cluster mode: multi-key XREAD must stay within one hash slot.

A one-node cluster owning every slot is enough to prove it: Valkey rejects cross-slot XREAD in
cluster mode whatever the number of nodes, so topics in different slots only work if readers
group them per slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
from glide import ClusterBatch

from relay_gateway.readers import key_slot
from relay_gateway.testing import RETAIN, gateway_settings, run_gateway, ws_client
from relaycore.streams import add_publish, ensure_functions
from relaycore.testing import ValkeyProcess
from relaycore.valkey import ValkeyClient, ValkeyDsn, create_client


@pytest.fixture
async def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    data = tmp_path_factory.mktemp("cluster")
    server = ValkeyProcess(
        data_dir=data,
        extra_args=["--cluster-enabled", "yes", "--cluster-config-file", str(data / "nodes.conf")],
    )
    with server:
        client = await create_client(ValkeyDsn.from_dsn(server.url), name="setup", lazy=False)
        await client.custom_command(["CLUSTER", "ADDSLOTSRANGE", "0", "16383"])
        for _ in range(100):
            info = await client.custom_command(["CLUSTER", "INFO"])
            if b"cluster_state:ok" in (info if isinstance(info, bytes) else str(info).encode()):
                break
            await asyncio.sleep(0.05)
        await client.close()
        yield server.url


async def publish_cluster(client: ValkeyClient, topic: str, payloads: list[int]) -> list[str]:
    batch = ClusterBatch(is_atomic=False)
    for payload in payloads:
        add_publish(batch, topic, msgspec.json.encode(payload), None, None, RETAIN)
    results = await client.exec(batch, raise_on_error=True)  # type: ignore[arg-type]
    assert results is not None
    return [result[0].decode() for result in results]  # type: ignore[index,union-attr]


async def test_topics_in_different_slots_on_a_cluster(cluster_url: str, topic: str) -> None:
    client = await create_client(
        ValkeyDsn.from_dsn(cluster_url), cluster=True, name="relay-tests", lazy=False
    )
    try:
        await ensure_functions(client)
        # Several topics in distinct slots, all assigned to the same single reader.
        names = [f"{topic}.{n}" for n in range(6)]
        assert len({key_slot(name) for name in names}) == len(names)
        settings = gateway_settings(cluster_url, valkey_cluster=True, reader_pool_size=1)
        async with run_gateway(settings) as server, ws_client(server) as ws:
            for name in names:
                await ws.subscribe(name, since="0-0")
            expected: dict[str, list[str]] = {}
            for n, name in enumerate(names):
                expected[name] = await publish_cluster(client, name, [n, n + 100])
            got: dict[str, list[str]] = {name: [] for name in names}
            for message in await ws.messages(2 * len(names)):
                got[message["topic"]].append(message["id"])
            assert got == expected
    finally:
        await client.close()
