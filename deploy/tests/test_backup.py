"""deploy/backup: back up a running Valkey, restore an older backup under live consumers.

The scripts run for real (``valkey-backup.sh`` with ``valkey-cli``/``redis-cli --rdb`` against a
real ``valkey-server``; ``valkey-restore.sh`` on its data directory). After the restore every
consumer — WebSocket, SSE, long-poll — is told the stream went back (a ``reset`` gap, or
``recovered: false`` for long-poll), never silently jumps, and goes on with what is published
after the restore.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay_devtools.testing import ValkeyProcess
from relay_devtools.testing.gateway import SseReader, ws_client
from relaycore.ids import StreamId

from .conftest import AptTool, StartStack

REPO = Path(__file__).resolve().parents[2]
BACKUP = REPO / "deploy" / "backup" / "valkey-backup.sh"
RESTORE = REPO / "deploy" / "backup" / "valkey-restore.sh"


@pytest.fixture
def valkey_process() -> Iterator[ValkeyProcess]:
    # Valkey waits repl-diskless-sync-delay (5 s) for more replicas before streaming a
    # snapshot; a backup does not need the company, and the tests do not need the wait.
    with ValkeyProcess(extra_args=["--repl-diskless-sync-delay", "0"]) as server:
        yield server


@pytest.fixture(scope="session")
def valkey_cli(apt_tool: AptTool) -> str:
    # valkey-cli where installed; redis-cli (Debian's redis-tools) speaks the same protocol.
    return shutil.which("valkey-cli") or apt_tool("redis-cli", "redis-tools")


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", *args],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def backup(valkey: ValkeyProcess, cli: str, target: Path, keep: int = 24) -> Path:
    result = run_script(
        str(BACKUP),
        VALKEY_HOSTS=f"{valkey.host}:{valkey.port}",
        BACKUP_DIR=str(target),
        BACKUP_KEEP=str(keep),
        VALKEY_CLI=cli,
    )
    assert result.returncode == 0, result.stderr
    newest = sorted(target.glob("relay-*.rdb"))[-1]
    assert newest.name in result.stdout
    return newest


def test_backup_keeps_the_newest_and_refuses_garbage(
    valkey_process: ValkeyProcess, valkey_cli: str, tmp_path: Path
) -> None:
    for _ in range(3):
        backup(valkey_process, valkey_cli, tmp_path, keep=2)
        # Names carry the UTC second: make the next one a later second.
        subprocess.run(["sleep", "1.05"], check=True)
    assert len(list(tmp_path.glob("relay-*.rdb"))) == 2
    garbage = tmp_path / "not.rdb"
    garbage.write_text("hello")
    data = tmp_path / "data"
    data.mkdir()
    result = run_script(str(RESTORE), str(garbage), str(data))
    assert result.returncode == 1
    assert "not an RDB file" in result.stderr
    down = run_script(
        str(BACKUP), VALKEY_HOSTS="127.0.0.1:1", BACKUP_DIR=str(tmp_path), VALKEY_CLI=valkey_cli
    )
    assert down.returncode == 1
    assert not list(tmp_path.glob("*.partial"))


class Consumers:
    """A WebSocket, an SSE stream and a long-poll loop on one topic, recording every event."""

    def __init__(self) -> None:
        self.ws: list[dict[str, Any]] = []
        self.sse: list[dict[str, Any]] = []
        self.poll: list[dict[str, Any]] = []


async def _ws_consumer(
    server: Any, topic: str, events: list[dict[str, Any]], ready: asyncio.Event
) -> None:
    async with ws_client(server) as ws:
        await ws.subscribe(topic)
        ready.set()
        while True:
            events.append(await ws.event(wait=60))


async def _sse_consumer(
    http: httpx.AsyncClient, topic: str, events: list[dict[str, Any]], ready: asyncio.Event
) -> None:
    async with http.stream("GET", "/api/v1/sse", params={"topic": topic}) as stream:
        assert stream.status_code == 200
        ready.set()
        reader = SseReader(stream)
        while True:
            event = await reader.event(wait=60)
            events.append({"event": event["event"], **event["data"]})


async def _poll_consumer(
    http: httpx.AsyncClient, topic: str, answers: list[dict[str, Any]]
) -> None:
    cursor = None
    while True:
        params = {"topic": topic, "timeout": "2", **({"since": cursor} if cursor else {})}
        try:
            response = await http.get("/api/v1/poll", params=params)
        except httpx.TransportError:
            await asyncio.sleep(0.1)
            continue
        if response.status_code == 503:  # Valkey down: retry, keep the cursor
            await asyncio.sleep(0.1)
            continue
        assert response.status_code == 200, response.text
        body = response.json()
        if body["messages"] or not body["recovered"]:
            answers.append(body)
        cursor = body["next"]


async def _publish(ingest: httpx.AsyncClient, topic: str, payloads: list[int]) -> list[str]:
    ids = []
    for payload in payloads:
        for _ in range(200):
            response = await ingest.post(
                "/api/v1/messages", json={"topic": topic, "payload": payload}
            )
            if response.status_code == 201:
                ids.append(response.json()["id"])
                break
            assert response.status_code == 503, response.text
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("ingest never recovered")
    return ids


def _delivered(events: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in events if e.get("op", e.get("event")) == "message"]


async def _until(check: Any, what: str, limit: float = 30.0) -> None:
    async with asyncio.timeout(limit):
        while not check():  # noqa: ASYNC110  # state filled in by the consumer tasks
            await asyncio.sleep(0.05)


def _after_reset(events: list[dict[str, Any]], before: list[str], after: list[str]) -> None:
    """Messages up to ``before``, one reset gap, then increasing ids ending with ``after``."""
    kinds = [e.get("op", e.get("event")) for e in events]
    gaps = [i for i, kind in enumerate(kinds) if kind == "gap"]
    assert len(gaps) == 1, events
    (at,) = gaps
    gap = events[at]
    assert gap["reason"] == "reset", gap
    assert _delivered(events[:at]) == before
    resumed = _delivered(events[at + 1 :])
    # Never a silent jump: the gap names the first id delivered after it.
    assert gap["from"] == resumed[0]
    keys = [StreamId.parse(i) for i in resumed]
    assert keys == sorted(set(keys))
    assert resumed[-len(after) :] == after


@pytest.mark.slow
async def test_restoring_an_older_backup_under_live_consumers(
    valkey_process: ValkeyProcess,
    valkey_cli: str,
    relay_stack: StartStack,
    tmp_path: Path,
    topic: str,
) -> None:
    consumers = Consumers()
    async with (
        relay_stack(valkey_url=valkey_process.url, valkey_timeout=0.5) as stack,
        httpx.AsyncClient(base_url=stack.ingest.url, timeout=20) as ingest,
        httpx.AsyncClient(base_url=stack.gateway.url, timeout=20) as gateway,
        asyncio.TaskGroup() as tasks,
    ):
        ws_ready, sse_ready = asyncio.Event(), asyncio.Event()
        running = [
            tasks.create_task(_ws_consumer(stack.gateway, topic, consumers.ws, ws_ready)),
            tasks.create_task(_sse_consumer(gateway, topic, consumers.sse, sse_ready)),
        ]
        async with asyncio.timeout(20):
            await ws_ready.wait()
            await sse_ready.wait()
        first = await _publish(ingest, topic, [1, 2, 3])
        running.append(tasks.create_task(_poll_consumer(gateway, topic, consumers.poll)))
        await _until(lambda: len(_delivered(consumers.ws)) == 3, "the first messages")

        saved = await asyncio.to_thread(backup, valkey_process, valkey_cli, tmp_path / "backups")
        second = await _publish(ingest, topic, [4, 5, 6])
        delivered = first + second

        def everyone_has(ids: list[str]) -> bool:
            polled = [m["id"] for a in consumers.poll for m in a["messages"]]
            return all(
                got[-len(ids) :] == ids
                for got in (_delivered(consumers.ws), _delivered(consumers.sse), polled)
            )

        await _until(lambda: everyone_has(second), "the second messages everywhere")
        polled_before = len(consumers.poll)

        # The restore: stop Valkey, put the older backup in place, start it again.
        valkey_process.stop()
        result = await asyncio.to_thread(
            run_script, str(RESTORE), str(saved), str(valkey_process.data_dir)
        )
        assert result.returncode == 0, result.stderr
        assert list(valkey_process.data_dir.glob("pre-restore-*/appendonlydir"))
        valkey_process.start()
        third = await _publish(ingest, topic, [7, 8])

        await _until(lambda: everyone_has(third), "the messages published after the restore")
        for task in running:
            task.cancel()
    _after_reset(consumers.ws, delivered, third)
    _after_reset(consumers.sse, delivered, third)
    # Long-poll: the first answer after the restore says it is not a continuation.
    after = consumers.poll[polled_before:]
    assert after[0]["recovered"] is False, after
    resumed = [m["id"] for answer in after for m in answer["messages"]]
    assert resumed[-2:] == third
    assert all(answer["recovered"] for answer in after[1:]), after
