"""The raw frame path: frames built once, written in order with ASGI sends, fallback without it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import websockets
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from relay_devtools.testing import UvicornServer
from relay_devtools.testing.gateway import id_key, publish, ws_client
from relaycore.frames import frame_writer, text_frame
from relaycore.uvicorn_ext.websocket import RelayWebSocketProtocol
from relaycore.valkey import ValkeyClient

Gateway = Callable[..., AbstractAsyncContextManager[UvicornServer]]


async def lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
def test_text_frame_parses_as_one_unmasked_final_text_frame(size: int) -> None:
    payload = ("é" * (size // 2) + "x" * (size % 2)).encode()
    reader = StreamReader()
    reader.feed_data(text_frame(payload))
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
    else:
        raise AssertionError("the frame is incomplete")
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, payload)


async def test_raw_frames_keep_order_with_asgi_sends() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        await receive()
        await send({"type": "websocket.accept"})
        writer = frame_writer(scope)
        seen["writer"] = writer is not None
        assert writer is not None
        assert writer.frames_writable
        await send({"type": "websocket.send", "text": "one"})
        writer.write_frames(text_frame(b"two") + text_frame(b"three"))
        await send({"type": "websocket.send", "text": "four"})
        await send({"type": "websocket.close", "code": 4008})
        seen["after_close"] = writer.frames_writable
        while (await receive())["type"] != "websocket.disconnect":
            pass

    server = UvicornServer(app, ws=RelayWebSocketProtocol)
    async with server.running(), websockets.connect(server.ws_url) as client:
        got = [await client.recv() for _ in range(4)]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await client.recv()
    assert got == ["one", "two", "three", "four"]
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4008
    assert seen == {"writer": True, "after_close": False}


async def test_plain_sans_io_server_offers_no_raw_path() -> None:
    seen: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        await receive()
        seen.append(frame_writer(scope) is not None)
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    server = UvicornServer(app, ws="websockets-sansio")
    async with server.running(), websockets.connect(server.ws_url) as client:
        with pytest.raises(websockets.ConnectionClosed):
            await client.recv()
    assert seen == [False]


@pytest.mark.parametrize("relay_protocols", [True, False], ids=["relay-protocols", "uvicorn"])
async def test_live_messages_and_replies_arrive_in_order(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str, relay_protocols: bool
) -> None:
    async with gateway(relay_protocols=relay_protocols) as server, ws_client(server) as ws:
        await ws.subscribe(topic, req=1)
        ids: list[str] = []
        for round_ in range(5):
            ids += await publish(valkey_client, topic, [{"n": n} for n in range(1 + round_ * 40)])
            await ws.send(op="ping", req=round_)
        received: list[str] = []
        pongs: list[int] = []
        while len(received) < len(ids) or len(pongs) < 5:
            event = await ws.event()
            if event["op"] == "pong":
                pongs.append(event["req"])
            else:
                assert event["op"] == "message", event
                received.append(event["id"])
        assert received == ids
        assert pongs == list(range(5))
        assert sorted(received, key=id_key) == received


async def test_fan_out_reaches_every_subscriber(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    async with gateway() as server:
        clients = [ws_client(server) for _ in range(20)]
        sockets = [await client.__aenter__() for client in clients]
        try:
            for ws in sockets:
                await ws.subscribe(topic)
            ids = await publish(valkey_client, topic, [{"n": n} for n in range(300)])
            results = await asyncio.gather(*(ws.messages(len(ids)) for ws in sockets))
            for got in results:
                assert [m["id"] for m in got] == ids
        finally:
            for client in clients:
                await client.__aexit__(None, None, None)
