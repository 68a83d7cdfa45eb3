"""Valkey SIGKILLed under publishers: 503 + Retry-After within 250 ms, nothing 2xx unwritten.

Only a publish whose batch was already handed to GLIDE when the server died (sent, unanswered:
its outcome is unknown) may wait out ``RELAY_VALKEY_TIMEOUT``; every other one, queued behind
it or new, is answered at once, also the first one after an idle outage and every one while
GLIDE retries its reconnect.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from relay_devtools.testing import ValkeyProcess
from relaycore.ids import StreamId
from relaycore.streams import read_after
from relaycore.valkey import ValkeyDsn, create_client

from .conftest import MakeIngest

MESSAGES = "/api/v1/messages"
FAST = 0.250  # the bound for a 503 once the connection is known to be broken
TIMEOUT = 2.0  # RELAY_VALKEY_TIMEOUT (the default): what an in-flight request may wait
# Ingest learns of the kill within a few ms (its watch connection reads EOF); a batch flushed
# in that window was handed to GLIDE on a dead connection and counts as in flight.
NOTICED = 0.050


@dataclass
class Outcome:
    started: float
    elapsed: float
    status: int
    retry_after: str | None
    id: str | None


async def publish(ingest: httpx.AsyncClient, topic: str, payload: object) -> Outcome:
    started = time.monotonic()
    response = await ingest.post(MESSAGES, json={"topic": topic, "payload": payload})
    elapsed = time.monotonic() - started
    body = response.json()
    return Outcome(
        started,
        elapsed,
        response.status_code,
        response.headers.get("retry-after"),
        body.get("id") if response.status_code == 201 else None,
    )


async def stored_ids(url: str, topic: str) -> set[str]:
    client = await create_client(ValkeyDsn.from_dsn(url), name="check", lazy=False)
    try:
        return {str(e.id) for e in await read_after(client, topic, StreamId(0, 0), 100_000)}
    finally:
        await client.close()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def check_refusals(outcomes: list[Outcome], killed: float) -> list[float]:
    """Every answer is 201 or 503 + Retry-After; the latencies of the 503s of requests that
    started once the kill was noticed (all must be fast) are returned."""
    for outcome in outcomes:
        assert outcome.status in (201, 503), outcome
        if outcome.status == 503:
            assert outcome.retry_after is not None
            assert int(outcome.retry_after) >= 1
    in_flight = [o for o in outcomes if o.started < killed + NOTICED and o.status == 503]
    # Sent before the kill was noticed, never answered: they may wait out the timeout, no longer.
    assert all(o.elapsed < TIMEOUT + 1.0 for o in in_flight), in_flight
    return [o.elapsed for o in outcomes if o.started >= killed + NOTICED and o.status == 503]


async def test_publishes_fail_fast_while_valkey_is_down_and_recover(
    make_ingest: MakeIngest, valkey_process: ValkeyProcess, topic: str
) -> None:
    ingest = await make_ingest(valkey_url=valkey_process.url, valkey_timeout=TIMEOUT)
    assert (await publish(ingest, topic, "warm")).status == 201
    outcomes: list[Outcome] = []
    stop = asyncio.Event()

    async def producer(worker: int) -> None:
        n = 0
        while not stop.is_set():
            outcomes.append(await publish(ingest, topic, [worker, n]))
            n += 1
            await asyncio.sleep(0.005)

    # Phase 1: killed under 8 concurrent producers, down for 2.5 s (GLIDE keeps reconnecting).
    async with asyncio.TaskGroup() as tasks:
        for worker in range(8):
            tasks.create_task(producer(worker))
        await asyncio.sleep(0.5)
        killed = time.monotonic()
        valkey_process.stop()
        await asyncio.sleep(2.5)
        valkey_process.start()
        restarted = time.monotonic()
        deadline = restarted + 15
        while not any(o.status == 201 and o.started > restarted for o in outcomes):
            assert time.monotonic() < deadline, "ingest did not recover"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        stop.set()
    refused = check_refusals(outcomes, killed)
    assert len(refused) > 50
    slow = sorted(refused)[-5:]
    waited = [o.elapsed for o in outcomes if o.started < killed + NOTICED and o.status == 503]
    print(
        f"\n{len(refused)} 503s once the kill was known, slowest {max(refused) * 1000:.1f} ms; "
        f"{sum(1 for w in waited if w > FAST)} in flight at the kill waited up to "
        f"{max(waited, default=0) * 1000:.0f} ms"
    )
    late = [
        (round(o.started - killed, 3), round(o.elapsed, 3))
        for o in outcomes
        if o.started >= killed + NOTICED and o.status == 503 and o.elapsed >= FAST
    ]
    # The bound itself, for 99% of them; a loaded shared machine can stall this very process
    # (the producers, the app and GLIDE share it), so the rest only must not be a timeout wait.
    assert percentile(refused, 99) < FAST, f"slowest: {slow}, (started, took): {late}"
    assert max(refused) < TIMEOUT * 0.75, f"slowest: {slow}, (started, took): {late}"

    # Phase 2: killed while idle; the very first publish after it, and one every 150 ms while
    # GLIDE retries its reconnect, are each answered at once.
    await asyncio.sleep(0.3)
    idle_killed = time.monotonic()
    valkey_process.stop()
    await asyncio.sleep(0.3)
    idle: list[Outcome] = []
    for n in range(25):  # 0.3 s to about 4 s after the kill
        idle.append(await publish(ingest, topic, ["idle", n]))
        await asyncio.sleep(0.15)
    assert [o.status for o in idle] == [503] * len(idle)
    idle_refused = check_refusals(idle, idle_killed)
    assert sorted(idle_refused)[-2] < FAST, [o.elapsed for o in idle]  # one may be stalled
    assert max(idle_refused) < TIMEOUT * 0.75, [o.elapsed for o in idle]
    valkey_process.start()
    deadline = time.monotonic() + 15
    while (last := await publish(ingest, topic, "after")).status != 201:
        assert last.elapsed < TIMEOUT * 0.75
        assert time.monotonic() < deadline, "ingest did not recover"
        await asyncio.sleep(0.05)

    # No 2xx for an unwritten message: every 201 is in the stream after both SIGKILLs (the AOF
    # write reaches the OS before Valkey replies, so a process kill loses nothing acknowledged).
    acknowledged = {o.id for o in [*outcomes, *idle, last] if o.id is not None}
    assert acknowledged <= await stored_ids(valkey_process.url, topic)
