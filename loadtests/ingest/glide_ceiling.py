"""The raw GLIDE write ceiling: pipelined non-atomic Batches of XADD from ONE client.

Measured next to ``wrk`` against ingest (see ``publish.lua``) to show how close the HTTP
service gets to what the client library itself can push into Valkey on the same machine.

    uv run python loadtests/ingest/glide_ceiling.py --url valkey://127.0.0.1:6379 \\
        --seconds 10 --batch 200 --in-flight 2 [--command fcall]

``--command xadd`` sends plain ``XADD relay:{bench-glide}:s MAXLEN ~ 100000 * p <payload>``;
``--command fcall`` sends the relay publish function ingest uses (idempotency check, XADD,
trims), to separate the function's server-side cost from the HTTP service's.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from glide import Batch

from relaycore.keys import stream_key
from relaycore.streams import StreamRetention, add_publish, ensure_functions
from relaycore.valkey import ValkeyDsn, create_client

PAYLOAD = b'{"msg":"' + b"x" * 64 + b'","n":1}'
RETENTION = StreamRetention(maxlen=100_000, max_age_ms=86_400_000, idempotency_ttl_ms=300_000)


def build(command: str, topic: str, size: int) -> Batch:
    batch = Batch(is_atomic=False)
    key = stream_key(topic)
    for _ in range(size):
        if command == "xadd":
            batch.custom_command(["XADD", key, "MAXLEN", "~", "100000", "*", "p", PAYLOAD])
        else:
            add_publish(batch, topic, PAYLOAD, None, None, RETENTION)
    return batch


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="valkey://127.0.0.1:6379")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=200, help="commands per Batch")
    parser.add_argument("--in-flight", type=int, default=2, help="Batches awaited concurrently")
    parser.add_argument("--command", choices=("xadd", "fcall"), default="xadd")
    parser.add_argument("--topic", default="bench-glide")
    args = parser.parse_args()

    client = await create_client(ValkeyDsn.from_dsn(args.url), name="glide-ceiling", lazy=False)
    if args.command == "fcall":
        await ensure_functions(client)
    sent = 0
    deadline = time.perf_counter() + args.seconds

    async def writer() -> None:
        nonlocal sent
        while time.perf_counter() < deadline:
            # A fresh Batch each time, as a real producer builds one per flush.
            await client.exec(build(args.command, args.topic, args.batch), raise_on_error=True)
            sent += args.batch

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tasks:
        for _ in range(args.in_flight):
            tasks.create_task(writer())
    elapsed = time.perf_counter() - started
    await client.close()
    print(
        f"{args.command}: {sent} commands in {elapsed:.2f}s = {sent / elapsed:,.0f} msgs/s "
        f"(batch {args.batch}, {args.in_flight} in flight, one client)"
    )


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
