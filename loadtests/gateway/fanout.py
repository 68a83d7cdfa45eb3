"""Fan-out benchmark: N WebSocket subscribers on one topic of one gateway.

Starts its own Valkey (the embedded ``valkey-server``) and a real ``python -m relay_gateway``
process on free ports on 127.0.0.1, connects ``--subscribers`` WebSocket clients to one topic,
publishes ``--rate`` messages/s for ``--duration`` seconds through the ingest write path (the
``relay_publish`` Valkey Function), and reports deliveries/s and the end-to-end latency
(publish call → client receive) percentiles. Clients are spread over ``--client-processes``
processes so the load generator is less of a bottleneck than the gateway.

    uv run python loadtests/gateway/fanout.py --subscribers 1000 --rate 100 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
from typing import Any

import httpx
import msgspec
import uvloop
import websockets
from glide import Batch

from relaycore.streams import StreamRetention, add_publish, ensure_functions
from relaycore.testing import ValkeyProcess, free_port
from relaycore.valkey import ValkeyDsn, create_client

RETAIN = StreamRetention(maxlen=100_000, max_age_ms=0, idempotency_ttl_ms=60_000)
TOPIC = "bench.fanout"


async def subscribers(url: str, count: int, expected: int, ready: Any, out: Any) -> None:
    latencies: list[float] = []
    received = 0
    done = asyncio.Event()

    async def one() -> None:
        nonlocal received
        async with websockets.connect(url, compression=None, max_queue=None) as ws:
            await ws.send('{"op":"subscribe","topic":"' + TOPIC + '"}')
            await ws.recv()
            ready.release()
            got = 0
            while got < expected:
                frame = await ws.recv()
                now = time.time()
                for line in str(frame).split("\n"):
                    event = msgspec.json.decode(line)
                    if event.get("op") == "message":
                        got += 1
                        latencies.append(now - event["payload"]["t"])
            received += got
        if received >= expected * count:
            done.set()

    await asyncio.gather(*(one() for _ in range(count)))
    out.put(latencies)


def run_subscribers(url: str, count: int, expected: int, ready: Any, out: Any) -> None:
    uvloop.run(subscribers(url, count, expected, ready, out))


async def main(args: argparse.Namespace) -> None:
    with ValkeyProcess() as valkey:
        port = free_port()
        env = {**os.environ, "RELAY_VALKEY_URL": valkey.url, "RELAY_GATEWAY_PORT": str(port),
               "RELAY_GATEWAY_HOST": "127.0.0.1", "RELAY_LOG_LEVEL": "warning"}  # fmt: skip
        gateway = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay_gateway", env=env
        )
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                for _ in range(200):
                    try:
                        if (await http.get("/ready")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)
            client = await create_client(ValkeyDsn.from_dsn(valkey.url), name="bench", lazy=False)
            await ensure_functions(client)
            total = int(args.rate * args.duration)
            ready = multiprocessing.Semaphore(0)
            out: multiprocessing.Queue[list[float]] = multiprocessing.Queue()
            per_process = args.subscribers // args.client_processes
            url = f"ws://127.0.0.1:{port}/api/v1/ws"
            processes = [
                multiprocessing.Process(
                    target=run_subscribers, args=(url, per_process, total, ready, out)
                )
                for _ in range(args.client_processes)
            ]
            for process in processes:
                process.start()
            for _ in range(per_process * args.client_processes):
                await asyncio.to_thread(ready.acquire)
            await asyncio.sleep(0.5)
            started = time.perf_counter()
            interval = 1.0 / args.rate
            batch_size = max(1, int(args.rate / 100))  # publish in 10 ms ticks
            sent = 0
            while sent < total:
                batch = Batch(is_atomic=False)
                for _ in range(min(batch_size, total - sent)):
                    payload = msgspec.json.encode({"t": time.time(), "n": sent})
                    add_publish(batch, TOPIC, payload, None, None, RETAIN)
                    sent += 1
                await client.exec(batch, raise_on_error=True)
                delay = started + sent * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            latencies: list[float] = []
            for _ in processes:
                latencies += await asyncio.to_thread(out.get)
            elapsed = time.perf_counter() - started
            for process in processes:
                process.join()
            await client.close()
        finally:
            gateway.terminate()
            await gateway.wait()
    latencies.sort()
    deliveries = len(latencies)
    print(
        f"subscribers={per_process * args.client_processes} messages={total} "
        f"deliveries={deliveries} in {elapsed:.2f}s -> {deliveries / elapsed:,.0f} deliveries/s"
    )
    print(f"latency ms: p50={1000 * statistics.median(latencies):.1f} "
          f"p99={1000 * latencies[int(0.99 * (deliveries - 1))]:.1f} "
          f"max={1000 * latencies[-1]:.1f}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="messages/s published")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--client-processes", type=int, default=2)
    uvloop.run(main(parser.parse_args()))
