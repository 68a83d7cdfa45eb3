"""The cluster overlay's moving parts, for real on this machine: six ``valkey-server`` nodes
with configs rendered by ``valkey-render.sh`` (``VALKEY_CLUSTER=yes``), formed into 3 primaries
+ 3 replicas by the overlay's ``valkey-cluster-bootstrap.sh``, then ingest and gateway with
``RELAY_VALKEY_CLUSTER=true`` as their ACL users: messages on topics in every shard arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relay_devtools.testing import UvicornServer, ValkeyProcess
from relay_devtools.testing.gateway import gateway_settings, run_gateway, ws_client
from relay_gateway.readers import key_slot
from relay_ingest.app import create_app as create_ingest
from relaycore.settings import Settings
from relaycore.valkey import ValkeyDsn, create_client

from .conftest import AptTool

REPO = Path(__file__).resolve().parents[2]
RENDER = REPO / "deploy" / "k8s" / "base" / "valkey-render.sh"
BOOTSTRAP = REPO / "deploy" / "k8s" / "overlays" / "cluster" / "valkey-cluster-bootstrap.sh"
PASSWORDS = {
    "VALKEY_ADMIN_PASSWORD": "admin-cluster-1",
    "VALKEY_INGEST_PASSWORD": "ingest-cluster-2",
    "VALKEY_GATEWAY_PASSWORD": "gateway-cluster-3",
}
NODES = 6


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[ValkeyProcess]]:
    with contextlib.ExitStack() as stack:
        nodes = []
        for n in range(NODES):
            data = tmp_path / f"node-{n}"
            conf = tmp_path / f"node-{n}.conf"
            rendered = subprocess.run(
                ["/bin/sh", str(RENDER)],
                env={
                    "PATH": "/usr/bin:/bin",
                    "VALKEY_CONF_TEMPLATE": str(REPO / "valkey.conf"),
                    "VALKEY_CONF": str(conf),
                    "VALKEY_DATA_DIR": str(data),
                    "VALKEY_CLUSTER": "yes",
                    **PASSWORDS,
                },
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert rendered.returncode == 0, rendered.stderr
            nodes.append(stack.enter_context(ValkeyProcess(config_file=conf, data_dir=data)))
        yield nodes


def bootstrap(nodes: list[ValkeyProcess], cli: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(BOOTSTRAP)],
        env={
            "PATH": os.environ["PATH"],
            "VALKEY_NODES": " ".join(f"127.0.0.1:{node.port}" for node in nodes),
            "REPLICAS_PER_PRIMARY": "1",
            "VALKEY_CLI": cli,
            "VALKEYCLI_AUTH": PASSWORDS["VALKEY_ADMIN_PASSWORD"],
            "REDISCLI_AUTH": PASSWORDS["VALKEY_ADMIN_PASSWORD"],
            "BOOTSTRAP_WAIT_SECONDS": "20",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def replication(node: ValkeyProcess, cli: str) -> str:
    # valkey-cli, not GLIDE: a standalone GLIDE client refuses to talk to a replica.
    return subprocess.run(
        [cli, "-h", node.host, "-p", str(node.port), "INFO", "replication"],
        env={**os.environ, "REDISCLI_AUTH": PASSWORDS["VALKEY_ADMIN_PASSWORD"],
             "VALKEYCLI_AUTH": PASSWORDS["VALKEY_ADMIN_PASSWORD"]},
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip


@pytest.mark.slow
async def test_bootstrapped_cluster_serves_the_relay(
    cluster: list[ValkeyProcess], apt_tool: AptTool, topic: str
) -> None:
    cli = shutil.which("valkey-cli") or apt_tool("redis-cli", "redis-tools")
    formed = await asyncio.to_thread(bootstrap, cluster, cli)
    assert formed.returncode == 0, formed.stdout + formed.stderr
    assert "cluster formed" in formed.stdout
    # Idempotent: a second run leaves the formed cluster alone.
    again = await asyncio.to_thread(bootstrap, cluster, cli)
    assert again.returncode == 0, again.stderr
    assert "already formed" in again.stdout

    admin_url = cluster[0].url_for("default", PASSWORDS["VALKEY_ADMIN_PASSWORD"])
    admin = await create_client(ValkeyDsn.from_dsn(admin_url), name="t", lazy=False)
    try:
        info = str(await admin.custom_command(["CLUSTER", "INFO"]))
        assert "cluster_size:3" in info
        assert f"cluster_known_nodes:{NODES}" in info
    finally:
        await admin.close()
    # Replicas sync from their primaries as the admin (masterauth): every replica is linked.
    async with asyncio.timeout(30):
        while True:
            roles = [await asyncio.to_thread(replication, node, cli) for node in cluster]
            primaries = [r for r in roles if "role:master" in r]
            linked = [r for r in roles if "master_link_status:up" in r]
            if len(primaries) == 3 and len(linked) == 3:
                break
            await asyncio.sleep(0.2)

    seed = cluster[0]
    ingest_url = seed.url_for("ingest", PASSWORDS["VALKEY_INGEST_PASSWORD"])
    gateway_url = seed.url_for("gateway", PASSWORDS["VALKEY_GATEWAY_PASSWORD"])
    topics = [f"{topic}.{n}" for n in range(6)]
    assert len({key_slot(name) * 3 // 16384 for name in topics}) == 3  # one per shard
    ingest = UvicornServer(create_ingest(Settings(valkey_url=ingest_url, valkey_cluster=True)))
    async with (
        ingest.running(),
        run_gateway(gateway_settings(gateway_url, valkey_cluster=True)) as gateway,
        ws_client(gateway) as ws,
        httpx.AsyncClient(base_url=ingest.url, timeout=20) as http,
    ):
        for name in topics:
            await ws.subscribe(name)
        published = {}
        for name in topics:
            response = await http.post("/api/v1/messages", json={"topic": name, "payload": name})
            assert response.status_code == 201, response.text
            published[name] = response.json()["id"]
        received = {m["topic"]: m["id"] for m in await ws.messages(len(topics), wait=20)}
        assert received == published
