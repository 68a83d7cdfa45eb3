"""JWT on the gateway: per-topic subscribe permission, token query, expiry and refresh."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import jwt
import pytest
import websockets

from relay_devtools.testing import UvicornServer
from relay_devtools.testing.gateway import WsClient, ws_client

Gateway = Callable[..., AbstractAsyncContextManager[UvicornServer]]
SECRET = "test-secret-with-enough-bytes-for-hs256"


def token(subscribe: list[str], lifetime: float = 60.0) -> str:
    claims: dict[str, Any] = {
        "sub": "consumer-1",
        "exp": int(time.time() + lifetime),
        "topics": {"publish": [], "subscribe": subscribe},
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


def secured(gateway: Gateway) -> AbstractAsyncContextManager[UvicornServer]:
    return gateway(auth="jwt", jwt_secret=SECRET)


async def test_websocket_without_token_closes_4401(gateway: Gateway) -> None:
    async with secured(gateway) as server, ws_client(server) as ws:
        assert (await ws.expect("error"))["code"] == "unauthorized"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.event()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4401


async def test_subscribe_permission_per_topic(gateway: Gateway, topic: str) -> None:
    async with secured(gateway) as server:
        url_token = token([f"{topic}.*"])
        async with websockets.connect(
            f"{server.ws_url}/api/v1/ws?token={url_token}", compression=None
        ) as connection:
            ws = WsClient(connection)
            await ws.subscribe(f"{topic}.a", req=1)
            await ws.send(op="subscribe", topic=topic, req=2)
            error = await ws.expect("error")
            assert (error["code"], error["req"], error["topic"]) == ("forbidden", 2, topic)
        headers = {"Authorization": f"Bearer {token([topic])}"}
        async with ws_client(server, additional_headers=headers) as ws:
            await ws.subscribe(topic)


async def test_expired_token_closes_4401_unless_refreshed(gateway: Gateway, topic: str) -> None:
    async with secured(gateway) as server:
        headers = {"Authorization": f"Bearer {token([topic], lifetime=3)}"}
        async with ws_client(server, additional_headers=headers) as refreshed:
            await refreshed.subscribe(topic)
            await refreshed.send(op="auth", token=token([topic], lifetime=60))
            async with ws_client(server, additional_headers=headers) as expiring:
                await expiring.subscribe(topic)
                assert (await expiring.expect("error", wait=8))["code"] == "token_expired"
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await expiring.event()
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 4401
            # The refreshed connection outlived the first token.
            await asyncio.sleep(0.2)
            await refreshed.send(op="ping", req=1)
            assert (await refreshed.expect("pong"))["req"] == 1


async def test_poll_and_sse_need_credentials_and_permission(gateway: Gateway, topic: str) -> None:
    async with secured(gateway) as server, httpx.AsyncClient(base_url=server.url) as http:
        params = {"topic": topic, "timeout": "0"}
        assert (await http.get("/api/v1/poll", params=params)).status_code == 401
        other = {"Authorization": f"Bearer {token(['other'])}"}
        assert (await http.get("/api/v1/poll", params=params, headers=other)).status_code == 403
        mine = {"Authorization": f"Bearer {token([topic])}"}
        assert (await http.get("/api/v1/poll", params=params, headers=mine)).status_code == 200
        query = {**params, "token": token([topic])}
        assert (await http.get("/api/v1/poll", params=query)).status_code == 200
        assert (await http.get("/api/v1/sse", params={"topic": topic})).status_code == 401


def subject_token(subject: str) -> str:
    claims = {"sub": subject, "exp": int(time.time() + 60), "topics": {"subscribe": ["*"]}}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_connection_cap_counts_per_token_subject(gateway: Gateway, topic: str) -> None:
    """With JWT the principal is ``sub``: one subject's cap does not touch another's, even
    from the same address."""
    async with gateway(auth="jwt", jwt_secret=SECRET, max_connections_per_principal=1) as server:
        alice = {"Authorization": f"Bearer {subject_token('alice')}"}
        bob = {"Authorization": f"Bearer {subject_token('bob')}"}
        async with ws_client(server, additional_headers=alice) as first:
            await first.send(op="ping", req=1)
            await first.expect("pong")
            with pytest.raises(websockets.InvalidStatus) as rejected:
                async with ws_client(server, additional_headers=alice):
                    pass
            assert rejected.value.response.status_code == 429
            async with ws_client(server, additional_headers=bob) as other:
                await other.send(op="ping", req=2)
                await other.expect("pong")
            async with httpx.AsyncClient(base_url=server.url) as http:
                answer = await http.get("/api/v1/sse", params={"topic": topic}, headers=alice)
                assert answer.status_code == 429
