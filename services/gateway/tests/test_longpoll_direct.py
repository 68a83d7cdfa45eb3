"""Long-polls answered inside the protocol (``relay_gateway.longpoll_direct``) answer exactly
like the ASGI endpoint, and a parked one leaves nothing behind when its client goes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import jwt

from relay_devtools.testing import UvicornServer
from relay_devtools.testing.gateway import publish
from relaycore.valkey import ValkeyClient

Gateway = Callable[..., AbstractAsyncContextManager[UvicornServer]]


async def _gauge(http: httpx.AsyncClient, count: int) -> None:
    """Until ``count`` long-polls are open (the connections gauge), for at most 5 s."""
    needle = f'relay_gateway_connections{{transport="poll"}} {count:.1f}'
    async with asyncio.timeout(5):
        while needle not in (await http.get("/metrics")).text:  # noqa: ASYNC110  # the gauge is the only signal the server gives
            await asyncio.sleep(0.02)


async def test_direct_and_asgi_polls_answer_the_same_on_an_active_topic(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    ids = await publish(valkey_client, topic, [{"n": n} for n in range(5)])
    ms = ids[2].split("-")[0]
    async with (
        gateway() as direct,
        gateway(relay_protocols=False) as plain,
        httpx.AsyncClient(base_url=direct.url, timeout=30) as one,
        httpx.AsyncClient(base_url=plain.url, timeout=30) as other,
    ):
        # The first poll of a topic starts its reader (the ASGI path on both); later ones find
        # it active, and on the relay's protocol are answered without an ASGI call.
        for http in (one, other):
            await http.get(
                "/api/v1/poll", params={"topic": topic, "since": ids[-1], "timeout": "0.05"}
            )

        async def both(**params: Any) -> dict[str, Any]:
            query = {"topic": topic, **params}
            a, b = await asyncio.gather(
                one.get("/api/v1/poll", params=query), other.get("/api/v1/poll", params=query)
            )
            assert a.status_code == b.status_code == 200
            assert a.headers["content-type"] == b.headers["content-type"] == "application/json"
            assert a.json() == b.json(), params
            return dict(a.json())

        live = asyncio.create_task(both(since=ids[-1], timeout="5"))
        await _gauge(one, 1)
        await _gauge(other, 1)
        (new,) = await publish(valkey_client, topic, [{"n": 5}])
        assert [m["id"] for m in (await live)["messages"]] == [new]
        ids.append(new)
        hot = await both(since=ids[4])  # behind by the live message: the hot window answers
        assert [m["id"] for m in hot["messages"]] == [new]
        behind = await both(since=ids[1], limit="2")  # older than the window: read from Valkey
        assert [m["id"] for m in behind["messages"]] == ids[2:4]
        caught_up = await both(since=new, timeout="0.2")
        assert caught_up == {"topic": topic, "messages": [], "next": new, "recovered": True}
        by_time = await both(since=ms, timeout="0.2")  # a bare timestamp cursor
        assert by_time["recovered"] is True
        assert by_time["messages"]
        fresh = await both(timeout="0.2")  # no since: only what is published from now on
        assert fresh["messages"] == []
        assert fresh["next"] == new
        far_ahead = await both(since="99999999999999-0", timeout="0.2")  # left to the endpoint
        assert far_ahead["recovered"] is False


async def test_a_parked_poll_whose_client_leaves_is_gone_from_the_gateway(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    (cursor,) = await publish(valkey_client, topic, ["before"])
    async with gateway() as server, httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await http.get("/api/v1/poll", params={"topic": topic, "since": cursor, "timeout": "0.05"})
        host, port = server.url.removeprefix("http://").split(":")
        request = f"GET /api/v1/poll?topic={topic}&since={cursor}&timeout=30 HTTP/1.1\r\n"
        connections = [await asyncio.open_connection(host, int(port)) for _ in range(3)]
        for _, writer in connections:
            writer.write((request + "Host: relay.test\r\n\r\n").encode())
        await _gauge(http, 3)
        for _, writer in connections[:2]:
            writer.close()
        await _gauge(http, 1)  # the two parked polls left the hub with their sockets
        (new,) = await publish(valkey_client, topic, ["after"])
        reader, writer = connections[2]
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert new.encode() in await reader.read(1000)
        await _gauge(http, 0)
        writer.close()


SECRET = "test-secret-with-enough-bytes-for-hs256"


def _token(subscribe: list[str]) -> str:
    claims = {"sub": "c", "exp": int(time.time() + 60), "topics": {"subscribe": subscribe}}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_direct_polls_check_credentials_on_every_poll(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    (cursor,) = await publish(valkey_client, topic, ["before"])
    mine = {"Authorization": f"Bearer {_token([topic])}"}
    async with (
        gateway(auth="jwt", jwt_secret=SECRET) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        params = {"topic": topic, "since": cursor, "timeout": "0.05"}
        assert (await http.get("/api/v1/poll", params=params, headers=mine)).status_code == 200
        # The topic is active now: these polls are offered to the direct handler first.
        assert (await http.get("/api/v1/poll", params=params)).status_code == 401
        other = {"Authorization": f"Bearer {_token(['other'])}"}
        assert (await http.get("/api/v1/poll", params=params, headers=other)).status_code == 403
        waiting = asyncio.create_task(
            http.get("/api/v1/poll", params={**params, "timeout": "5"}, headers=mine)
        )
        by_query = asyncio.create_task(
            http.get("/api/v1/poll", params={**params, "timeout": "5", "token": _token([topic])})
        )
        await _gauge(http, 2)
        (new,) = await publish(valkey_client, topic, ["after"])
        for answer in await asyncio.gather(waiting, by_query):
            assert answer.status_code == 200
            assert [m["id"] for m in answer.json()["messages"]] == [new]
