"""Measurement prototype, not product code: how far does a Python fan-out get on a lean path?

One process: a picows WebSocket server and one GLIDE ``XREAD BLOCK`` loop on one topic's
stream. Each batch read from Valkey is encoded once into relay envelopes (newline-separated,
as the gateway packs them) and written to every subscriber with picows' C ``transport.send``
— no per-connection queue, task or ASGI layer. It speaks just enough of the relay protocol
for the bench (``{"op":"subscribe"}`` → ``subscribed``; or the topic as the URL path
``/ws/<topic>``, nchan style) and has none of the gateway's guarantees (no resume, no gaps,
no backpressure, no auth): it bounds from above what the gateway's per-delivery Python path
costs. RESULTS.md item 6 reports what it measured.

``python -m loadtests.bench.experiments.lean_gateway --valkey valkey://127.0.0.1:6379 \
--port 9000 --topic bench.fanout``
"""

from __future__ import annotations

import argparse
import asyncio
import json

import picows
import uvloop
from glide import StreamReadOptions

from relaycore.keys import stream_key
from relaycore.streams import parse_entries
from relaycore.valkey import ValkeyDsn, create_client

__all__ = ["main"]


class Hub:
    def __init__(self) -> None:
        self.subscribers: dict[str, list[picows.WSTransport]] = {}

    def add(self, topic: str, transport: picows.WSTransport) -> None:
        self.subscribers.setdefault(topic, []).append(transport)

    def remove(self, transport: picows.WSTransport) -> None:
        for transports in self.subscribers.values():
            if transport in transports:
                transports.remove(transport)


class Listener(picows.WSListener):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        path = transport.request.path
        text = path.decode() if isinstance(path, bytes) else str(path)
        if text.startswith("/ws/"):
            self.hub.add(text[4:], transport)

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        if frame.msg_type == picows.WSMsgType.TEXT:
            request = json.loads(frame.get_payload_as_bytes())
            if request.get("op") == "subscribe":
                topic = str(request["topic"])
                self.hub.add(topic, transport)
                answer = {"op": "subscribed", "topic": topic, "last_id": None}
                transport.send(picows.WSMsgType.TEXT, json.dumps(answer).encode())
        elif frame.msg_type == picows.WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.hub.remove(transport)


async def fan_out(hub: Hub, valkey_url: str, topic: str) -> None:
    client = await create_client(
        ValkeyDsn.from_dsn(valkey_url), cluster=False, name="lean", request_timeout=5.0, lazy=False
    )
    key = stream_key(topic)
    last = "$"
    head = b'{"op":"message","topic":"%s","id":"' % topic.encode()
    while True:
        raw = await client.xread({key: last}, StreamReadOptions(block_ms=100, count=1000))
        if not raw:
            continue
        entries = parse_entries(raw[key.encode()])
        last = str(entries[-1].id)
        text = b"\n".join(
            head + b'%s","ts":%d,"payload":%s}' % (str(e.id).encode(), e.id.ms, e.payload)
            for e in entries
        )
        for transport in hub.subscribers.get(topic, ()):
            transport.send(picows.WSMsgType.TEXT, text)


async def serve(args: argparse.Namespace) -> None:
    hub = Hub()
    server = await picows.ws_create_server(lambda _request: Listener(hub), "127.0.0.1", args.port)
    async with asyncio.TaskGroup() as group:
        group.create_task(fan_out(hub, args.valkey, args.topic))
        group.create_task(server.serve_forever())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--valkey", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", default="bench.fanout")
    uvloop.run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
