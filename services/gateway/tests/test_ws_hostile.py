"""Hostile WebSocket input: every frame a client can send gets an ``error`` event (the
connection stays) or a documented close (1007, 1009, 4400) — never 1011, never a hang.

Explicit cases first, then Hypothesis over arbitrary JSON values, frames and field types
against a real gateway (served from a thread: Hypothesis drives examples synchronously).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import msgspec
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from relay_devtools.testing import UvicornServer
from relay_devtools.testing.gateway import (
    GatewayThread,
    StalledClient,
    gateway_settings,
    masked_text_frame,
    ws_client,
)
from relaycore.settings import RateLimit

Gateway = Callable[..., AbstractAsyncContextManager[UvicornServer]]
ALLOWED = {"subscribed", "unsubscribed", "pong", "error", "message", "gap"}


def deep_array(depth: int) -> str:
    return "[" * depth + "]" * depth


def deep_object(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


# (frame text, expected error code) — every one must leave the connection open.
HOSTILE: list[tuple[str, str]] = [
    (deep_array(2000), "bad_request"),
    (deep_array(20000), "bad_request"),
    ('{"op":"ping","x":' + deep_array(2000) + "}", "bad_request"),
    ('{"op":"ping","x":' + deep_object(2000) + "}", "bad_request"),
    (deep_object(3000), "bad_request"),
    ('{"op":"ping","req":"abc"}', "bad_request"),
    ('{"op":"ping","req":1.5}', "bad_request"),
    ('{"op":"ping","req":true}', "bad_request"),
    ('{"op":"ping","req":null,"extra":1}', ""),  # null req = no req: a pong
    ('{"op":"ping","req":' + "9" * 40 + "}", "bad_request"),
    ('{"op":"ping","req":9007199254740992}', "bad_request"),
    ('{"op":"ping","req":[1]}', "bad_request"),
    ('{"op":5}', "bad_request"),
    ('{"op":null}', "bad_request"),
    ('{"op":["subscribe"]}', "bad_request"),
    ("{}", "bad_request"),
    ("[]", "bad_request"),
    ("null", "bad_request"),
    ('"subscribe"', "bad_request"),
    ("1e999999", "bad_request"),
    ("", "bad_request"),
    ("   ", "bad_request"),
    ('{"op":"subscribe"}', "invalid_topic"),
    ('{"op":"subscribe","topic":5}', "bad_request"),
    ('{"op":"subscribe","topic":{"a":1}}', "bad_request"),
    ('{"op":"subscribe","topic":""}', "invalid_topic"),
    ('{"op":"subscribe","topic":"ü"}', "invalid_topic"),
    ('{"op":"subscribe","topic":"\\u0000"}', "invalid_topic"),
    ('{"op":"subscribe","topic":"\\ud800"}', "bad_request"),  # lone surrogate
    ('{"op":"subscribe","topic":"' + "a" * 5000 + '"}', "invalid_topic"),
    ('{"op":"subscribe","topic":"t","since":1.5}', "bad_request"),
    ('{"op":"subscribe","topic":"t","since":-1}', "bad_request"),
    ('{"op":"subscribe","topic":"t","since":true}', "bad_request"),
    ('{"op":"subscribe","topic":"t","since":{"id":1}}', "bad_request"),
    ('{"op":"subscribe","topic":"t","since":"9-9-9"}', "invalid_cursor"),
    ('{"op":"subscribe","topic":"t","since":"' + "9" * 40 + '"}', "invalid_cursor"),
    ('{"op":"unsubscribe","topic":[]}', "bad_request"),
    ('{"op":"auth","token":5}', "bad_request"),
    ('{"op":"auth"}', ""),  # auth none: any token is accepted, nothing answered
    ('{"op":"\\u00fc\\ud83d\\ude00"}', "unknown_op"),
    ('{"op":"ping","req":1}' + " " * 60000, ""),
    ('{"op":"ping","op":"subscribe"}', "invalid_topic"),  # the last duplicate wins
    ("\ufeff{}", "bad_request"),  # a byte-order mark
    ('{"op":"ping"}{"op":"ping"}', "bad_request"),  # two objects in one frame
]


async def expect_open(ws: Any) -> None:
    """A ping answered with its pong: the connection is open and not hung."""
    await ws.send(op="ping", req=424242)
    while True:
        event = await ws.event(wait=10)
        assert event["op"] in ALLOWED, event
        if event == {"op": "pong", "req": 424242}:
            return


@pytest.mark.parametrize(("text", "code"), HOSTILE, ids=[str(i) for i in range(len(HOSTILE))])
async def test_hostile_text_frame_gets_an_error_event(
    gateway: Gateway, text: str, code: str
) -> None:
    async with gateway() as server, ws_client(server) as ws:
        await ws.connection.send(text)
        if code:
            event = await ws.expect("error")
            assert event["code"] == code, event
            assert "req" not in event or isinstance(event["req"], int)
        await expect_open(ws)


async def test_req_of_the_wrong_type_is_never_echoed(gateway: Gateway) -> None:
    async with gateway() as server, ws_client(server) as ws:
        await ws.connection.send('{"op":"ping","req":"abc"}')
        event = await ws.expect("error")
        assert event["code"] == "bad_request"
        assert "req" not in event
        assert "req" in event["message"]  # names the offending field
        await ws.connection.send('{"op":"subscribe","topic":5,"req":9}')
        event = await ws.expect("error")
        assert (event["code"], event["req"]) == ("bad_request", 9)  # a valid req is kept


async def test_binary_and_fragmented_frames(gateway: Gateway) -> None:
    async with gateway() as server, ws_client(server) as ws:
        await ws.connection.send(b'{"op":"ping","req":1}')
        assert (await ws.expect("error"))["code"] == "bad_frame"
        await ws.connection.send(b"\xff\x00" * 1000)
        assert (await ws.expect("error"))["code"] == "bad_frame"
        # A text message in three fragments is one frame to the protocol.
        await ws.connection.send(iter(['{"op":"pi', 'ng","r', 'eq":77}']))
        assert await ws.expect("pong") == {"op": "pong", "req": 77}
        await expect_open(ws)


def read_close_code(sock: socket.socket) -> int:
    """Read server frames until a close frame; its status code."""
    buffer = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("closed without a close frame")
        buffer += chunk
        while len(buffer) >= 2:
            opcode, size = buffer[0] & 0x0F, buffer[1] & 0x7F
            offset = 2
            if size == 126:
                size, offset = int.from_bytes(buffer[2:4], "big"), 4
            elif size == 127:
                size, offset = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < offset + size:
                break
            payload, buffer = buffer[offset : offset + size], buffer[offset + size :]
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big")


async def test_invalid_utf8_text_closes_1007(gateway: Gateway) -> None:
    async with gateway() as server:
        client = StalledClient(server.host, server.port, rcvbuf=65536)
        try:
            await asyncio.to_thread(client.websocket, "/api/v1/ws")
            client.sock.sendall(masked_text_frame(b'{"op":"ping","x":"\xff\xfe"}'))
            assert await asyncio.to_thread(read_close_code, client.sock) == 1007
        finally:
            client.close()


async def test_op_flood_gets_rate_limited_then_4400(gateway: Gateway) -> None:
    async with (
        gateway(ws_op_rate=RateLimit(20, 1.0), ws_max_protocol_errors=5) as server,
        ws_client(server) as ws,
    ):
        for index in range(40):
            await ws.send(op="ping", req=index)
        events: list[dict[str, Any]] = []

        async def read_until_closed() -> None:
            while True:
                events.append(await ws.event())

        with pytest.raises(websockets.ConnectionClosed) as closed:
            await read_until_closed()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4400
        pongs = [e for e in events if e["op"] == "pong"]
        limited = [e for e in events if e.get("code") == "rate_limited"]
        assert 20 <= len(pongs) < 40  # the burst was served, then the bucket ran dry
        assert len(limited) == 5
        assert events[-1]["code"] == "protocol_violation"


async def test_a_client_within_the_rate_is_never_limited(gateway: Gateway) -> None:
    async with gateway(ws_op_rate=RateLimit(50, 1.0)) as server, ws_client(server) as ws:
        for index in range(60):  # 60 ops over ~1.5 s: within 50/s with a burst of 50
            await ws.send(op="ping", req=index)
            assert await ws.expect("pong") == {"op": "pong", "req": index}
            await asyncio.sleep(0.025)


async def test_connection_cap_per_principal_is_429_before_the_upgrade(gateway: Gateway) -> None:
    async with gateway(max_connections_per_principal=2) as server:
        async with ws_client(server) as first, ws_client(server) as second:
            await expect_open(first)
            with pytest.raises(websockets.InvalidStatus) as rejected:
                async with ws_client(server):
                    pass
            response = rejected.value.response
            assert response.status_code == 429
            assert response.headers["Retry-After"] == "1"
            body = msgspec.json.decode(response.body)
            assert body["error"]["code"] == "too_many_connections"
            # SSE streams count against the same cap.
            async with httpx.AsyncClient(base_url=server.url) as http:
                answer = await http.get("/api/v1/sse", params={"topic": "t"})
                assert answer.status_code == 429
                assert answer.json()["error"]["code"] == "too_many_connections"
            await expect_open(second)
        # Closed connections give their slots back.
        for _ in range(50):
            try:
                async with ws_client(server) as again:
                    await expect_open(again)
                break
            except websockets.InvalidStatus:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("slots were not released")


# -- Hypothesis over frames ---------------------------------------------------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_value = st.recursive(
    json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
field_value = json_value | st.sampled_from(["t.h", "0-0", "0", "1764460800000", "$", "*"])
ops = st.sampled_from(["subscribe", "unsubscribe", "ping", "auth", "nope", ""]) | json_value
frame_object = st.fixed_dictionaries(
    {},
    optional={
        "op": ops,
        "topic": field_value,
        "since": field_value,
        "req": field_value,
        "token": field_value,
        "x": json_value,
    },
)


def _text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


frames = st.one_of(
    frame_object.map(_text),
    json_value.map(_text),
    st.integers(1, 3000).map(lambda depth: '{"op":"ping","x":' + deep_array(depth) + "}"),
    st.text(max_size=200),  # not JSON at all, any Unicode
    st.binary(max_size=200),
)


@pytest.fixture(scope="module")
def threaded_gateway(valkey_url: str) -> Iterator[GatewayThread]:
    settings_ = gateway_settings(
        valkey_url, ws_max_protocol_errors=1_000_000, ws_op_rate=RateLimit(0, 1.0)
    )
    with GatewayThread(settings_) as gateway_thread:
        yield gateway_thread


@pytest.fixture(scope="module")
def sync_ws(threaded_gateway: GatewayThread) -> Iterator[ClientConnection]:
    server = threaded_gateway.server
    assert server is not None
    with connect(server.ws_url + "/api/v1/ws", compression=None, open_timeout=10) as connection:
        yield connection


def sync_until_pong(connection: ClientConnection, req: int) -> list[dict[str, Any]]:
    connection.send(_text({"op": "ping", "req": req}))
    events: list[dict[str, Any]] = []
    while True:
        raw = connection.recv(timeout=10)
        assert isinstance(raw, str)
        for line in raw.split("\n"):
            event = msgspec.json.decode(line)
            assert event["op"] in ALLOWED, event
            events.append(event)
            if event == {"op": "pong", "req": req}:
                return events


# Hypothesis scans newly loaded modules for constants, touching GLIDE's deprecated aliases.
@pytest.mark.filterwarnings("ignore:Importing from 'glide:DeprecationWarning")
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frame=frames)
def test_any_frame_gets_a_defined_answer_and_the_connection_stays(
    sync_ws: ClientConnection, frame: str | bytes
) -> None:
    sync_ws.send(frame)
    events = sync_until_pong(sync_ws, -7)
    for event in events:
        if event["op"] == "error":
            assert isinstance(event["code"], str)
            assert event.get("req") is None or isinstance(event["req"], int)
