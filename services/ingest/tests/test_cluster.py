"""Ingest on a real three-node Valkey Cluster: every feature where topics live on different nodes.

The cluster is the session's three ``valkey-server`` processes in cluster mode (the
``valkey_cluster`` fixture: slots split by hand, joined with CLUSTER MEET), so a multi-topic
batch really spans nodes (GLIDE ``ClusterBatch``), the publish function must be on every
primary, and the rate-limit key sits in yet another slot. The routes' own tests also run on
this cluster (``@pytest.mark.backends``).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from relay_devtools.testing import ValkeyCluster
from relaycore.ids import StreamId
from relaycore.settings import RateLimit

from .conftest import MakeIngest

MESSAGES = "/api/v1/messages"


async def test_multi_topic_batch_spans_nodes_in_order(
    make_ingest: MakeIngest, valkey_cluster: ValkeyCluster, topic: str
) -> None:
    ingest = await make_ingest(valkey_url=valkey_cluster.url, valkey_cluster=True)
    topics = [f"{topic}-{n}" for n in range(12)]
    assert {valkey_cluster.owner(t) for t in topics} == {0, 1, 2}  # really on every node
    messages = [{"topic": topics[n % 12], "payload": n} for n in range(120)]
    messages.append({"topic": topics[0], "payload": "k", "key": "once"})
    messages.append({"topic": topics[0], "payload": "k", "key": "once"})
    response = await ingest.post("/api/v1/messages/batch", json={"messages": messages})
    assert response.status_code == 201, response.text
    results = response.json()["results"]
    assert [r["topic"] for r in results] == [m["topic"] for m in messages]
    assert results[-1] == {**results[-2], "duplicate": True}
    for name in topics:
        ids = [
            StreamId.parse(r["id"]) for r in results if r["topic"] == name and "duplicate" not in r
        ]
        assert ids == sorted(ids)
        info = (await ingest.get(f"/api/v1/topics/{name}")).json()
        assert info["length"] == len(ids)
        assert info["last_id"] == str(ids[-1])
    assert (await ingest.get("/ready")).status_code == 200


async def test_single_publishes_and_rate_limit_on_a_cluster(
    make_ingest: MakeIngest, valkey_cluster: ValkeyCluster, topic: str
) -> None:
    ingest = await make_ingest(
        valkey_url=valkey_cluster.nodes[1].url, valkey_cluster=True, rate_limit=RateLimit(5, 60.0)
    )
    codes = [
        (
            await ingest.post("/api/v1/messages", json={"topic": f"{topic}-{n}", "payload": n})
        ).status_code
        for n in range(6)
    ]
    assert codes == [201] * 5 + [429]


@pytest.mark.slow
async def test_a_dead_primary_fails_only_its_topics(
    make_ingest: MakeIngest, valkey_cluster: ValkeyCluster, topic: str
) -> None:
    """kill -9 one primary: its topics get 503 + Retry-After, the others 201 at normal speed."""
    ingest = await make_ingest(valkey_url=valkey_cluster.nodes[1].url, valkey_cluster=True)
    down = valkey_cluster.topics_on(f"{topic}-down", 0, 3)
    up = valkey_cluster.topics_on(f"{topic}-up1", 1, 3) + valkey_cluster.topics_on(
        f"{topic}-up2", 2, 3
    )
    for name in down + up:
        assert (await ingest.post(MESSAGES, json={"topic": name, "payload": 0})).status_code == 201
    valkey_cluster.kill(0)
    try:
        took: list[float] = []

        async def post(name: str, n: int) -> httpx.Response:
            started = time.monotonic()
            response = await ingest.post(MESSAGES, json={"topic": name, "payload": n})
            if name in up:
                took.append(time.monotonic() - started)
            return response

        for n in range(10):
            # Concurrent, so they share pipelined round trips with the failing writes.
            names = [*up, down[n % 3]]
            responses = await asyncio.gather(*(post(name, n) for name in names))
            for name, response in zip(names, responses, strict=True):
                if name in up:
                    assert response.status_code == 201, response.text
                else:
                    assert response.status_code == 503, response.text
                    assert "retry-after" in response.headers
        took.sort()
        assert took[int(len(took) * 0.95)] < 0.5, took
        # Still taking every other topic: ready, so balancers keep sending producers.
        assert (await ingest.get("/ready")).status_code == 200
    finally:
        valkey_cluster.restart(0)
    for _ in range(100):
        response = await ingest.post(MESSAGES, json={"topic": down[0], "payload": "back"})
        if response.status_code == 201:
            break
        await asyncio.sleep(0.1)
    assert response.status_code == 201, response.text
