"""The real process: ``python -m relay_gateway``, config errors, and the SIGTERM drain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
import websockets

from relay_devtools.testing import free_port
from relay_devtools.testing.gateway import WsClient

WEBSOCKETS = 12


def gateway_env(valkey_url: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        RELAY_VALKEY_URL=valkey_url,
        RELAY_GATEWAY_HOST="127.0.0.1",
        RELAY_GATEWAY_PORT=str(port),
        RELAY_LOG_FORMAT="json",
        **extra,
    )
    return env


def test_invalid_setting_is_one_line_and_exit_1() -> None:
    env = gateway_env("valkey://127.0.0.1:1", free_port(), RELAY_HOT_WINDOW="banana")
    result = subprocess.run(
        [sys.executable, "-m", "relay_gateway"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "RELAY_HOT_WINDOW" in lines[0]


async def wait_healthy(url: str, process: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        for _ in range(200):
            assert process.returncode is None, "gateway exited"
            try:
                if (await http.get("/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("gateway did not become ready")


@pytest.mark.slow
async def test_sigterm_drains_every_client_and_exits_within_grace(
    valkey_url: str, topic: str
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    grace = 8.0
    env = gateway_env(valkey_url, port, RELAY_SHUTDOWN_GRACE="8s", RELAY_SHUTDOWN_DRAIN="2s")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay_gateway",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_healthy(url, process)
        clients = []
        for _ in range(WEBSOCKETS):
            connection = await websockets.connect(
                f"ws://127.0.0.1:{port}/api/v1/ws", compression=None
            )
            client = WsClient(connection)
            await client.subscribe(topic)
            clients.append(client)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            poll = asyncio.create_task(
                http.get("/api/v1/poll", params={"topic": topic, "timeout": "50"})
            )

            async def sse_until_end() -> int:
                lines = 0
                async with http.stream("GET", "/api/v1/sse", params={"topic": topic}) as stream:
                    async for _ in stream.aiter_lines():
                        lines += 1
                return lines

            sse = asyncio.create_task(sse_until_end())
            assert (await http.get("/ready")).status_code == 200  # leaves a keep-alive connection
            await asyncio.sleep(0.3)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            # New connections are refused now; an existing one sees the gateway not ready.
            assert (await http.get("/ready")).status_code == 503

            async def close_code(client: WsClient) -> tuple[int | None, float]:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await client.event(wait=grace)
                return (
                    closed.value.rcvd.code if closed.value.rcvd else None,
                    time.monotonic() - started,
                )

            results = await asyncio.gather(*(close_code(client) for client in clients))
            answer = await poll
            assert await asyncio.wait_for(sse, grace) >= 1  # the stream ended cleanly
            assert answer.status_code == 200
            assert answer.json()["messages"] == []
            assert answer.json()["next"]
        assert [code for code, _ in results] == [1012] * WEBSOCKETS
        moments = sorted(moment for _, moment in results)
        # Spread over the 2 s drain window, not all at once.
        assert moments[-1] - moments[0] > 0.5
        exit_code = await asyncio.wait_for(process.wait(), grace)
        assert time.monotonic() - started < grace
        assert exit_code in (0, -signal.SIGTERM)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.slow
async def test_json_logs_never_show_tokens(valkey_url: str, topic: str) -> None:
    port = free_port()
    env = gateway_env(valkey_url, port)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay_gateway",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        await wait_healthy(f"http://127.0.0.1:{port}", process)
        secret = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.c2lnbmF0dXJl"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            params = {"topic": topic, "timeout": "0", "token": secret}
            assert (await http.get("/api/v1/poll", params=params)).status_code == 200
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/api/v1/ws?token={secret}", compression=None
        ) as connection:
            await connection.send('{"op":"ping"}')
            await connection.recv()
        process.send_signal(signal.SIGTERM)
        assert process.stdout is not None
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines = output.decode().splitlines()
    assert lines
    assert secret not in output.decode()
    for line in lines:
        json.loads(line)  # every stdout line is one JSON object
    assert any("[redacted]" in line for line in lines)
