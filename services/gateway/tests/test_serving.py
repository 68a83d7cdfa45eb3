"""``RELAY_WORKERS=2``: every worker drains like a single gateway (``relay_gateway.serving``;
the supervisor internals it relies on are checked in libs/relaycore/tests/test_uvicorn_ext.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets

from relay_devtools.testing import free_port, kill_tree
from relay_devtools.testing.gateway import WsClient

from .test_main import gateway_env

PER_WORKER = 30
GRACE = 10.0
DRAIN = 3.0


def _workers(pid: int) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _owner_of_peer_ports(workers: list[int], server_port: int) -> dict[int, int]:
    """Client port → the worker pid holding the server side of that connection."""
    owner_of_inode = {inode: pid for pid in workers for inode in _socket_inodes(pid)}
    owners: dict[int, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == server_port and inode in owner_of_inode:
            owners[int(remote.split(":")[1], 16)] = owner_of_inode[inode]
    return owners


@pytest.mark.slow
@pytest.mark.timeout(150)  # two spawned workers start slowly on busy shared cores
async def test_two_workers_each_spread_their_1012_closes_over_the_drain_window(
    valkey_url: str, topic: str
) -> None:
    port = free_port()
    env = gateway_env(
        valkey_url,
        port,
        RELAY_WORKERS="2",
        RELAY_SHUTDOWN_GRACE=f"{GRACE}s",
        RELAY_SHUTDOWN_DRAIN=f"{DRAIN}s",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay_gateway",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    clients: list[WsClient] = []
    try:
        # Spawned workers import the whole stack: seconds each on two busy cores.
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            while True:
                assert process.returncode is None, "the gateway exited"
                assert time.monotonic() < deadline, "the workers did not become ready"
                workers = _workers(process.pid)
                with contextlib.suppress(httpx.TransportError):
                    if len(workers) == 2 and (await http.get("/ready")).status_code == 200:
                        break
                await asyncio.sleep(0.2)

        async def connect() -> WsClient:
            connection = await websockets.connect(
                f"ws://127.0.0.1:{port}/api/v1/ws", compression=None
            )
            client = WsClient(connection)
            await client.subscribe(topic)
            return client

        # Both workers accept from one listening socket and the kernel does not balance it:
        # connect in concurrent waves until each worker holds PER_WORKER clients.
        worker_of: list[int] = []
        while min(worker_of.count(pid) for pid in workers) < PER_WORKER:
            assert len(clients) < 20 * PER_WORKER, f"one worker took nearly all: {worker_of}"
            clients += await asyncio.gather(*(connect() for _ in range(20)))
            await asyncio.sleep(0.2)  # a worker still starting gets its turn
            owners = _owner_of_peer_ports(workers, port)
            worker_of = [owners[client.connection.local_address[1]] for client in clients]

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)  # to the supervisor only, as Kubernetes does

        async def close(client: WsClient) -> tuple[int | None, float]:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await client.event(wait=GRACE)  # nothing is published: only the close comes
            received = closed.value.rcvd
            return (received.code if received else None, time.monotonic() - started)

        results = await asyncio.gather(*(close(client) for client in clients))
        exit_code = await asyncio.wait_for(process.wait(), GRACE)
        finished = time.monotonic() - started
    finally:
        for client in clients:
            await client.connection.close()
        if process.returncode is None:
            # SIGTERM first: the supervisor stops its workers; SIGKILL to it alone would not.
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), GRACE + 5)
            except TimeoutError:
                kill_tree(process.pid)
                await process.wait()
    assert [code for code, _ in results] == [1012] * len(clients)
    assert finished < GRACE
    assert exit_code == 0
    for worker in workers:
        moments = sorted(
            at for (_, at), pid in zip(results, worker_of, strict=True) if pid == worker
        )
        # Spread over the 3 s window like a lone gateway (uvicorn's own shutdown sends them all
        # within a few ms), with a wide margin for two shared cores.
        assert moments[-1] - moments[0] > DRAIN / 2, (worker, len(moments), moments)
        # Evenly: no instant takes a large share of one worker's closes.
        busiest = max(sum(1 for m in moments if t <= m < t + 0.2) for t in moments)
        assert busiest <= max(3, len(moments) // 3), moments
