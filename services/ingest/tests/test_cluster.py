"""Ingest on a real three-node Valkey Cluster: every feature where topics live on different nodes.

The cluster is three ``valkey-server`` processes in cluster mode, slots split by hand and joined
with CLUSTER MEET, so a multi-topic batch really spans nodes (GLIDE ``ClusterBatch``), the
publish function must be on every primary, and the rate-limit key sits in yet another slot.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from relaycore.ids import StreamId
from relaycore.settings import RateLimit
from relaycore.testing import ValkeyProcess, free_port

from .conftest import MakeIngest

SLOTS = [(0, 5460), (5461, 10922), (10923, 16383)]
CLUSTER_MODE = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]


def command(node: ValkeyProcess, *args: str) -> bytes:
    """One command over a plain socket (RESP), for setting the cluster up; the raw reply."""
    request = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(arg.encode()), arg.encode()) for arg in args
    )
    with socket.create_connection((node.host, node.port), timeout=5) as sock:
        sock.sendall(request)
        reply = sock.recv(65536)
        while not reply.endswith(b"\r\n"):
            reply += sock.recv(65536)
        if reply.startswith(b"$"):  # bulk string: $<length>\r\n<data>\r\n
            header, _, _ = reply.partition(b"\r\n")
            while len(reply) < len(header) + 2 + int(header[1:]) + 2:
                reply += sock.recv(65536)
    return reply


@pytest.fixture(scope="module")
def valkey_cluster() -> Iterator[list[ValkeyProcess]]:
    buses = [free_port() for _ in SLOTS]
    nodes = [ValkeyProcess(extra_args=[*CLUSTER_MODE, "--cluster-port", str(bus)]) for bus in buses]
    try:
        for node, (first, last) in zip(nodes, SLOTS, strict=True):
            node.start()
            assert command(node, "CLUSTER", "ADDSLOTSRANGE", str(first), str(last)) == b"+OK\r\n"
        for node, bus in zip(nodes[1:], buses[1:], strict=True):
            command(nodes[0], "CLUSTER", "MEET", node.host, str(node.port), str(bus))
        deadline = time.monotonic() + 30
        while not all(
            b"cluster_state:ok" in (info := command(node, "CLUSTER", "INFO"))
            and b"cluster_known_nodes:3" in info
            for node in nodes
        ):
            assert time.monotonic() < deadline, "the cluster did not form"
            time.sleep(0.05)
        yield nodes
    finally:
        for node in nodes:
            node.close()


def owner(nodes: list[ValkeyProcess], topic: str) -> int:
    slot = int(command(nodes[0], "CLUSTER", "KEYSLOT", f"{{{topic}}}")[1:-2])
    return next(i for i, (first, last) in enumerate(SLOTS) if first <= slot <= last)


async def test_multi_topic_batch_spans_nodes_in_order(
    make_ingest: MakeIngest, valkey_cluster: list[ValkeyProcess], topic: str
) -> None:
    ingest = await make_ingest(valkey_url=valkey_cluster[0].url, valkey_cluster=True)
    topics = [f"{topic}-{n}" for n in range(12)]
    assert {owner(valkey_cluster, t) for t in topics} == {0, 1, 2}  # really on every node
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
    make_ingest: MakeIngest, valkey_cluster: list[ValkeyProcess], topic: str
) -> None:
    ingest = await make_ingest(
        valkey_url=valkey_cluster[1].url, valkey_cluster=True, rate_limit=RateLimit(5, 60.0)
    )
    codes = [
        (
            await ingest.post("/api/v1/messages", json={"topic": f"{topic}-{n}", "payload": n})
        ).status_code
        for n in range(6)
    ]
    assert codes == [201] * 5 + [429]
