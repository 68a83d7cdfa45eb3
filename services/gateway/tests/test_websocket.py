"""The WebSocket protocol end to end: real gateway, real Valkey, real websockets client."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from relay_gateway.testing import publish, ws_client
from relaycore.testing import UvicornServer
from relaycore.valkey import ValkeyClient

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
