"""Coalesced HTTP writes: a response's writes of one loop iteration leave as one write."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest

from relay_gateway.httpwrites import CoalescingTransport
from relay_gateway.testing import publish
from relaycore.testing import UvicornServer
from relaycore.valkey import ValkeyClient

Gateway = Callable[..., AbstractAsyncContextManager[UvicornServer]]


async def test_writes_of_one_iteration_leave_together_at_its_end() -> None:
    loop = asyncio.get_running_loop()
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
    try:
        coalescing = CoalescingTransport(transport, loop)  # type: ignore[arg-type]  # a Transport
        coalescing.write(b"HTTP/1.1 200 OK\r\n\r\n")
        coalescing.write(b"body")
        with pytest.raises(BlockingIOError):
            peer.recv(100)  # nothing written yet: both wait for the end of the iteration
        await asyncio.sleep(0)
        assert peer.recv(100) == b"HTTP/1.1 200 OK\r\n\r\nbody"
        coalescing.write(b"last")
        coalescing.close()  # close flushes first
        await asyncio.sleep(0)
        assert peer.recv(100) == b"last"
    finally:
        transport.close()
        peer.close()


@pytest.mark.parametrize("relay_protocols", [True, False], ids=["relay-protocols", "uvicorn"])
async def test_poll_answers_alike_with_and_without_origin(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str, relay_protocols: bool
) -> None:
    async with (
        gateway(relay_protocols=relay_protocols) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        ids = await publish(valkey_client, topic, [{"n": 1}, {"n": 2}])
        params = {"topic": topic, "since": "0-0", "timeout": "1"}
        plain = await http.get("/api/v1/poll", params=params)
        cors = await http.get(
            "/api/v1/poll", params=params, headers={"Origin": "https://a.example"}
        )
        assert plain.status_code == cors.status_code == 200
        assert plain.json() == cors.json()
        assert [m["id"] for m in plain.json()["messages"]] == ids
        assert "access-control-allow-origin" not in plain.headers
        assert cors.headers["access-control-allow-origin"] == "*"
        bad = await http.get("/api/v1/poll", params={"topic": topic, "limit": "0"})
        assert bad.status_code == 422
        assert bad.json()["error"]["code"] == "validation_error"
        # Keep-alive: several answers on one connection, each complete.
        for _ in range(3):
            again = await http.get("/api/v1/poll", params={**params, "timeout": "0"})
            assert [m["id"] for m in again.json()["messages"]] == ids
