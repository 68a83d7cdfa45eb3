"""Slowloris: clients dribbling requests cannot hold connections or slow anyone else down.

The header deadline (``RELAY_HTTP_HEADER_TIMEOUT``, :mod:`relaycore.uvicorn_ext.coalescing`) is
checked in-process on a small app, then both real services take the attack the issue names: 300
connections per service sending a request one byte a second for 20 s (each reconnecting when
cut), while a normal client keeps publishing (ingest) and polling (gateway).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from relay_devtools.testing import UvicornServer
from relay_devtools.testing.services import ServiceProcess
from relaycore.uvicorn_ext import coalescing
from relaycore.uvicorn_ext.coalescing import CoalescingHttpToolsProtocol

ATTACKERS = 300
ATTACK_SECONDS = 20.0
HEADER_TIMEOUT = 5.0


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.contextmanager
def header_timeout(seconds: float) -> Iterator[None]:
    previous = coalescing.header_timeout()
    coalescing.configure(header_timeout=seconds)
    try:
        yield
    finally:
        coalescing.configure(header_timeout=previous)


async def _read_until_closed(reader: asyncio.StreamReader, limit: float) -> bytes:
    return await asyncio.wait_for(reader.read(), limit)


async def test_slow_headers_get_408_and_the_connection_closes() -> None:
    with header_timeout(0.3):
        server = UvicornServer(hello, http=CoalescingHttpToolsProtocol)
        async with server.running():
            # A request whose headers never finish: 408 and closed, from the connection's start.
            reader, writer = await asyncio.open_connection(server.host, server.port)
            started = time.monotonic()
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            answer = await _read_until_closed(reader, 5)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert b'"code":"request_timeout"' in answer
            assert 0.25 <= time.monotonic() - started < 2
            writer.close()

            # A kept-alive connection: the first request is answered, the next one's headers
            # get their own deadline, counted from its first byte.
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            first = await asyncio.wait_for(reader.readuntil(b"ok"), 5)
            assert first.startswith(b"HTTP/1.1 200 ")
            await asyncio.sleep(0.5)  # longer than the header timeout, but idle is keep-alive's
            writer.write(b"GET / HTTP/1.1\r\n")
            started = time.monotonic()
            answer = await _read_until_closed(reader, 5)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert time.monotonic() - started < 2
            writer.close()

            # Headers in time are never cut, however the bytes arrive.
            async with httpx.AsyncClient(base_url=server.url) as client:
                assert (await client.get("/")).status_code == 200

    with header_timeout(0):
        server = UvicornServer(hello, http=CoalescingHttpToolsProtocol)
        async with server.running():
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
            with pytest.raises(TimeoutError):
                await _read_until_closed(reader, 0.6)  # 0 = off: uvicorn's own behaviour
            writer.close()


class Attack:
    """``ATTACKERS`` connections dribbling a request a byte a second, reconnecting when cut."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cuts: list[float] = []  # seconds each connection lived before the server closed it
        self.connected = 0

    async def one(self, deadline: float) -> None:
        request = b"POST /api/v1/messages HTTP/1.1\r\nHost: relay\r\nX-Padding: " + b"a" * 200
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.5)
                continue
            self.connected += 1
            opened = time.monotonic()
            try:
                for byte in request:
                    if time.monotonic() >= deadline:
                        return
                    writer.write(bytes([byte]))
                    await writer.drain()
                    # A closed connection shows as EOF within the second we wait anyway.
                    with contextlib.suppress(TimeoutError):
                        if await asyncio.wait_for(reader.read(4096), 1.0) == b"":
                            break
                        break  # an answer (408): the server is about to close
                self.cuts.append(time.monotonic() - opened)
            except (ConnectionError, OSError):
                self.cuts.append(time.monotonic() - opened)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        async with asyncio.TaskGroup() as group:
            for _ in range(ATTACKERS):
                group.create_task(self.one(deadline))


async def _normal_traffic(url: str, path: str, seconds: float, topic: str) -> list[float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while time.monotonic() < deadline:
            started = time.monotonic()
            if path == "publish":
                response = await client.post(
                    "/api/v1/messages", json={"topic": topic, "payload": {"n": len(latencies)}}
                )
                assert response.status_code == 201, response.text
            else:
                response = await client.get(
                    "/api/v1/poll", params={"topic": topic, "since": "0", "timeout": "0"}
                )
                assert response.status_code == 200, response.text
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.02)
    return latencies


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_300_slowloris_connections_per_service_do_not_slow_normal_requests(
    valkey_url: str, topic: str
) -> None:
    env = {
        "VALKEY_URL": valkey_url,
        "HTTP_HEADER_TIMEOUT": f"{HEADER_TIMEOUT:g}s",
        "ACCESS_LOG": "false",
        "SHUTDOWN_GRACE": "3s",
        "SHUTDOWN_DRAIN": "1s",
    }
    with ServiceProcess("ingest", **env) as ingest, ServiceProcess("gateway", **env) as gateway:
        attacks = {"ingest": Attack(ingest.port), "gateway": Attack(gateway.port)}
        async with asyncio.TaskGroup() as group:
            for attack in attacks.values():
                group.create_task(attack.run(ATTACK_SECONDS))
            publishing = group.create_task(
                _normal_traffic(ingest.url, "publish", ATTACK_SECONDS, topic)
            )
            polling = group.create_task(_normal_traffic(gateway.url, "poll", ATTACK_SECONDS, topic))
        for name, latencies in (("ingest", publishing.result()), ("gateway", polling.result())):
            attack = attacks[name]
            print(
                f"{name}: {len(latencies)} normal requests, p99 {_p99(latencies) * 1000:.0f} ms, "
                f"max {max(latencies) * 1000:.0f} ms; {attack.connected} slow connections, "
                f"{len(attack.cuts)} cut, longest lived {max(attack.cuts):.1f} s"
            )
            assert len(latencies) > 100
            assert _p99(latencies) < 1.0
            # Every dribbling connection was cut at the header deadline (plus a margin for a
            # shared box), none lived out the attack.
            assert len(attack.cuts) >= ATTACKERS
            assert max(attack.cuts) < HEADER_TIMEOUT + 4
        # Both services are still fine afterwards.
        for service in (ingest, gateway):
            with service.client() as http:
                assert http.get("/health").status_code == 200
