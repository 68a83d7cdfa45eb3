"""What one held, subscribed, idle WebSocket costs the gateway: RSS and Python allocations.

    uv run python -m loadtests.gateway.idle_memory --connections 3000

Runs a real gateway in this process (uvicorn with the relay's protocols, uvloop, a real
``valkey-server``) and opens the connections from the bench's picows worker processes (so the
clients' memory is not counted), each subscribed to one topic like ``make bench``'s ``conns``
scenario. Prints the RSS growth per connection and, from ``tracemalloc`` snapshots taken before
and after, the Python allocations per connection grouped by source line, largest first: where
to cut. tracemalloc itself inflates RSS, so the RSS figure comes from a first run without it
(``--no-trace`` prints only that).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tracemalloc

import uvloop
from loadtests.bench.pool import WorkerPool, split
from loadtests.bench.procstat import rss_kib

from relay_devtools.testing import ValkeyProcess
from relay_devtools.testing.gateway import gateway_settings, run_gateway
from relaycore.runtime import tune_gc

SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]


async def measure(connections: int, trace: bool, top: int) -> None:
    with ValkeyProcess() as valkey:
        settings = gateway_settings(valkey.url, access_log=False, log_level="warning")
        async with run_gateway(settings) as server:
            pool = WorkerPool(3)
            await pool.start()
            try:
                url = server.ws_url + "/api/v1/ws"
                # Warm up: the first connections build caches that are not per connection.
                await _open(pool, url, "warm", 30)
                await pool.all({"op": "close", "group": "warm"})
                await asyncio.sleep(1.0)
                gc.collect()
                tune_gc()
                if trace:
                    tracemalloc.start(4)
                before = tracemalloc.take_snapshot() if trace else None
                rss_before = rss_kib(os.getpid())
                ready = await _open(pool, url, "idle", connections)
                await asyncio.sleep(2.0)
                gc.collect()
                rss_after = rss_kib(os.getpid())
                after = tracemalloc.take_snapshot() if trace else None
                per_conn = (rss_after - rss_before) / max(ready, 1)
                print(
                    f"{ready}/{connections} subscribed; RSS {rss_before} -> {rss_after} KiB:"
                    f" {per_conn:.2f} KiB per connection" + (" (tracemalloc on)" if trace else "")
                )
                if before is not None and after is not None:
                    stats = after.compare_to(before, "lineno")
                    total = sum(s.size_diff for s in stats)
                    print(f"Python allocations: {total / max(ready, 1) / 1024:.2f} KiB per conn")
                    for stat in stats[:top]:
                        frame = stat.traceback[0]
                        print(
                            f"  {stat.size_diff / max(ready, 1):8.0f} B  "
                            f"{stat.count_diff / max(ready, 1):5.1f} blocks  "
                            f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"
                        )
                await pool.all({"op": "close", "group": "idle"}, limit_s=120)
            finally:
                await pool.stop()


async def _open(pool: WorkerPool, url: str, group: str, total: int) -> int:
    answers = await pool.each(
        [
            {
                "op": "ws",
                "group": group,
                "kind": "relay",
                "url": url,
                "topic": "bench.idle",
                "n": n,
                "sources": SOURCES,
                "concurrency": 200,
                "timeout": 150,
            }
            for n in split(total, pool.size)
        ],
        limit_s=180,
    )
    return sum(int(a["ready"]) for a in answers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-trace", action="store_true", help="RSS only, no tracemalloc")
    args = parser.parse_args()
    uvloop.run(measure(args.connections, not args.no_trace, args.top))


if __name__ == "__main__":
    main()
