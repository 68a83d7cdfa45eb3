"""Coalesced HTTP writes: a response's writes of one loop iteration leave as one write."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx
import msgspec
import pytest

from relay_devtools.testing import UvicornServer
from relay_devtools.testing.gateway import publish
from relaycore.uvicorn_ext.coalescing import CoalescingTransport
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


async def _raw_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response as raw bytes: (head, body) (Content-Length bodies only)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


def _get(path: str, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", "Host: relay.test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _poll_connections(
    server: UvicornServer, count: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, port = server.url.removeprefix("http://").split(":")
    return [await asyncio.open_connection(host, int(port)) for _ in range(count)]


async def _waiting_polls(http: httpx.AsyncClient, count: int) -> None:
    """Until ``count`` long-polls are in flight (the connections gauge)."""
    needle = f'relay_gateway_connections{{transport="poll"}} {count:.1f}'
    while needle not in (await http.get("/metrics")).text:  # noqa: ASYNC110  # the gauge is the only signal the server gives
        await asyncio.sleep(0.02)


def _shared_answers(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("relay_gateway_poll_shared_answers_total "):
            return float(line.split()[1])
    raise AssertionError("relay_gateway_poll_shared_answers_total not exported")


async def test_waiting_polls_share_one_prepared_answer_and_keep_alive(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    (cursor,) = await publish(valkey_client, topic, ["before"])
    async with gateway() as server, httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        connections = await _poll_connections(server, 4)
        for _, writer in connections:
            writer.write(_get(f"/api/v1/poll?topic={topic}&since={cursor}&timeout=20"))
        await _waiting_polls(http, 4)
        ids = await publish(valkey_client, topic, [{"n": 1}])
        answers = [await _raw_response(reader) for reader, _ in connections]
        # The same bytes for every caught-up poll: status line, headers and body.
        assert len(set(answers)) == 1
        head, body = answers[0]
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"content-type: application/json\r\n" in head
        assert b"connection: close" not in head
        assert msgspec.json.decode(body) == {
            "topic": topic,
            "messages": [{"topic": topic, "id": ids[0], "ts": int(ids[0].split("-")[0]),
                          "payload": {"n": 1}}],
            "next": ids[0],
            "recovered": True,
        }  # fmt: skip
        metrics = (await http.get("/metrics")).text
        assert _shared_answers(metrics) == 4
        assert 'relay_gateway_deliveries_total{transport="poll"} 4.0' in metrics
        # Keep-alive: each connection takes its next poll, answered the ordinary way.
        for reader, writer in connections:
            writer.write(_get(f"/api/v1/poll?topic={topic}&since={ids[0]}&timeout=0"))
            head, body = await _raw_response(reader)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert msgspec.json.decode(body)["next"] == ids[0]
            writer.close()


async def test_prepared_answer_leaves_closing_and_cors_requests_to_the_ordinary_path(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    (cursor,) = await publish(valkey_client, topic, ["before"])
    async with gateway() as server, httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        (shared, closing, old, cors) = await _poll_connections(server, 4)
        path = f"/api/v1/poll?topic={topic}&since={cursor}&timeout=20"
        shared[1].write(_get(path))
        closing[1].write(_get(path, "Connection: close"))
        old[1].write(_get(path, version="1.0"))
        cors[1].write(_get(path, "Origin: https://a.example"))
        await _waiting_polls(http, 4)
        ids = await publish(valkey_client, topic, [2])
        bodies = []
        for reader, _ in (shared, closing, old, cors):
            head, body = await _raw_response(reader)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            bodies.append(body)
            if reader is not shared[0]:
                # Each gets what the ordinary path adds: a close, or the CORS header.
                assert (b"connection: close" in head) != (reader is cors[0])
                assert (b"access-control-allow-origin: *" in head) == (reader is cors[0])
        assert len(set(bodies)) == 1
        assert msgspec.json.decode(bodies[0])["next"] == ids[0]
        assert await closing[0].read() == b""  # closed after the answer
        assert await old[0].read() == b""
        assert _shared_answers((await http.get("/metrics")).text) == 1
        for _, writer in (shared, closing, old, cors):
            writer.close()


async def test_waiting_polls_under_plain_uvicorn_are_answered_without_the_extension(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    (cursor,) = await publish(valkey_client, topic, ["before"])
    async with (
        gateway(relay_protocols=False) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        params = {"topic": topic, "since": cursor, "timeout": "20"}
        waiting = [asyncio.create_task(http.get("/api/v1/poll", params=params)) for _ in range(3)]
        await _waiting_polls(http, 3)
        ids = await publish(valkey_client, topic, [3])
        for answer in await asyncio.gather(*waiting):
            assert answer.json()["messages"][0]["id"] == ids[0]
        assert _shared_answers((await http.get("/metrics")).text) == 0


async def test_polls_arriving_behind_at_one_cursor_share_a_prepared_answer(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    async with gateway() as server, httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        first = await http.get("/api/v1/poll", params={"topic": topic, "timeout": "0.1"})
        cursor = first.json()["next"]
        # Keep the topic read (a waiting poll) so later polls are answered from the hot window.
        waiting = asyncio.create_task(
            http.get("/api/v1/poll", params={"topic": topic, "since": cursor, "timeout": "20"})
        )
        await _waiting_polls(http, 1)
        # One message: one read, so the waiting poll's answer means it is in the hot window.
        ids = await publish(valkey_client, topic, [{"n": 1}])
        assert [m["id"] for m in (await waiting).json()["messages"]] == ids
        answers = []
        for reader, writer in await _poll_connections(server, 3):
            writer.write(_get(f"/api/v1/poll?topic={topic}&since={cursor}&timeout=20"))
            answers.append(await _raw_response(reader))
            writer.close()
        bodies = {body for _, body in answers}
        assert len(bodies) == 1
        body = msgspec.json.decode(bodies.pop())
        assert [m["id"] for m in body["messages"]] == ids
        assert body["next"] == ids[-1]
        assert body["recovered"] is True
        metrics = (await http.get("/metrics")).text
        # The waiting poll and the three that arrived behind.
        assert _shared_answers(metrics) == 4
