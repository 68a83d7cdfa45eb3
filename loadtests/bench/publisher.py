"""A fixed-rate publisher: the harness's own clock stamps each message as it is sent.

Messages are scheduled on a timeline (``rate`` per second from the start) and handed to a pool
of keep-alive connections (48: a server answering in 20 ms still gets 2,400/s; with 16,
nchan's 12 ms answers under long-poll load capped the publisher at 1,300/s). The send time
goes into the payload (``bench_t``), so receivers measure publish -> delivery including
ingest. If the server answers too slowly to keep the schedule, the achieved rate falls short
of the target and the step counts as not sustained.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

from .httpclient import HttpConnection, HttpError, build_request
from .stacks import HOST, Stack
from .stats import make_payload

__all__ = ["PublishRun", "publish_at_rate"]

_TICK = 0.002


@dataclass(frozen=True, slots=True)
class PublishRun:
    target_rate: float
    sent: int
    ok: int
    failed: int
    seconds: float
    first_error: str

    @property
    def achieved_rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


async def publish_at_rate(
    stack: Stack, topic: str, rate: float, seconds: float, *, connections: int = 48
) -> PublishRun:
    host = f"{HOST}:{stack.publish_port}"
    path = stack.publish_path(topic)
    headers = {"Content-Type": "application/json"}
    total = int(rate * seconds)
    tickets: asyncio.Queue[int | None] = asyncio.Queue()
    ok = failed = 0
    first_error = ""
    seq = itertools.count()

    async def sender(conn: HttpConnection | None) -> None:
        nonlocal ok, failed, first_error
        while (ticket := await tickets.get()) is not None:
            del ticket
            # Bounded in time as well as count: a stuck server cannot hold the run hostage.
            if time.monotonic() > give_up_at:
                failed += 1
                first_error = first_error or "publisher gave up: server too slow"
                continue
            body = stack.publish_body(topic, make_payload(next(seq)))
            try:
                if conn is None or conn.closed:
                    conn = await HttpConnection.open(HOST, stack.publish_port)
                async with asyncio.timeout(10):
                    response = await conn.request(build_request("POST", path, host, body, headers))
            except (HttpError, OSError, TimeoutError) as exc:
                failed += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                if conn is not None:
                    conn.close()
                conn = None
                continue
            if 200 <= response.status < 300:
                ok += 1
            else:
                failed += 1
                first_error = first_error or f"{response.status}: {response.body[:200]!r}"
        if conn is not None:
            conn.close()

    pool = [await HttpConnection.open(HOST, stack.publish_port) for _ in range(connections)]
    started = time.monotonic()
    give_up_at = started + seconds + 15
    async with asyncio.TaskGroup() as tg:
        for conn in pool:
            tg.create_task(sender(conn))
        issued = 0
        while issued < total:
            due = min(total, int(rate * (time.monotonic() - started)) + 1)
            for _ in range(due - issued):
                tickets.put_nowait(issued)
                issued += 1
            await asyncio.sleep(_TICK)
        for _ in pool:
            tickets.put_nowait(None)
    # The run lasted at least the scheduled time; longer if the server fell behind.
    elapsed = max(time.monotonic() - started, seconds)
    return PublishRun(rate, issued, ok, failed, elapsed, first_error)
