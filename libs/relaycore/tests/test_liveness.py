"""ServerWatch against a real valkey-server: a SIGKILL is noticed in milliseconds, a dropped
idle connection is not an outage, a restart is seen again."""

from __future__ import annotations

import asyncio
import signal
import time

from relay_devtools.testing import ValkeyProcess, free_port
from relaycore.liveness import ServerWatch
from relaycore.valkey import ValkeyDsn, create_client


async def test_kill_is_reported_at_once_and_restart_seen(valkey_process: ValkeyProcess) -> None:
    lost: list[float] = []
    watch = ServerWatch(
        valkey_process.host, valkey_process.port, on_lost=lambda _: lost.append(time.monotonic())
    )
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(watch.run())
        assert await watch.wait_up(5)
        killed = time.monotonic()
        valkey_process.stop()
        for _ in range(200):
            if lost:
                break
            await asyncio.sleep(0.005)
        assert len(lost) == 1
        assert lost[0] - killed < 0.1  # the budget is 250 ms for the whole 503
        assert not watch.up
        assert not await watch.reachable()
        await asyncio.sleep(0.3)  # still down: reported once, not once per retry
        assert len(lost) == 1
        valkey_process.start()
        assert await watch.wait_up(5)
        assert await watch.reachable()
        watch.close()


async def test_a_dropped_idle_connection_is_not_an_outage(valkey_process: ValkeyProcess) -> None:
    lost: list[str] = []
    watch = ServerWatch(valkey_process.host, valkey_process.port, on_lost=lost.append)
    client = await create_client(ValkeyDsn.from_dsn(valkey_process.url), name="admin")
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(watch.run())
            assert await watch.wait_up(5)
            # What an operator's CLIENT KILL or the server's idle `timeout` does to it.
            killed = await client.custom_command(
                ["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]
            )
            assert killed >= 1
            await asyncio.sleep(0.3)
            assert watch.up
            assert lost == []
            watch.close()
    finally:
        await client.close()


async def test_nothing_listening_is_down_from_the_start() -> None:
    lost: list[str] = []
    watch = ServerWatch("127.0.0.1", free_port(), on_lost=lost.append, retry_interval=0.05)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(watch.run())
        assert not await watch.wait_up(0.3)
        assert len(lost) == 1
        watch.close()


async def test_a_stopped_server_is_slow_not_unreachable(valkey_process: ValkeyProcess) -> None:
    """SIGSTOP: the kernel still accepts connections, so a stall is waited for, not refused."""
    assert valkey_process.process is not None
    watch = ServerWatch(valkey_process.host, valkey_process.port, timeout=0.3)
    valkey_process.process.send_signal(signal.SIGSTOP)
    try:
        assert await watch.reachable()
    finally:
        valkey_process.process.send_signal(signal.SIGCONT)
    valkey_process.stop()
    assert not await watch.reachable()
