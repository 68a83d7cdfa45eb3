"""Valkey Cluster benchmarks of issue 8: idle commands/s, and e2e p99 cluster vs standalone.

Starts its own Valkeys (a three-primary :class:`~relay_devtools.testing.ValkeyCluster` and a single
``valkey-server``, embedded binary, free ports, temp dirs) and real ``python -m relay_gateway``
processes; subscribers are real WebSocket clients in separate processes.

``idle``: a gateway on the cluster with ``--topics`` (1,000) subscribed topics and nothing
published. After ``--settle`` s, the commands every primary executed over ``--window`` s are
summed from ``INFO commandstats`` (minus the benchmark's own INFO calls). Target: < 100/s.

``e2e``: ``--rate`` (100) msgs/s round-robin over ``--e2e-topics`` (100) topics, published in
10 ms ticks through the ``relay_publish`` function (as ingest writes), ``--subscribers`` (200)
WebSocket subscribers each on ``--per-subscriber`` (5) topics (so every topic has 10
subscribers, 500 deliveries/s). Latency = client receive time minus the publish time carried in the
payload. Standalone and cluster rounds alternate (``--rounds`` each) in one run; the figure is
the p99 over all rounds of a side, and the median of the rounds' p99s (steadier on a shared
machine, where one noisy round moves the pooled p99 by 10x). Target: cluster p99 <= 1.3x
standalone p99.

    uv run --frozen python -m loadtests.cluster.bench [idle] [e2e] [--window 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import uvloop
import websockets
from glide import Batch, ClusterBatch

from relay_devtools.testing import ValkeyCluster, ValkeyProcess, free_port
from relay_devtools.testing.cluster import command
from relaycore.streams import StreamRetention, add_publish, ensure_functions
from relaycore.valkey import ValkeyClient, ValkeyDsn, create_client

RETAIN = StreamRetention(maxlen=100_000, max_age_ms=0, idempotency_ttl_ms=60_000)
_CMDSTAT = re.compile(r"^cmdstat_([^:]+):calls=(\d+)", re.M)


# ``--gateway-src DIR``: run the gateway from another checkout's sources (DIR holds
# services/gateway/src and libs/relaycore/src, e.g. ``git archive <rev> | tar -x``), to measure
# before and after in one run.
GATEWAY_SRC: str | None = None


@asynccontextmanager
async def gateway(url: str, *, cluster: bool) -> AsyncIterator[str]:
    """A ``python -m relay_gateway`` process; yields its WebSocket URL once ``/ready``."""
    port = free_port()
    extra = {}
    if GATEWAY_SRC is not None:
        extra["PYTHONPATH"] = os.pathsep.join(
            os.path.join(GATEWAY_SRC, part)
            for part in ("services/gateway/src", "libs/relaycore/src")
        )
    env = {**os.environ, **extra, "RELAY_VALKEY_URL": url,
           "RELAY_VALKEY_CLUSTER": str(cluster).lower(),
           "RELAY_GATEWAY_PORT": str(port), "RELAY_GATEWAY_HOST": "127.0.0.1",
           "RELAY_LOG_LEVEL": os.environ.get("RELAY_LOG_LEVEL", "warning"),
           "RELAY_ACCESS_LOG": "false"}  # fmt: skip
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "relay_gateway", env=env)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(400):
                try:
                    if (await http.get("/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the gateway did not become ready")
        yield f"ws://127.0.0.1:{port}/api/v1/ws"
    finally:
        process.terminate()
        await process.wait()


def commandstats(node: ValkeyProcess) -> dict[str, int]:
    return {
        name: int(calls)
        for name, calls in _CMDSTAT.findall(command(node, "INFO", "commandstats").decode())
    }


# --- subscribers (separate processes) ----------------------------------------------------


async def _subscribe_all(url: str, groups: list[list[str]], expected: int, ready: Any, out: Any):  # type: ignore[no-untyped-def]  # process entry helper
    latencies: list[float] = []

    async def one(topics: list[str]) -> None:
        async with websockets.connect(url, compression=None, max_queue=None) as ws:
            for n, topic in enumerate(topics):
                await ws.send(
                    msgspec.json.encode({"op": "subscribe", "topic": topic, "req": n}).decode()
                )
            acks = 0
            while acks < len(topics):
                for line in str(await ws.recv()).split("\n"):
                    if msgspec.json.decode(line).get("op") == "subscribed":
                        acks += 1
            ready.release()
            if expected == 0:  # idle: stay subscribed until killed
                await asyncio.Event().wait()
            got = 0
            deadline = None
            while got < expected:
                try:
                    frame = await asyncio.wait_for(ws.recv(), 30 if deadline is None else 5)
                except TimeoutError:
                    if expected == 0 or got:
                        break
                    continue
                now = time.time()
                for line in str(frame).split("\n"):
                    event = msgspec.json.decode(line)
                    if event.get("op") == "message":
                        got += 1
                        latencies.append(now - event["payload"]["t"])
                        deadline = 1

    await asyncio.gather(*(one(topics) for topics in groups))
    out.put(latencies)


def _run_subscribers(
    url: str, groups: list[list[str]], expected: int, ready: Any, out: Any
) -> None:
    uvloop.run(_subscribe_all(url, groups, expected, ready, out))


def start_subscribers(
    url: str, groups: list[list[str]], expected: int, processes: int
) -> tuple[list[multiprocessing.Process], Any, Any]:
    ready = multiprocessing.Semaphore(0)
    out: Any = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(
            target=_run_subscribers, args=(url, groups[n::processes], expected, ready, out)
        )
        for n in range(processes)
    ]
    for proc in procs:
        proc.start()
    return procs, ready, out


# --- idle ----------------------------------------------------------------------------------


async def idle(args: argparse.Namespace) -> None:
    with ValkeyCluster(primaries=3) as cluster:
        topics = [f"idle.{n}" for n in range(args.topics)]
        groups = [topics[n : n + 100] for n in range(0, len(topics), 100)]  # 100 per socket
        async with gateway(cluster.url, cluster=True) as url:
            procs, ready, _ = start_subscribers(url, groups, 0, 1)
            for _ in groups:
                await asyncio.to_thread(ready.acquire)
            await asyncio.sleep(args.settle)
            before = [commandstats(node) for node in cluster.primaries]
            started = time.monotonic()
            await asyncio.sleep(args.window)
            after = [commandstats(node) for node in cluster.primaries]
            elapsed = time.monotonic() - started
            for proc in procs:
                proc.kill()
        totals: dict[str, int] = {}
        for b, a in zip(before, after, strict=True):
            for name, calls in a.items():
                totals[name] = totals.get(name, 0) + calls - b.get(name, 0)
        totals["info"] = totals.get("info", 0) - len(cluster.primaries)  # our second snapshot
        totals = {name: calls for name, calls in totals.items() if calls > 0}
        total = sum(totals.values())
        breakdown = ", ".join(
            f"{name} {calls / elapsed:.1f}/s" for name, calls in sorted(totals.items())
        )
        print(
            f"idle: {len(topics)} topics subscribed, 3 primaries, {elapsed:.0f} s window: "
            f"{total / elapsed:.1f} commands/s to the whole cluster ({breakdown})"
        )


# --- e2e -----------------------------------------------------------------------------------


async def publish_for(
    client: ValkeyClient, topics: Sequence[str], rate: float, duration: float, cluster: bool
) -> int:
    total = int(rate * duration)
    interval = 1.0 / rate
    per_tick = max(1, int(rate / 100))
    started = time.perf_counter()
    sent = 0
    while sent < total:
        batch: Batch | ClusterBatch = (
            ClusterBatch(is_atomic=False) if cluster else Batch(is_atomic=False)
        )
        for _ in range(min(per_tick, total - sent)):
            payload = msgspec.json.encode({"t": time.time(), "n": sent})
            add_publish(batch, topics[sent % len(topics)], payload, None, None, RETAIN)
            sent += 1
        await client.exec(batch, raise_on_error=True)  # type: ignore[arg-type]  # kind matches
        delay = started + sent * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    return total


async def e2e_round(url: str, cluster: bool, args: argparse.Namespace, tag: str) -> list[float]:
    topics = [f"e2e.{tag}.{n}" for n in range(args.e2e_topics)]
    groups = [
        [topics[(s * args.per_subscriber + j) % len(topics)] for j in range(args.per_subscriber)]
        for s in range(args.subscribers)
    ]
    client = await create_client(ValkeyDsn.from_dsn(url), cluster=cluster, name="bench", lazy=False)
    try:
        await ensure_functions(client)
        async with gateway(url, cluster=cluster) as ws_url:
            per_topic = int(args.rate * args.duration) // len(topics)
            expected = per_topic * args.per_subscriber
            procs, ready, out = start_subscribers(ws_url, groups, expected, args.client_processes)
            for _ in groups:
                await asyncio.to_thread(ready.acquire)
            await asyncio.sleep(1.0)
            await publish_for(client, topics, args.rate, args.duration, cluster)
            latencies: list[float] = []
            for _ in procs:
                latencies += await asyncio.to_thread(out.get)
            for proc in procs:
                proc.join()
    finally:
        await client.close()
    return latencies


def pct(values: list[float], q: float) -> float:
    return 1000 * values[min(len(values) - 1, int(q * (len(values) - 1)))]


async def e2e(args: argparse.Namespace) -> None:
    results: dict[str, list[float]] = {"standalone": [], "cluster": []}
    round_p99: dict[str, list[float]] = {"standalone": [], "cluster": []}
    with ValkeyProcess() as node, ValkeyCluster(primaries=3) as cluster:
        for round_ in range(args.rounds):
            for side, url, is_cluster in (
                ("standalone", node.url, False),
                ("cluster", cluster.url, True),
            ):
                lat = sorted(await e2e_round(url, is_cluster, args, f"{side[0]}{round_}"))
                results[side] += lat
                round_p99[side].append(pct(lat, 0.99))
                print(
                    f"e2e round {round_} {side:10}: {len(lat)} deliveries, "
                    f"p50 {pct(lat, 0.5):.1f} ms, p99 {pct(lat, 0.99):.1f} ms, "
                    f"max {1000 * lat[-1]:.1f} ms"
                )
    summary = {side: sorted(values) for side, values in results.items()}
    p99 = {side: pct(values, 0.99) for side, values in summary.items()}
    for side, values in summary.items():
        print(
            f"e2e {side:10} all rounds: {len(values)} deliveries, p50 {pct(values, 0.5):.1f} ms, "
            f"p99 {p99[side]:.1f} ms"
        )
    medians = {side: statistics.median(values) for side, values in round_p99.items()}
    print(
        f"e2e p99 cluster / standalone = {p99['cluster'] / p99['standalone']:.2f}x pooled, "
        f"{medians['cluster'] / medians['standalone']:.2f}x of the per-round medians "
        f"({medians['cluster']:.1f} / {medians['standalone']:.1f} ms) (target <= 1.3x)"
    )


async def main(args: argparse.Namespace) -> None:
    for load in args.loads or ["idle", "e2e"]:
        await {"idle": idle, "e2e": e2e}[load](args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("loads", nargs="*", choices=["idle", "e2e"])
    parser.add_argument("--topics", type=int, default=1000, help="idle: subscribed topics")
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--e2e-topics", type=int, default=100)
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--per-subscriber", type=int, default=5)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--gateway-src", help="run the gateway from these sources instead")
    options = parser.parse_args()
    GATEWAY_SRC = options.gateway_src
    uvloop.run(main(options))
