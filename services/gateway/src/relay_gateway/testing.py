"""Test support for the gateway: real gateways on free ports, publishing like ingest does,
and a protocol-speaking WebSocket client. Used by the gateway's tests and load scripts."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import websockets
from glide import Batch, RequestError

from relay_gateway.app import create_app
from relay_gateway.httpwrites import RelayHttpProtocol
from relay_gateway.wsframes import RelayWebSocketProtocol
from relaycore.settings import Settings
from relaycore.streams import StreamRetention, add_publish, ensure_functions, is_missing_function
from relaycore.testing import UvicornServer
from relaycore.valkey import ValkeyClient

RETAIN = StreamRetention(maxlen=100_000, max_age_ms=0, idempotency_ttl_ms=60_000)


def gateway_settings(valkey_url: str, **overrides: Any) -> Settings:
    return dataclasses.replace(
        Settings(valkey_url=valkey_url, topic_linger=1.0, shutdown_drain=1.0), **overrides
    )


@contextlib.asynccontextmanager
async def run_gateway(
    settings: Settings, valkey: ValkeyClient | None = None, *, relay_protocols: bool = True
) -> AsyncIterator[UvicornServer]:
    """A gateway as ``relay-gateway`` serves it (uvicorn with the relay's protocol classes:
    raw WebSocket frames, coalesced HTTP writes); ``relay_protocols=False``: uvicorn's own
    httptools and sans-I/O WebSocket protocols, as any ASGI server would serve the app."""
    server = UvicornServer(
        create_app(settings, valkey=valkey),
        http=RelayHttpProtocol if relay_protocols else "httptools",
        ws=RelayWebSocketProtocol if relay_protocols else "websockets-sansio",
        ws_max_size=settings.max_ws_frame_bytes,
        ws_per_message_deflate=False,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
    )
    async with server.running():
        yield server


async def publish(
    client: ValkeyClient,
    topic: str,
    payloads: list[Any],
    retention: StreamRetention = RETAIN,
    headers: dict[str, str] | None = None,
) -> list[str]:
    """Publish JSON payloads exactly as ingest does (the relay_publish function); their ids."""
    batch = Batch(is_atomic=False)
    encoded_headers = msgspec.json.encode(headers) if headers else None
    for payload in payloads:
        add_publish(batch, topic, msgspec.json.encode(payload), encoded_headers, None, retention)
    try:
        results = await client.exec(batch, raise_on_error=True)
    except RequestError as error:
        if not is_missing_function(error):
            raise
        await ensure_functions(client)
        results = await client.exec(batch, raise_on_error=True)
    assert results is not None
    return [result[0].decode() for result in results]


def id_key(message_id: str) -> tuple[int, int]:
    ms, _, seq = message_id.partition("-")
    return int(ms), int(seq)


class WsClient:
    """A real ``websockets`` client speaking the gateway protocol, splitting packed frames."""

    def __init__(self, connection: websockets.ClientConnection) -> None:
        self.connection = connection
        self.pending: list[dict[str, Any]] = []

    async def send(self, **frame: Any) -> None:
        await self.connection.send(msgspec.json.encode(frame).decode())

    async def event(self, wait: float = 10.0) -> dict[str, Any]:
        while not self.pending:
            raw = await asyncio.wait_for(self.connection.recv(), wait)
            assert isinstance(raw, str), "server frames are text"
            self.pending = [msgspec.json.decode(line) for line in raw.split("\n")]
        return self.pending.pop(0)

    async def expect(self, op: str, wait: float = 10.0) -> dict[str, Any]:
        event = await self.event(wait)
        assert event["op"] == op, event
        return event

    async def subscribe(self, topic: str, since: str | None = None, req: int = 1) -> dict[str, Any]:
        frame: dict[str, Any] = {"op": "subscribe", "topic": topic, "req": req}
        if since is not None:
            frame["since"] = since
        await self.send(**frame)
        return await self.expect("subscribed")

    async def messages(self, count: int, wait: float = 10.0) -> list[dict[str, Any]]:
        received: list[dict[str, Any]] = []
        while len(received) < count:
            event = await self.event(wait)
            assert event["op"] == "message", event
            received.append(event)
        return received


@contextlib.asynccontextmanager
async def ws_client(server: UvicornServer, **kwargs: Any) -> AsyncIterator[WsClient]:
    async with websockets.connect(
        server.ws_url + "/api/v1/ws", compression=None, **kwargs
    ) as connection:
        yield WsClient(connection)


class SseReader:
    """Parses a ``text/event-stream`` response into events ``{"event", "id", "data"}``."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()
        self.comments = 0

    async def event(self, wait: float = 10.0) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        while True:
            line = await asyncio.wait_for(anext(self.lines), wait)
            if line == "":
                if fields:
                    fields["data"] = msgspec.json.decode(fields["data"])
                    return fields
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(": ")
            fields[name] = value

    async def messages(self, count: int, wait: float = 10.0) -> list[dict[str, Any]]:
        received: list[dict[str, Any]] = []
        while len(received) < count:
            event = await self.event(wait)
            assert event["event"] == "message", event
            received.append(event["data"])
        return received
