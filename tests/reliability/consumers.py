"""Producers and consumers for the fault tests: each records exactly what it saw."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import websockets

from relay_devtools.testing.gateway import id_key


@dataclass
class Seen:
    """What one consumer received: message ids in order, payloads, gaps, reconnects."""

    name: str
    cursor: str
    ids: list[str] = field(default_factory=list)
    payloads: list[Any] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    reconnects: int = 0
    unavailable: int = 0
    subscribed: list[tuple[float, int]] = field(default_factory=list)  # (when, gateway index)

    @property
    def last(self) -> str:
        return self.ids[-1] if self.ids else self.cursor

    def add(self, message_id: str, payload: Any) -> None:
        self.ids.append(message_id)
        self.payloads.append(payload)


@dataclass
class Published:
    """Every publish attempt: the payload number, the HTTP status, the id if acknowledged."""

    acked: dict[int, str] = field(default_factory=dict)  # n -> id
    refused: set[int] = field(default_factory=set)  # answered 503
    slow_refusals: int = 0  # 503s that took longer than 250 ms
    other: list[tuple[int, int]] = field(default_factory=list)  # (status, n): must stay empty
    seconds: float = 0.0  # how long the producers ran

    @property
    def attempted(self) -> int:
        return len(self.acked) + len(self.refused) + len(self.other)

    def record(self, numbers: list[int], response: httpx.Response, elapsed: float) -> None:
        if response.status_code == 201:
            body = response.json()
            ids = [r["id"] for r in body["results"]] if "results" in body else [body["id"]]
            self.acked.update(zip(numbers, ids, strict=True))
        elif response.status_code == 503 and "retry-after" in response.headers:
            self.refused.update(numbers)
            if elapsed > 0.25:
                self.slow_refusals += 1
        else:
            self.other.extend((response.status_code, n) for n in numbers)


async def produce(
    url: str, topic: str, rate: float, stop: asyncio.Event, published: Published, *, workers: int
) -> None:
    """About ``rate`` messages/s: 80% in batches of 10 from ``workers`` tasks, 20% single
    publishes from ``workers`` // 2 more (several, so that slow answers on a loaded machine
    do not lower the rate much)."""
    counter = iter(range(10**9))
    batch_interval = 10 * workers / (rate * 0.8)
    single_workers = max(1, workers // 2)
    single_interval = single_workers / (rate * 0.2)

    async def batches(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            started = time.monotonic()
            numbers = [next(counter) for _ in range(10)]
            body = {"messages": [{"topic": topic, "payload": {"n": n}} for n in numbers]}
            response = await http.post("/api/v1/messages/batch", json=body)
            published.record(numbers, response, time.monotonic() - started)
            await asyncio.sleep(max(0.0, batch_interval - (time.monotonic() - started)))

    async def singles(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            started = time.monotonic()
            n = next(counter)
            response = await http.post(
                "/api/v1/messages", json={"topic": topic, "payload": {"n": n}}
            )
            published.record([n], response, time.monotonic() - started)
            await asyncio.sleep(max(0.0, single_interval - (time.monotonic() - started)))

    limits = httpx.Limits(max_connections=workers * 2)
    started = time.monotonic()
    async with (
        httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as http,
        asyncio.TaskGroup() as tasks,
    ):
        for _ in range(workers):
            tasks.create_task(batches(http))
        for _ in range(single_workers):
            tasks.create_task(singles(http))
    published.seconds = time.monotonic() - started


def _payload_of(event: dict[str, Any]) -> Any:
    return event.get("payload")


async def consume_ws(ws_urls: str | list[str], topic: str, seen: Seen, stop: asyncio.Event) -> None:
    """Subscribe from ``seen.cursor``; on a drop, reconnect (to the next gateway of ``ws_urls``)
    and resume from the last id received."""
    urls = [ws_urls] if isinstance(ws_urls, str) else ws_urls
    current = 0
    while not stop.is_set():
        try:
            async with websockets.connect(urls[current] + "/api/v1/ws", compression=None) as ws:
                frame = {"op": "subscribe", "topic": topic, "since": seen.last, "req": 1}
                await ws.send(msgspec.json.encode(frame).decode())
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        raw = await asyncio.wait_for(ws.recv(), 0.2)
                        for line in str(raw).split("\n"):
                            event = msgspec.json.decode(line)
                            if event["op"] == "message":
                                seen.add(event["id"], _payload_of(event))
                            elif event["op"] == "subscribed":
                                seen.subscribed.append((time.monotonic(), current))
                            elif event["op"] == "gap":
                                seen.gaps.append(event)
                            elif event["op"] == "error":
                                seen.unavailable += 1
        except (OSError, websockets.ConnectionClosed, websockets.InvalidHandshake):
            seen.reconnects += 1
            current = (current + 1) % len(urls)
            await asyncio.sleep(0.05)


async def consume_sse(url: str, topic: str, seen: Seen, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10, read=None)) as http:
        while not stop.is_set():
            try:
                headers = {"Last-Event-ID": seen.last} if seen.ids else {}
                params = {"topic": topic, "since": seen.cursor}
                async with http.stream("GET", "/api/v1/sse", params=params, headers=headers) as r:
                    if r.status_code != 200:
                        seen.unavailable += 1
                        await asyncio.sleep(0.2)
                        continue
                    fields: dict[str, str] = {}
                    async for line in r.aiter_lines():
                        if line == "":
                            if fields.get("event") == "message":
                                data = msgspec.json.decode(fields["data"])
                                seen.add(fields["id"], data.get("payload"))
                            elif fields.get("event") == "gap":
                                seen.gaps.append(msgspec.json.decode(fields["data"]))
                            fields = {}
                            if stop.is_set():
                                return
                        elif not line.startswith(":"):
                            name, _, value = line.partition(": ")
                            fields[name] = value
            except httpx.TransportError:
                pass
            seen.reconnects += 1
            await asyncio.sleep(0.1)


async def consume_poll(url: str, topic: str, seen: Seen, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=15) as http:
        while not stop.is_set():
            params = {"topic": topic, "since": seen.last, "timeout": "1", "limit": "1000"}
            try:
                response = await http.get("/api/v1/poll", params=params)
            except httpx.TransportError:
                seen.reconnects += 1
                await asyncio.sleep(0.1)
                continue
            if response.status_code != 200:
                assert response.status_code == 503, response.text
                seen.unavailable += 1
                await asyncio.sleep(0.1)
                continue
            body = response.json()
            if not body["recovered"]:
                seen.gaps.append({"recovered": False, "since": seen.last})
            for message in body["messages"]:
                seen.add(message["id"], message.get("payload"))


def check_consumer(seen: Seen, stream: list[str]) -> None:
    """No gap, duplicate or reordering: exactly the stream's ids after the cursor, in order."""
    assert seen.gaps == [], (seen.name, seen.gaps)
    keys = [id_key(i) for i in seen.ids]
    assert keys == sorted(set(keys)), f"{seen.name}: duplicate or out-of-order ids"
    after = [i for i in stream if id_key(i) > id_key(seen.cursor)] if seen.cursor != "0" else stream
    assert seen.ids == after, (
        f"{seen.name}: {len(seen.ids)} received, {len(after)} in the stream after its cursor; "
        f"missing {sorted(set(after) - set(seen.ids), key=id_key)[:5]}, "
        f"extra {sorted(set(seen.ids) - set(after), key=id_key)[:5]}"
    )
