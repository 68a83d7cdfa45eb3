"""The WebSocket protocol end to end: real gateway, real Valkey, real websockets client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest
import websockets

from relay_devtools.testing import UvicornServer
from relay_devtools.testing.gateway import id_key, publish, ws_client
from relaycore.valkey import ValkeyClient

# Every case runs on the single node and on the three-primary cluster.
pytestmark = pytest.mark.backends

Gateway = Callable[..., AbstractAsyncContextManager[UvicornServer]]


async def test_subscribe_then_receive_live(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    async with gateway() as server, ws_client(server) as ws:
        subscribed = await ws.subscribe(topic, req=7)
        assert subscribed == {"op": "subscribed", "req": 7, "topic": topic, "last_id": None}
        ids = await publish(valkey_client, topic, [{"n": 1}, {"n": 2}], headers={"k": "v"})
        got = await ws.messages(2)
        assert [m["id"] for m in got] == ids
        assert got[0]["payload"] == {"n": 1}
        assert got[0]["headers"] == {"k": "v"}
        assert got[0]["topic"] == topic
        assert got[0]["ts"] == int(ids[0].split("-")[0])


async def test_ping_unsubscribe_and_errors_keep_the_connection(
    gateway: Gateway, topic: str
) -> None:
    async with gateway() as server, ws_client(server) as ws:
        await ws.send(op="ping", req=3)
        assert await ws.expect("pong") == {"op": "pong", "req": 3}
        await ws.connection.send("not json")
        error = await ws.expect("error")
        assert error["code"] == "bad_request"
        await ws.send(op="subscribe", topic="bad topic!", req=4)
        error = await ws.expect("error")
        assert (error["code"], error["req"]) == ("invalid_topic", 4)
        await ws.send(op="subscribe", topic=topic, since="yesterday", req=5)
        assert (await ws.expect("error"))["code"] == "invalid_cursor"
        await ws.send(op="launch", req=6)
        assert (await ws.expect("error"))["code"] == "unknown_op"
        await ws.connection.send(b"\x00binary")
        assert (await ws.expect("error"))["code"] == "bad_frame"
        await ws.subscribe(topic, req=8)
        await ws.send(op="subscribe", topic=topic, req=9)
        assert (await ws.expect("error"))["code"] == "already_subscribed"
        await ws.send(op="unsubscribe", topic=topic, req=10)
        assert await ws.expect("unsubscribed") == {"op": "unsubscribed", "req": 10, "topic": topic}
        await ws.send(op="unsubscribe", topic=topic, req=11)
        assert (await ws.expect("error"))["code"] == "not_subscribed"
        await ws.send(op="ping", req=12)
        assert await ws.expect("pong") == {"op": "pong", "req": 12}


async def test_repeated_abuse_closes_4400(gateway: Gateway) -> None:
    async with gateway(ws_max_protocol_errors=3) as server, ws_client(server) as ws:
        for _ in range(4):
            await ws.connection.send("{")
        codes = [(await ws.expect("error"))["code"] for _ in range(4)]
        assert codes == ["bad_request"] * 3 + ["protocol_violation"]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.event()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4400


async def test_frame_too_big_closes_1009(gateway: Gateway, topic: str) -> None:
    async with gateway(max_ws_frame_bytes=1024) as server, ws_client(server) as ws:
        await ws.send(op="subscribe", topic=topic, pad="x" * 2000)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.event()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009


async def test_subscription_limit(gateway: Gateway, topic: str) -> None:
    async with gateway(max_subscriptions=2) as server, ws_client(server) as ws:
        await ws.subscribe(topic + "a", req=1)
        await ws.subscribe(topic + "b", req=2)
        await ws.send(op="subscribe", topic=topic + "c", req=3)
        error = await ws.expect("error")
        assert (error["code"], error["req"], error["topic"]) == (
            "too_many_subscriptions",
            3,
            topic + "c",
        )


async def test_subscribed_reports_the_newest_id(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    ids = await publish(valkey_client, topic, [1, 2])
    async with gateway() as server, ws_client(server) as ws:
        subscribed = await ws.subscribe(topic)
        assert subscribed["last_id"] == ids[-1]
        assert "recovered" not in subscribed
        more = await publish(valkey_client, topic, [3])
        assert [m["id"] for m in await ws.messages(1)] == more


async def test_origin_not_allowed_gets_403(gateway: Gateway) -> None:
    async with gateway(allowed_origins=("https://good.example",)) as server:
        with pytest.raises(websockets.InvalidStatus) as rejected:
            async with ws_client(server, origin="https://evil.example"):
                pass
        assert rejected.value.response.status_code == 403
        async with ws_client(server, origin="https://good.example") as ws:
            await ws.send(op="ping")
            await ws.expect("pong")


async def test_two_gateways_on_one_valkey(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    async with (
        gateway() as first,
        gateway() as second,
        ws_client(first) as a,
        ws_client(second) as b,
    ):
        await a.subscribe(topic)
        await b.subscribe(topic)
        ids = await publish(valkey_client, topic, list(range(50)))
        assert [m["id"] for m in await a.messages(50)] == ids
        assert [m["id"] for m in await b.messages(50)] == ids


async def test_live_reset_is_a_gap_event(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    async with gateway() as server, ws_client(server) as ws:
        await ws.subscribe(topic)
        first = await publish(valkey_client, topic, [1, 2])
        await ws.messages(2)
        # The stream is lost (as if Valkey restarted without its data) and written again.
        await valkey_client.delete([f"relay:{{{topic}}}:s"])
        await asyncio.sleep(0.005)  # new ids must pass the old ones for XREAD to see them
        again = await publish(valkey_client, topic, [3])
        assert id_key(again[0]) > id_key(first[-1])
        gap = await ws.expect("gap")
        assert gap == {"op": "gap", "topic": topic, "reason": "reset", "from": again[0]}
        assert [m["id"] for m in await ws.messages(1)] == again
