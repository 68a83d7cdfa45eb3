"""Test support for the gateway: real gateways on free ports, publishing like ingest does,
and a protocol-speaking WebSocket client. Used by the gateway's tests and load scripts."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import socket
import struct
import threading
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import httpx
import msgspec
import websockets
from glide import Batch, ClusterBatch, GlideClusterClient, RequestError, TrimByMaxLen

from relay_devtools.testing import UvicornServer
from relay_gateway.app import create_app
from relay_gateway.shutdown import Drain
from relaycore.keys import stream_key
from relaycore.settings import Settings
from relaycore.streams import StreamRetention, add_publish, ensure_functions, is_missing_function
from relaycore.uvicorn_ext import server_protocols
from relaycore.valkey import ValkeyClient

RETAIN = StreamRetention(maxlen=100_000, max_age_ms=0, idempotency_ttl_ms=60_000)


def gateway_settings(valkey_url: str, **overrides: Any) -> Settings:
    return dataclasses.replace(
        Settings(valkey_url=valkey_url, topic_linger=1.0, shutdown_drain=1.0), **overrides
    )


@contextlib.asynccontextmanager
async def run_gateway(
    settings: Settings,
    valkey: ValkeyClient | None = None,
    *,
    relay_protocols: bool = True,
    drain: Drain | None = None,
) -> AsyncIterator[UvicornServer]:
    """A gateway as ``relay-gateway`` serves it (uvicorn with the relay's protocol classes:
    raw WebSocket frames, coalesced HTTP writes); ``relay_protocols=False``: uvicorn's own
    httptools and sans-I/O WebSocket protocols, as any ASGI server would serve the app (and
    as the gateway serves it when the installed uvicorn lacks an internal the extension uses)."""
    protocols = server_protocols(websockets=True, prepared_responses=True)
    server = UvicornServer(
        create_app(settings, valkey=valkey, drain=drain),
        http=protocols.http if relay_protocols else "httptools",
        ws=protocols.ws if relay_protocols else "websockets-sansio",
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
    batch: Batch | ClusterBatch = (
        ClusterBatch(is_atomic=False)
        if isinstance(client, GlideClusterClient)
        else Batch(is_atomic=False)
    )
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


async def publish_trimmed(
    client: ValkeyClient, topic: str, payloads: list[Any], *, keep: int
) -> list[str]:
    """Publish ``payloads`` and trim the stream to its last ``keep`` entries (exact MAXLEN),
    atomically: no reader can see the entries that are trimmed. Their ids."""
    await ensure_functions(client)  # a transaction cannot retry a missing function
    batch = Batch(is_atomic=True)
    for payload in payloads:
        add_publish(batch, topic, msgspec.json.encode(payload), None, None, RETAIN)
    batch.xtrim(stream_key(topic), TrimByMaxLen(exact=True, threshold=keep))
    results = await client.exec(batch, raise_on_error=True)
    assert results is not None
    return [result[0].decode() for result in results[: len(payloads)]]


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


# /proc/net/tcp socket states (include/net/tcp_states.h).
TCP_ESTABLISHED = "01"


def tcp_states(port: int) -> dict[int, str]:
    """The server side of every TCP connection to local ``port``: remote port → state (hex).

    What a user (or ``ss``) sees: a socket that is cut is gone or no longer ``01``.
    """
    states: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if int(local.rsplit(":", 1)[1], 16) == port:
                states[int(remote.rsplit(":", 1)[1], 16)] = state
    return states


def masked_text_frame(payload: bytes) -> bytes:
    """A client → server text frame (clients must mask, RFC 6455 §5.3)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x81, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, size)
    body = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return head + mask + body


class StalledClient:
    """A raw TCP client that sends a request and then never reads again (nor answers pings).

    A tiny receive buffer makes the server's writes back up quickly, like a consumer on a slow
    link or one whose process hangs. ``local_port`` finds its server side in :func:`tcp_states`.
    """

    def __init__(self, host: str, port: int, *, rcvbuf: int = 4096) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((host, port))
        self.local_port: int = self.sock.getsockname()[1]

    def _read_head(self) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            data += chunk
        return data

    def websocket(self, path: str, *frames: dict[str, Any]) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = self._read_head()
        assert head.startswith(b"HTTP/1.1 101"), head
        for frame in frames:
            self.sock.sendall(masked_text_frame(msgspec.json.encode(frame)))

    def sse(self, path: str) -> None:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n".encode())
        head = self._read_head()
        assert head.startswith(b"HTTP/1.1 200"), head

    def close(self) -> None:
        self.sock.close()


class GatewayThread:
    """A real gateway served by an event loop in a thread of its own, for synchronous tests
    (Hypothesis drives its examples synchronously). ``restart()`` stops it the way SIGTERM
    does (the drain first: SSE streams and polls end, WebSockets get 1012) and starts a fresh
    one on a new port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Future[None] | None = None
        self.server: UvicornServer | None = None

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        """Run ``coroutine`` on the gateway's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> UvicornServer:
        ready: asyncio.Future[UvicornServer] = self.loop.create_future()

        async def serve() -> None:
            self._stop = asyncio.Event()
            drain = Drain(self.settings)
            try:
                async with run_gateway(self.settings, drain=drain) as server:
                    ready.set_result(server)
                    await self._stop.wait()
                    # As GatewayServer on SIGTERM: drain before uvicorn's own shutdown, which
                    # would otherwise wait for every open SSE stream to end by itself.
                    await drain.run()
            except BaseException as error:
                if not ready.done():
                    ready.set_exception(error)
                raise

        async def begin() -> UvicornServer:
            self._task = asyncio.ensure_future(serve())
            return await ready

        self.server = self.call(begin())
        return self.server

    def stop(self) -> None:
        stop, task = self._stop, self._task

        async def end() -> None:
            if stop is not None:
                stop.set()
            if task is not None:
                await task

        self.call(end())
        self._task = None
        self.server = None

    def restart(self) -> UvicornServer:
        self.stop()
        return self.start()

    def close(self) -> None:
        if self._task is not None:
            self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def __enter__(self) -> GatewayThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
