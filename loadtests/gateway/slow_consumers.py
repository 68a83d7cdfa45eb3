"""Slow-consumer benchmark (issue 7): non-reading clients are cut at the socket, memory stays flat.

Starts its own Valkey (the embedded ``valkey-server``) and a real ``python -m relay_gateway``
(``RELAY_HOT_MAX_BYTES=32MiB`` unless set) on free ports on 127.0.0.1, then connects, to one
topic:

* ``--ws`` (50) WebSocket clients and ``--sse`` (10) SSE clients that subscribe and never read
  again (4 KiB receive buffers, no pong) — raw sockets, so nothing reads on their behalf;
* one normal WebSocket subscriber that reads everything.

It publishes ``--mbps`` (4) MB/s for ``--duration`` (20) seconds through the ingest write path
(the ``relay_publish`` Valkey Function) and samples, every 100 ms, the gateway's server-side
sockets in ``/proc/net/tcp`` and the gateway's RSS. It reports when each stalled client's
socket left ESTABLISHED (seconds after publishing began), the gateway's RSS growth, and
whether the normal subscriber got every message in order. Exit status 1 when a target of the
issue is missed: every stalled socket gone within 15 s, RSS growth < 200 MiB, nothing lost.

    uv run python -m loadtests.gateway.slow_consumers
    uv run python -m loadtests.gateway.slow_consumers --gateway-python ../main/.venv/bin/python
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import time

import httpx
import msgspec
import psutil
import websockets
from glide import Batch

from relay_devtools.testing import ValkeyProcess, free_port
from relay_devtools.testing.gateway import TCP_ESTABLISHED, StalledClient, tcp_states
from relaycore.streams import StreamRetention, add_publish, ensure_functions
from relaycore.valkey import ValkeyDsn, create_client

RETAIN = StreamRetention(maxlen=100_000, max_age_ms=0, idempotency_ttl_ms=60_000)
TOPIC = "bench.slow"
MiB = 1024 * 1024


async def read_all(url: str, expected: int, ids: list[str], ready: asyncio.Event) -> None:
    async with websockets.connect(url, compression=None, max_queue=None, max_size=None) as ws:
        await ws.send('{"op":"subscribe","topic":"' + TOPIC + '"}')
        await ws.recv()
        ready.set()
        while len(ids) < expected:
            frame = await ws.recv()
            for line in str(frame).split("\n"):
                event = msgspec.json.decode(line)
                if event.get("op") == "message":
                    ids.append(event["id"])
                elif event.get("op") in ("gap", "error"):
                    raise AssertionError(f"the normal subscriber got {event}")


def id_key(message_id: str) -> tuple[int, int]:
    ms, _, seq = message_id.partition("-")
    return int(ms), int(seq)


async def main(args: argparse.Namespace) -> int:
    with ValkeyProcess() as valkey:
        port = free_port()
        env = {**os.environ, "RELAY_VALKEY_URL": valkey.url, "RELAY_GATEWAY_PORT": str(port),
               "RELAY_GATEWAY_HOST": "127.0.0.1", "RELAY_LOG_LEVEL": "warning",
               "RELAY_ACCESS_LOG": "false"}  # fmt: skip
        env.setdefault("RELAY_HOT_MAX_BYTES", "32MiB")
        gateway = await asyncio.create_subprocess_exec(
            args.gateway_python, "-m", "relay_gateway", env=env
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
            process = psutil.Process(gateway.pid)
            client = await create_client(ValkeyDsn.from_dsn(valkey.url), name="bench", lazy=False)
            await ensure_functions(client)

            stalled: dict[int, str] = {}  # client port -> transport
            clients: list[StalledClient] = []
            subscribe = {"op": "subscribe", "topic": TOPIC}
            for _ in range(args.ws):
                one = StalledClient("127.0.0.1", port, rcvbuf=4096)
                await asyncio.to_thread(one.websocket, "/api/v1/ws", subscribe)
                clients.append(one)
                stalled[one.local_port] = "ws"
            for _ in range(args.sse):
                one = StalledClient("127.0.0.1", port, rcvbuf=4096)
                await asyncio.to_thread(one.sse, f"/api/v1/sse?topic={TOPIC}")
                clients.append(one)
                stalled[one.local_port] = "sse"

            payload = msgspec.json.encode("x" * (args.message_bytes - 120))
            rate = args.mbps * 1_000_000 / args.message_bytes
            total = int(rate * args.duration)
            received: list[str] = []
            ready = asyncio.Event()
            reader = asyncio.create_task(
                read_all(f"ws://127.0.0.1:{port}/api/v1/ws", total, received, ready)
            )
            await ready.wait()
            await asyncio.sleep(1.0)  # every subscription has reached the hub
            states = tcp_states(port)
            held = sum(states.get(p) == TCP_ESTABLISHED for p in stalled)
            assert held == len(stalled), f"only {held} stalled clients connected"
            rss_base = process.memory_info().rss
            rss_peak = rss_base
            left: dict[int, float] = {}
            published: list[str] = []
            started = time.perf_counter()
            tick = 0.01
            per_tick = max(1, round(rate * tick))
            next_sample = started

            def sample(now: float) -> None:
                nonlocal rss_peak
                rss_peak = max(rss_peak, process.memory_info().rss)
                current = tcp_states(port)
                for client_port in stalled:
                    if client_port not in left and current.get(client_port) != TCP_ESTABLISHED:
                        left[client_port] = now - started

            while len(published) < total:
                batch = Batch(is_atomic=False)
                count = min(per_tick, total - len(published))
                for _ in range(count):
                    add_publish(batch, TOPIC, payload, None, None, RETAIN)
                results = await client.exec(batch, raise_on_error=True)
                assert results is not None
                published += [result[0].decode() for result in results]
                now = time.perf_counter()
                if now >= next_sample:
                    sample(now)
                    next_sample = now + 0.1
                delay = started + len(published) / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            publish_seconds = time.perf_counter() - started
            try:
                await asyncio.wait_for(reader, 60)
            except TimeoutError:
                reader.cancel()
            # Keep sampling until every stalled socket is gone (or 15 s after the end).
            deadline = time.perf_counter() + 15
            while len(left) < len(stalled) and time.perf_counter() < deadline:
                sample(time.perf_counter())
                await asyncio.sleep(0.1)
            sample(time.perf_counter())
            rss_end = process.memory_info().rss
            for one in clients:
                one.close()
            await client.close()
        finally:
            gateway.terminate()
            await gateway.wait()

    print(
        f"published {len(published)} msgs x {args.message_bytes} B in {publish_seconds:.1f} s "
        f"= {len(published) * args.message_bytes / publish_seconds / 1e6:.2f} MB/s"
    )
    ok = True
    for transport in ("ws", "sse"):
        ports = [p for p, kind in stalled.items() if kind == transport]
        times = sorted(left[p] for p in ports if p in left)
        gone = len(times)
        if gone:
            print(
                f"{transport}: {gone}/{len(ports)} stalled sockets left ESTABLISHED; seconds after "
                f"publishing began: min {times[0]:.2f} median {statistics.median(times):.2f} "
                f"max {times[-1]:.2f}"
            )
        else:
            print(f"{transport}: 0/{len(ports)} stalled sockets left ESTABLISHED")
        ok &= gone == len(ports) and (not times or times[-1] <= 15.0)
    growth = (rss_peak - rss_base) / MiB
    print(
        f"gateway RSS: {rss_base / MiB:.0f} MiB before, peak {rss_peak / MiB:.0f} MiB "
        f"(+{growth:.0f} MiB), {rss_end / MiB:.0f} MiB at the end"
    )
    ok &= growth < 200
    in_order = all(id_key(a) < id_key(b) for a, b in itertools.pairwise(received))
    complete = received == published
    print(
        f"normal subscriber: {len(received)}/{len(published)} messages, in order: {in_order}, "
        f"exactly the published ids: {complete}"
    )
    ok &= complete
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ws", type=int, default=50, help="stalled WebSocket clients")
    parser.add_argument("--sse", type=int, default=10, help="stalled SSE clients")
    parser.add_argument("--mbps", type=float, default=4.0, help="published MB/s")
    parser.add_argument("--message-bytes", type=int, default=4000, help="bytes per message")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of publishing")
    parser.add_argument(
        "--gateway-python",
        default=sys.executable,
        help="interpreter running the gateway (another checkout's .venv/bin/python: before/after)",
    )
    sys.exit(asyncio.run(main(parser.parse_args())))
