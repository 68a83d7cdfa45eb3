"""Ingest on a real three-node Valkey Cluster: every feature where topics live on different nodes.

The cluster is the session's three ``valkey-server`` processes in cluster mode (the
``valkey_cluster`` fixture: slots split by hand, joined with CLUSTER MEET), so a multi-topic
batch really spans nodes (GLIDE ``ClusterBatch``), the publish function must be on every
primary, and the rate-limit key sits in yet another slot. The routes' own tests also run on
this cluster (``@pytest.mark.backends``).
"""

from __future__ import annotations

from relaycore.ids import StreamId
from relaycore.settings import RateLimit
from relaycore.testing import ValkeyCluster

from .conftest import MakeIngest


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
