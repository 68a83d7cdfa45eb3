"""Whatever a client sends, the gateway answers with a defined status or event — never a 500,
never a dropped connection for a single bad frame. Inputs come from a seeded generator, so a
failure reproduces."""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import msgspec

from relay_devtools.testing import UvicornServer
from relay_devtools.testing.gateway import ws_client
from relaycore.settings import RateLimit

Gateway = Callable[..., AbstractAsyncContextManager[UvicornServer]]
ODD_TEXT = ["", " ", "0-0", "-1", "1-", "abc", "9" * 30, "1e3", "1.5", "ü", "a b", "\x00", "%", "*"]


def odd_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 2 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**70, 7, 1764460800000])
    if kind == 3:
        return rng.random() * 1e6
    if kind in (4, 5):
        return rng.choice([*ODD_TEXT, "fuzz.topic", "subscribe", "ping"])
    if kind == 6:
        return [odd_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {rng.choice(["op", "topic", "x"]): odd_value(rng, depth + 1) for _ in range(2)}


def odd_frame(rng: random.Random) -> Any:
    if rng.random() < 0.2:
        return odd_value(rng)
    keys = rng.sample(["op", "topic", "since", "req", "token", "extra"], rng.randrange(1, 6))
    frame = {key: odd_value(rng) for key in keys}
    if "op" in frame and rng.random() < 0.7:
        frame["op"] = rng.choice(["subscribe", "unsubscribe", "ping", "auth", "nope"])
    return frame


async def test_random_query_strings_get_200_or_422(gateway: Gateway) -> None:
    rng = random.Random(1)
    async with gateway() as server, httpx.AsyncClient(base_url=server.url) as http:
        for _ in range(80):
            params: dict[str, str] = {"topic": rng.choice(["fuzz.topic", *ODD_TEXT])}
            for name in ("since", "limit"):
                if rng.random() < 0.6:
                    params[name] = rng.choice([*ODD_TEXT, "0", "55", "56", "1000", "1001"])
            # Valid timeouts are all zero: the test never waits.
            params["timeout"] = rng.choice(["0", "0.0", "56", "-1", "abc", "", "1e3", "9" * 30])
            response = await http.get("/api/v1/poll", params=params)
            assert response.status_code in (200, 422), (params, response.text)
            body = response.json()
            assert ("messages" in body) if response.status_code == 200 else ("error" in body)


async def test_random_frames_get_events_and_the_connection_stays(gateway: Gateway) -> None:
    rng = random.Random(2)
    async with (
        gateway(ws_max_protocol_errors=10_000, ws_op_rate=RateLimit(0, 1.0)) as server,
        ws_client(server) as ws,
    ):
        for _ in range(150):
            await ws.connection.send(msgspec.json.encode(odd_frame(rng)).decode())
            await ws.send(op="ping", req=-1)
            while True:
                event = await ws.event()
                assert event["op"] in {"subscribed", "unsubscribed", "pong", "error"}, event
                if event == {"op": "pong", "req": -1}:
                    break
