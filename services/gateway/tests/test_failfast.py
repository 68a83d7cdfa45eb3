"""Valkey stopped: what needs it answers ``unavailable`` / 503 at once, connections stay.

GLIDE would hold each command for the whole request timeout (here 5 s, to tell the two apart);
the gateway's health verdict (relay_gateway.health) fails them fast instead.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from relay_devtools.testing import ValkeyProcess
from relay_devtools.testing.gateway import gateway_settings, publish, run_gateway, ws_client
from relaycore.valkey import ValkeyDsn, create_client

FAST = 0.5  # "at once", with a margin for a shared machine


async def test_resumes_fail_fast_while_valkey_is_down_and_work_again_after(
    valkey_process: ValkeyProcess, topic: str
) -> None:
    client = await create_client(
        ValkeyDsn.from_dsn(valkey_process.url), name="relay-tests", lazy=False
    )
    settings = gateway_settings(
        valkey_process.url, valkey_timeout=5.0, valkey_probe_interval=0.3, topic_linger=60.0
    )
    try:
        first = await publish(client, topic, [1, 2, 3])
        async with (
            run_gateway(settings) as server,
            ws_client(server) as live,
            ws_client(server) as ws,
            httpx.AsyncClient(base_url=server.url, timeout=30) as http,
        ):
            await live.subscribe(topic)
            await asyncio.sleep(0.2)
            valkey_process.stop()
            # A resume that started as Valkey died: failed when the outage is known (< 5 s).
            started = time.monotonic()
            await ws.send(op="subscribe", topic=topic + "-x", since="0-0", req=1)
            event = await ws.expect("error")
            assert (event["code"], event["req"]) == ("unavailable", 1)
            assert time.monotonic() - started < 3.0
            await asyncio.sleep(0.5)

            # WebSocket: a resume outside the hot tier, and a topic the gateway does not read.
            for req, (name, since) in enumerate(
                [(topic, "0-0"), (topic + "-new", None), (topic + "-new", "0-0")], start=2
            ):
                frame = {"op": "subscribe", "topic": name, "req": req}
                if since is not None:
                    frame["since"] = since
                begun = time.monotonic()
                await ws.send(**frame)
                event = await ws.expect("error")
                assert time.monotonic() - begun < FAST, frame
                assert (event["code"], event["req"], event["topic"]) == ("unavailable", req, name)
            await ws.send(op="ping", req=9)
            assert await ws.expect("pong") == {"op": "pong", "req": 9}  # the connection stays

            # Long-poll and SSE: 503 with Retry-After, at once.
            requests = [
                ("/api/v1/poll", {"topic": topic, "since": "0-0", "timeout": "0"}),
                ("/api/v1/poll", {"topic": topic, "since": "0-0", "timeout": "20"}),
                ("/api/v1/poll", {"topic": topic + "-new", "timeout": "20"}),
                ("/api/v1/poll", {"topic": topic + "-new", "timeout": "0"}),
                ("/api/v1/sse", {"topic": topic, "since": "0-0"}),
                ("/api/v1/sse", {"topic": topic + "-new"}),
            ]
            for path, params in requests:
                begun = time.monotonic()
                response = await http.get(path, params=params)
                assert time.monotonic() - begun < FAST, (path, params)
                assert response.status_code == 503, (path, params, response.text)
                assert response.headers["retry-after"] == "1"
                assert response.json()["error"]["code"] == "unavailable"
            # What needs no Valkey still works: a live subscribe to a topic being read.
            await ws.send(op="subscribe", topic=topic, req=20)
            assert (await ws.expect("subscribed"))["req"] == 20

            valkey_process.start()
            for _ in range(100):
                try:
                    after = await publish(client, topic, [4, 5])
                    break
                except Exception:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("Valkey did not come back")
            # No gap for the live subscribers; resumes work again.
            assert [m["id"] for m in await live.messages(2, wait=20)] == after
            assert [m["id"] for m in await ws.messages(2, wait=20)] == after
            for _ in range(50):
                response = await http.get(
                    "/api/v1/poll", params={"topic": topic, "since": "0-0", "timeout": "0"}
                )
                if response.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert [m["id"] for m in response.json()["messages"]] == first + after
    finally:
        await client.close()
