"""SDK subscribe throughput on one core: how many messages per second ``relay_client`` yields.

Starts a real Valkey, ingest and gateway (their own processes, pinned to the other core when
the machine has two), publishes ``--messages`` messages with the SDK's ``publish_batch``, then,
pinned to one core, iterates ``client.subscribe(topic, since="0", transport=T)`` to the last
message for each transport. Two figures per transport:

- wall rate: messages / elapsed seconds (bounded by the gateway and Valkey as well);
- CPU rate: messages / CPU seconds of this process, i.e. what one core running the SDK can
  take — the figure that other load on a shared machine disturbs least.

    uv run --frozen python -m loadtests.client.sdk_subscribe --messages 50000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import uuid

from relay_client import Message, RelayClient
from relay_devtools.testing import ServiceProcess, ValkeyProcess


def _pin(pid: int, cpus: set[int]) -> None:
    with contextlib.suppress(OSError):  # not permitted or not Linux: run unpinned
        os.sched_setaffinity(pid, cpus)


_PUBLISHER = """
import asyncio, sys
from relay_client import RelayClient
async def main(url, topic, count, payload):
    async with RelayClient(url) as client:
        for start in range(0, count, 1000):
            size = min(1000, count - start)
            await client.publish_batch([{"topic": topic, "payload": payload}] * size)
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), {"note": "x" * int(sys.argv[4])}))
"""


async def _measure(
    client: RelayClient, ingest_url: str, topic: str, transport: str, expected: int,
    *, live: bool, payload: int, server_cpus: set[int],
) -> str:  # fmt: skip
    count = 0
    publisher = None
    async with client.subscribe(topic, since=None if live else "0", transport=transport) as stream:
        if live:
            # A publisher of its own, on the services' core, once the subscription is live.
            waiting = asyncio.ensure_future(anext(stream))
            while stream.state != "live":  # noqa: ASYNC110  # the iterator task sets it
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            publisher = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _PUBLISHER, ingest_url, topic, str(expected),
                str(payload),
            )  # fmt: skip
            _pin(publisher.pid, server_cpus)
        if live:
            # The clock starts at the first message: the publisher's start-up is not counted.
            first = await waiting
            count += isinstance(first, Message)
        started_wall = time.perf_counter()
        started_cpu = time.process_time()
        async for item in stream:
            if isinstance(item, Message):
                count += 1
                if count == expected:
                    break
        wall = time.perf_counter() - started_wall
        cpu = time.process_time() - started_cpu
    if publisher is not None:
        await publisher.wait()
    mode = "live" if live else "catch-up"
    return (
        f"| {transport} | {mode} | {count:,} | {wall:.2f} | {count / wall:,.0f} | {cpu:.2f} "
        f"| {count / cpu:,.0f} |"
    )


async def _main(args: argparse.Namespace) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    sdk_cpu = {cpus[0]}
    server_cpus = set(cpus[1:]) or sdk_cpu
    payload = {"order": 42, "items": ["tea", "cake"], "note": "x" * max(0, args.payload - 50)}
    with ValkeyProcess() as valkey:
        _pin(valkey.process.pid if valkey.process else 0, server_cpus)
        async with (
            ServiceProcess("ingest", valkey.url) as ingest,
            ServiceProcess("gateway", valkey.url) as gateway,
        ):
            for process in (ingest, gateway):
                if process.process is not None:
                    _pin(process.process.pid, server_cpus)
            _pin(0, sdk_cpu)
            topic = f"bench-{uuid.uuid4().hex[:8]}"
            async with RelayClient(ingest.url, gateway.url) as client:
                for start in range(0, args.messages, 1000):
                    size = min(1000, args.messages - start)
                    await client.publish_batch([{"topic": topic, "payload": payload}] * size)
                print(f"SDK pinned to CPU {sorted(sdk_cpu)}, services to {sorted(server_cpus)}; "
                      f"{args.messages:,} messages of ~{args.payload} B payload")  # fmt: skip
                print("| transport | mode | messages | wall s | msg/s (wall) | SDK CPU s "
                      "| msg/s per SDK core |")  # fmt: skip
                print("|---|---|---|---|---|---|---|")
                for transport in args.transports.split(","):
                    row = await _measure(
                        client, ingest.url, topic, transport, args.messages, live=False,
                        payload=args.payload, server_cpus=server_cpus,
                    )  # fmt: skip
                    print(row, flush=True)
                if args.live:
                    for transport in args.transports.split(","):
                        live_topic = f"{topic}-live-{transport}"
                        row = await _measure(
                            client, ingest.url, live_topic, transport, args.messages, live=True,
                            payload=args.payload, server_cpus=server_cpus,
                        )  # fmt: skip
                        print(row, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--payload", type=int, default=100, help="approximate payload bytes")
    parser.add_argument("--transports", default="ws,sse,poll")
    parser.add_argument(
        "--live", action="store_true",
        help="also measure live delivery (a publisher process publishing while subscribed)",
    )  # fmt: skip
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
