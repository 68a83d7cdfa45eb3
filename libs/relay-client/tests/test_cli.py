"""The ``relay`` console script, run as a subprocess against real services."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from relay_client import RelayClient
from relay_devtools.testing import free_port

ServicesFactory = Callable[..., AbstractAsyncContextManager[Any]]
RELAY = str(Path(sys.executable).parent / "relay")


def cli_env(ingest: str, gateway: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(RELAY_INGEST_URL=ingest, RELAY_GATEWAY_URL=gateway, **extra)
    return env


async def relay(
    *args: str, env: dict[str, str], stdin: bytes | None = None, within: float = 30.0
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        RELAY, *args, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(stdin), within)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_publish_tail_info(services: ServicesFactory, topic: str) -> None:
    async with services() as local:
        env = cli_env(local.ingest_url, local.gateway_url)
        code, out, err = await relay("publish", topic, '{"n": 0}', env=env)
        assert (code, err) == (0, "")
        first = out.strip()
        code, out, _ = await relay(
            "publish", topic, "-H", "source=cli", env=env, stdin=b'{"n": 1}\n\n[2]\n"three"\n'
        )
        assert code == 0
        ids = [first, *out.split()]
        assert len(ids) == 4
        code, out, _ = await relay("tail", topic, "--since", "0", "--count", "4", "--json", env=env)
        assert code == 0
        envelopes = [json.loads(line) for line in out.splitlines()]
        assert [e["id"] for e in envelopes] == ids
        assert [e["payload"] for e in envelopes] == [{"n": 0}, {"n": 1}, [2], "three"]
        assert envelopes[1]["headers"] == {"source": "cli"}
        assert "headers" not in envelopes[0]
        code, out, _ = await relay("tail", topic, "--since", ids[2], "--count", "1", env=env)
        assert (code, out) == (0, f'{ids[3]} "three"\n')
        code, out, _ = await relay("info", topic, env=env)
        assert code == 0
        info = json.loads(out)
        assert (info["length"], info["first_id"], info["last_id"]) == (4, ids[0], ids[3])
        assert "retention" in info


@pytest.mark.slow
async def test_failures_exit_1_with_one_line(
    services: ServicesFactory, jwt_secret: str, make_jwt: Callable[..., str], topic: str
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    env = cli_env(nowhere, nowhere)
    for args in (("publish", topic, "1"), ("info", topic), ("tail", topic)):
        code, out, err = await relay(*args, env=env)
        assert (code, out) == (1, ""), args
        assert len(err.strip().splitlines()) == 1, err
        assert "cannot reach" in err
    async with services(auth="jwt", jwt_secret=jwt_secret) as local:
        env = cli_env(local.ingest_url, local.gateway_url)
        cases: list[tuple[tuple[str, ...], dict[str, str], str]] = [
            (("publish", topic, "{oops"), {}, "invalid JSON"),
            (("publish", topic, "1"), {}, "401"),
            (("publish", topic, "1"), {"RELAY_TOKEN": make_jwt(publish=[], subscribe=[])}, "403"),
            (("tail", topic, "--since", "0"), {}, "unauthorized"),
            (("info", "never-published-" + topic), {"RELAY_TOKEN": make_jwt(publish=["*"],
                                                    subscribe=[])}, "404"),
        ]  # fmt: skip
        for args, extra, expected in cases:
            code, out, err = await relay(*args, env=env | extra)
            assert (code, out) == (1, ""), (args, err)
            assert len(err.strip().splitlines()) == 1, err
            assert expected in err, err
            assert "Traceback" not in err


async def test_usage_errors_exit_2() -> None:
    env = cli_env("http://127.0.0.1:1", "http://127.0.0.1:1")
    for args in ((), ("publish",), ("tail", "t", "--transport", "carrier"), ("tail", "t",
                 "--count", "0"), ("nonsense",)):  # fmt: skip
        code, _, _ = await relay(*args, env=env)
        assert code == 2, args


async def read_lines(stream: asyncio.StreamReader, count: int, within: float = 30) -> list[Any]:
    lines = []
    async with asyncio.timeout(within):
        while len(lines) < count:
            line = await stream.readline()
            assert line, "the tail ended early"
            lines.append(json.loads(line))
    return lines


@pytest.mark.slow
async def test_tail_resumes_across_a_gateway_restart_and_ctrl_c_exits_0(
    services: ServicesFactory, gateway_process: Callable[..., Any], topic: str
) -> None:
    async with services() as local:
        gateway = await gateway_process()
        env = cli_env(local.ingest_url, gateway.url)
        tail = await asyncio.create_subprocess_exec(
            RELAY, "tail", topic, "--since", "0", "--json", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert tail.stdout is not None
            assert tail.stderr is not None

            async def publish(numbers: range) -> None:
                # The SDK publishes here: the tail under test is the subprocess.
                async with RelayClient(local.ingest_url) as client:
                    for n in numbers:
                        await client.publish(topic, {"n": n})

            await publish(range(30))
            received = await read_lines(tail.stdout, 30)
            stopping = asyncio.create_task(gateway.terminate())
            await publish(range(30, 45))
            await stopping
            await gateway.start()
            await publish(range(45, 60))
            received += await read_lines(tail.stdout, 30)
            assert [e["payload"]["n"] for e in received] == list(range(60))
            assert len({e["id"] for e in received}) == 60
            tail.send_signal(signal.SIGINT)  # Ctrl-C
            code = await asyncio.wait_for(tail.wait(), 15)
            err = (await tail.stderr.read()).decode()
            assert code == 0, err
            assert "Traceback" not in err
        finally:
            if tail.returncode is None:
                tail.kill()
                await tail.wait()


async def test_ctrl_c_stops_a_publish_waiting_on_stdin(
    services: ServicesFactory, topic: str
) -> None:
    async with services() as local:
        process = await asyncio.create_subprocess_exec(
            RELAY, "publish", topic, env=cli_env(local.ingest_url, local.gateway_url),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert process.stdin is not None
            assert process.stdout is not None
            process.stdin.write(b'{"n": 1}\n')
            await process.stdin.drain()
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            assert line.strip()
            process.send_signal(signal.SIGINT)  # while it waits for the next line
            code = await asyncio.wait_for(process.wait(), 15)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert code == 0


async def on_a_terminal(*args: str, env: dict[str, str]) -> str:
    """Run ``relay`` with its standard output on a pseudo-terminal; what it wrote there."""
    main, child = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            RELAY, *args, env=env | {"COLUMNS": "100", "TERM": "xterm-256color"},
            stdin=asyncio.subprocess.DEVNULL, stdout=child, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        os.close(child)
        child = -1
        output = bytearray()
        loop = asyncio.get_running_loop()
        while True:
            try:
                chunk = await loop.run_in_executor(None, os.read, main, 65536)
            except OSError:  # EIO: the terminal's other side closed
                break
            if not chunk:
                break
            output += chunk
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if child >= 0:
            os.close(child)
        os.close(main)
    return output.decode()


async def test_rich_output_on_a_terminal(services: ServicesFactory, topic: str) -> None:
    async with services() as local, RelayClient(local.ingest_url) as client:
        env = cli_env(local.ingest_url, local.gateway_url)
        published = await client.publish(topic, {"order": 42, "items": ["tea"]})
        shown = await on_a_terminal("tail", topic, "--since", "0", "--count", "1", env=env)
        table = await on_a_terminal("info", topic, env=env)
    assert "\x1b[" in shown  # styled
    plain = re.sub(r"\x1b\[[0-9;]*m", "", shown)
    assert published.id in plain
    assert '"order": 42' in plain  # pretty-printed over several lines
    assert len(plain.strip().splitlines()) > 3
    assert "last_id" in table
    assert published.id in table
    assert not table.lstrip().startswith("{")  # a table, not the piped JSON
