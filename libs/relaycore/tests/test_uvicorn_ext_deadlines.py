"""The deadline wheel: connections' header and keep-alive deadlines on one timer per loop."""

from __future__ import annotations

import asyncio
import time

from starlette.types import Receive, Scope, Send

from relay_devtools.testing import UvicornServer
from relaycore.uvicorn_ext.coalescing import CoalescingHttpToolsProtocol
from relaycore.uvicorn_ext.deadlines import RESOLUTION, Deadlines


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


class Conn:
    def __init__(self) -> None:
        self.deadline = 0.0
        self.bucket: int | None = None
        self.fired: list[float] = []

    def deadline_passed(self) -> None:
        self.fired.append(asyncio.get_running_loop().time())


async def test_each_deadline_fires_once_within_the_resolution_and_extensions_move_it() -> None:
    loop = asyncio.get_running_loop()
    wheel = Deadlines.of(loop)
    early, extended, forgotten, disarmed = Conn(), Conn(), Conn(), Conn()
    start = loop.time()
    wheel.arm(early, start + 0.1)
    wheel.arm(extended, start + 0.1)
    wheel.arm(extended, start + 0.6)  # later: it stays in the early bucket, then moves
    wheel.arm(forgotten, start + 0.1)
    wheel.forget(forgotten)
    wheel.arm(disarmed, start + 0.1)
    disarmed.deadline = 0.0  # what a connection does when its request's headers are in
    await asyncio.sleep(0.6 + 2 * RESOLUTION)
    assert len(early.fired) == 1
    assert start + 0.1 <= early.fired[0] <= start + 0.1 + RESOLUTION + 0.1
    assert len(extended.fired) == 1
    assert start + 0.6 <= extended.fired[0] <= start + 0.6 + RESOLUTION + 0.1
    assert forgotten.fired == disarmed.fired == []
    assert wheel.buckets == {}
    assert wheel.timer is None  # no timer while nothing waits


async def test_an_earlier_deadline_moves_the_timer_forward() -> None:
    loop = asyncio.get_running_loop()
    wheel = Deadlines.of(loop)
    late, soon = Conn(), Conn()
    wheel.arm(late, loop.time() + 30)
    wheel.arm(soon, loop.time() + 0.1)
    await asyncio.sleep(0.1 + 2 * RESOLUTION)
    assert len(soon.fired) == 1
    assert late.fired == []
    wheel.forget(late)


async def test_a_connection_moved_to_a_later_bucket_does_not_delay_the_ones_waiting() -> None:
    loop = asyncio.get_running_loop()
    wheel = Deadlines.of(loop)
    moved, waiting = Conn(), Conn()
    start = loop.time()
    wheel.arm(moved, start + 0.1)
    wheel.arm(moved, start + 2.0)  # still in the 0.1 bucket: moved to a new, later one there
    wheel.arm(waiting, start + 0.6)
    await asyncio.sleep(0.6 + RESOLUTION + 0.15)
    assert len(waiting.fired) == 1
    assert waiting.fired[0] <= start + 0.6 + RESOLUTION + 0.1
    assert moved.fired == []
    wheel.forget(moved)


class Failing(Conn):
    def deadline_passed(self) -> None:
        super().deadline_passed()
        raise RuntimeError("a bug in one connection")


async def test_a_failing_callback_is_reported_and_the_others_still_fire() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        wheel = Deadlines.of(loop)
        failing, after = Failing(), Conn()
        when = loop.time() + 0.1
        wheel.arm(failing, when)
        wheel.arm(after, when)  # the same bucket
        await asyncio.sleep(0.1 + 2 * RESOLUTION)
    finally:
        loop.set_exception_handler(previous)
    assert len(failing.fired) == len(after.fired) == 1
    assert [type(context["exception"]) for context in reported] == [RuntimeError]
    assert wheel.buckets == {}


async def test_idle_kept_alive_connections_close_after_the_keep_alive_timeout() -> None:
    server = UvicornServer(hello, http=CoalescingHttpToolsProtocol, timeout_keep_alive=1)
    async with server.running():
        reader, writer = await asyncio.open_connection(server.host, server.port)
        for _ in range(3):  # each request restarts the idle clock
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(reader.readuntil(b"ok"), 5)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(0.6)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        assert 0.3 <= time.monotonic() - started < 1 + RESOLUTION + 0.5
        writer.close()
