"""What the wake-up signal costs the publish path: FCALL with and without its SPUBLISH.

Loads the relay library twice on a throwaway standalone ``valkey-server``: as shipped (each
publish function ends with ``SPUBLISH relay:{topic}:w <id>``) and with the signal removed, then
publishes the same messages through each, pipelined like ingest, and compares Valkey's own
``usec_per_call`` of FCALL (INFO commandstats, reset between runs) and the client-side rate.
With no subscriber — a standalone deployment — the signal is a dictionary lookup.

    uv run --frozen python -m loadtests.cluster.signal_cost [--messages 40000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time

from glide import Batch, GlideClient

from relay_devtools.testing import ValkeyProcess
from relaycore.streams import FUNCTION_LIBRARY, StreamRetention, add_publish
from relaycore.valkey import ValkeyDsn, create_client

RETAIN = StreamRetention(maxlen=100_000, max_age_ms=0, idempotency_ttl_ms=60_000)
UNSIGNALLED = FUNCTION_LIBRARY.replace(
    "  server.call('SPUBLISH', string.sub(stream, 1, -2) .. 'w', id)\n", ""
)


async def fcall_usec(client: GlideClient) -> float:
    info = await client.custom_command(["INFO", "commandstats"])
    text = info.decode() if isinstance(info, bytes) else str(info)
    match = re.search(r"cmdstat_fcall:calls=\d+,usec=\d+,usec_per_call=([\d.]+)", text)
    assert match is not None, text
    return float(match.group(1))


async def run(client: GlideClient, library: str, messages: int, tag: str) -> tuple[float, float]:
    await client.function_load(library, replace=True)
    await client.custom_command(["CONFIG", "RESETSTAT"])
    payload = b'{"order":42,"items":["a","b"],"note":"a typical small JSON payload"}'
    started = time.perf_counter()
    for start in range(0, messages, 200):
        batch = Batch(is_atomic=False)
        for n in range(start, min(start + 200, messages)):
            add_publish(batch, f"{tag}-{n % 100}", payload, None, None, RETAIN)
        await client.exec(batch, raise_on_error=True)
    rate = messages / (time.perf_counter() - started)
    return await fcall_usec(client), rate


async def main(messages: int, rounds: int) -> None:
    with ValkeyProcess() as server:
        client = await create_client(ValkeyDsn.from_dsn(server.url), name="bench", lazy=False)
        assert isinstance(client, GlideClient)
        for round_ in range(rounds):
            for name, library in (("signal", FUNCTION_LIBRARY), ("no signal", UNSIGNALLED)):
                usec, rate = await run(client, library, messages, f"r{round_}-{name[:2]}")
                print(f"round {round_}  {name:9}  FCALL {usec:6.2f} us/call  {rate:8.0f} msgs/s")
        await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    asyncio.run(main(options.messages, options.rounds))
