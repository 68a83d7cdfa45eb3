"""A load-generator process: WebSocket subscribers (picows) and long-poll loops on uvloop.

The harness starts several of these (``python -m loadtests.bench.worker``) so clients spread
over both cores and no process comes near the 20,000 open-file limit. Each one obeys JSON-line
commands on stdin and answers one JSON line per command on stdout:

- ``ws``: open ``n`` WebSockets (relay: then ``subscribe``; nchan: the URL is the channel);
- ``lp``: start ``n`` long-poll loops (bounded by ``max_seconds``);
- ``sse``: open ``n`` Server-Sent Events streams (:mod:`loadtests.bench.sseclient`);
- ``reset`` / ``count`` / ``collect``: step accounting (``collect`` ships the latency samples);
- ``probe``: WebSocket ping every connection, count the pongs (are they all still held?);
- ``close``, ``cpu``, ``exit``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import msgspec
import picows
import uvloop

from .httpclient import HttpConnection, HttpError, build_request
from .sseclient import SseError, SseStream, sse_request
from .stats import Samples, now_us, scan_timestamps

__all__ = ["main"]


class _PollAnswer(msgspec.Struct):
    next: str


_decode_poll = msgspec.json.Decoder(_PollAnswer).decode


@dataclass
class Group:
    """One set of clients of one kind (e.g. the 500 relay fan-out subscribers of this process)."""

    samples: Samples = field(default_factory=Samples)
    transports: list[picows.WSTransport] = field(default_factory=list)
    streams: list[SseStream] = field(default_factory=list)
    ready: int = 0
    pongs: int = 0
    pong_target: int = 0
    pongs_done: asyncio.Event = field(default_factory=asyncio.Event)
    closed: int = 0
    errors: list[str] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    requests: int = 0

    def error(self, text: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(text[:300])


class Subscriber(picows.WSListener):
    """Counts every benchmark message in each frame (relay packs several per frame)."""

    def __init__(self, group: Group, subscribe: bytes | None) -> None:
        self.group = group
        self.subscribe = subscribe
        self.partial = bytearray()
        self.ready = asyncio.get_running_loop().create_future()

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        if self.subscribe is None:
            self._set_ready()
        else:
            transport.send(picows.WSMsgType.TEXT, self.subscribe)

    def _set_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)
            self.group.ready += 1

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        kind = frame.msg_type
        if kind == picows.WSMsgType.PONG:
            group = self.group
            group.pongs += 1
            if group.pongs >= group.pong_target:
                group.pongs_done.set()
            return
        if kind == picows.WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if kind not in (picows.WSMsgType.TEXT, picows.WSMsgType.CONTINUATION):
            return
        received = now_us()
        data = frame.get_payload_as_bytes()
        if not frame.fin or self.partial:
            self.partial += data
            if not frame.fin:
                return
            data = bytes(self.partial)
            self.partial.clear()
        if scan_timestamps(data, received, self.group.samples) == 0 and not self.ready.done():
            if b"subscribed" in data:
                self._set_ready()
            elif b'"error"' in data:
                self.group.error(data.decode(errors="replace"))

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.group.closed += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before ready"))


class Worker:
    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}

    def group(self, name: str) -> Group:
        return self.groups.setdefault(name, Group())

    async def ws(self, cmd: dict[str, Any]) -> dict[str, Any]:
        group = self.group(cmd["group"])
        sources: list[str] = cmd.get("sources") or ["127.0.0.1"]
        subscribe = None
        if cmd["kind"] == "relay":
            subscribe = json.dumps({"op": "subscribe", "topic": cmd["topic"]}).encode()
        limit = asyncio.Semaphore(int(cmd.get("concurrency", 100)))
        deadline = time.monotonic() + float(cmd.get("timeout", 60))
        failed = 0

        async def one(index: int) -> None:
            nonlocal failed
            async with limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    failed += 1
                    return
                try:
                    async with asyncio.timeout(min(remaining, 30)):
                        transport, listener = await picows.ws_connect(
                            lambda: Subscriber(group, subscribe),
                            cmd["url"],
                            local_addr=(sources[index % len(sources)], 0),
                            enable_auto_pong=True,
                        )
                        group.transports.append(transport)
                        assert isinstance(listener, Subscriber)
                        await listener.ready
                except (OSError, TimeoutError, picows.WSError, ConnectionError) as exc:
                    failed += 1
                    group.error(f"{type(exc).__name__}: {exc}")

        async with asyncio.TaskGroup() as tg:
            for index in range(int(cmd["n"])):
                tg.create_task(one(index))
        return {
            "connected": len(group.transports),
            "ready": group.ready,
            "failed": failed,
            "errors": group.errors,
        }

    async def sse(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Open ``n`` SSE streams on ``host:port`` + ``path``; ready = the server answered 200."""
        group = self.group(cmd["group"])
        sources: list[str] = cmd.get("sources") or ["127.0.0.1"]
        host, port = cmd["host"], int(cmd["port"])
        request = sse_request(cmd["path"], f"{host}:{port}")
        limit = asyncio.Semaphore(int(cmd.get("concurrency", 100)))
        deadline = time.monotonic() + float(cmd.get("timeout", 60))
        loop = asyncio.get_running_loop()
        failed = 0

        def on_events(block: bytes) -> None:
            # ``group.samples`` is replaced on every collect: look it up per call.
            scan_timestamps(block, now_us(), group.samples)

        async def one(index: int) -> None:
            nonlocal failed
            async with limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    failed += 1
                    return
                try:
                    async with asyncio.timeout(min(remaining, 30)):
                        _, stream = await loop.create_connection(
                            lambda: SseStream(request, on_events),
                            host,
                            port,
                            local_addr=(sources[index % len(sources)], 0),
                        )
                        group.streams.append(stream)
                        await stream.ready
                        group.ready += 1
                except (OSError, TimeoutError, SseError) as exc:
                    failed += 1
                    group.error(f"{type(exc).__name__}: {exc}")

        async with asyncio.TaskGroup() as tg:
            for index in range(int(cmd["n"])):
                tg.create_task(one(index))
        return {
            "connected": len(group.streams),
            "ready": group.ready,
            "failed": failed,
            "errors": group.errors,
        }

    async def lp(self, cmd: dict[str, Any]) -> dict[str, Any]:
        group = self.group(cmd["group"])
        sources: list[str] = cmd.get("sources") or ["127.0.0.1"]
        stop_at = time.monotonic() + float(cmd.get("max_seconds", 300))
        for index in range(int(cmd["n"])):
            loop_fn = self._relay_poll if cmd["kind"] == "relay" else self._nchan_poll
            source = sources[index % len(sources)]
            group.tasks.append(asyncio.create_task(loop_fn(group, cmd, source, stop_at)))
        await asyncio.sleep(0)
        return {"started": len(group.tasks)}

    async def _relay_poll(
        self, group: Group, cmd: dict[str, Any], source: str, stop_at: float
    ) -> None:
        host, port, topic = cmd["host"], int(cmd["port"]), quote(cmd["topic"])
        since: str | None = None
        conn: HttpConnection | None = None
        while not group.stop.is_set() and time.monotonic() < stop_at:
            try:
                if conn is None or conn.closed:
                    conn = await HttpConnection.open(host, port, local_host=source)
                query = f"topic={topic}&timeout=20&limit=1000"
                if since is not None:
                    query += f"&since={quote(since)}"
                raw = build_request("GET", f"/api/v1/poll?{query}", f"{host}:{port}")
                async with asyncio.timeout(30):
                    response = await conn.request(raw)
                received = now_us()
                group.requests += 1
                if response.status != 200:
                    group.error(f"poll {response.status}: {response.body[:200]!r}")
                    await asyncio.sleep(0.1)
                    continue
                scan_timestamps(response.body, received, group.samples)
                since = _decode_poll(response.body).next
            except (OSError, HttpError, TimeoutError, msgspec.DecodeError) as exc:
                group.error(f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                conn = None
                await asyncio.sleep(0.1)
        if conn is not None:
            conn.close()

    async def _nchan_poll(
        self, group: Group, cmd: dict[str, Any], source: str, stop_at: float
    ) -> None:
        host, port, topic = cmd["host"], int(cmd["port"]), quote(cmd["topic"])
        cursor: dict[str, str] = {}
        conn: HttpConnection | None = None
        while not group.stop.is_set() and time.monotonic() < stop_at:
            try:
                if conn is None or conn.closed:
                    conn = await HttpConnection.open(host, port, local_host=source)
                raw = build_request("GET", f"/lp/{topic}", f"{host}:{port}", headers=cursor)
                async with asyncio.timeout(40):
                    response = await conn.request(raw)
                received = now_us()
                group.requests += 1
                if response.status == 304:  # nchan's long-poll timeout: ask again, same cursor
                    continue
                if response.status != 200:
                    group.error(f"poll {response.status}: {response.body[:200]!r}")
                    await asyncio.sleep(0.1)
                    continue
                scan_timestamps(response.body, received, group.samples)
                last_modified = response.headers.get(b"last-modified")
                etag = response.headers.get(b"etag")
                if last_modified is not None and etag is not None:
                    cursor = {
                        "If-Modified-Since": last_modified.decode(),
                        "If-None-Match": etag.decode(),
                    }
            except (OSError, HttpError, TimeoutError) as exc:
                group.error(f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                conn = None
                await asyncio.sleep(0.1)
        if conn is not None:
            conn.close()

    async def probe(self, cmd: dict[str, Any]) -> dict[str, Any]:
        group = self.group(cmd["group"])
        group.pongs = 0
        alive = [t for t in group.transports if not t.is_disconnected]
        group.pong_target = len(alive)
        group.pongs_done.clear()
        for transport in alive:
            transport.send_ping()
        if alive:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(float(cmd.get("timeout", 10))):
                    await group.pongs_done.wait()
        return {"open": len(alive), "pongs": group.pongs, "closed": group.closed}

    async def close(self, cmd: dict[str, Any]) -> dict[str, Any]:
        group = self.groups.pop(cmd["group"], None)
        if group is None:
            return {"closed": 0}
        group.stop.set()
        for task in group.tasks:
            task.cancel()
        for task in group.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for transport in group.transports:
            if not transport.is_disconnected:
                transport.disconnect()
        for stream in group.streams:
            stream.close()
        return {"closed": len(group.transports) + len(group.tasks) + len(group.streams)}

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd["op"]
        if op == "ws":
            return await self.ws(cmd)
        if op == "lp":
            return await self.lp(cmd)
        if op == "sse":
            return await self.sse(cmd)
        if op == "probe":
            return await self.probe(cmd)
        if op == "close":
            return await self.close(cmd)
        if op == "cpu":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return {"cpu": usage.ru_utime + usage.ru_stime}
        group = self.group(cmd["group"])
        if op == "reset":
            group.samples.reset()
            group.errors.clear()
            return {"ok": True}
        if op == "count":
            closed = group.closed + sum(s.closed for s in group.streams)
            return {"received": group.samples.received, "closed": closed}
        if op == "collect":
            samples = group.samples
            group.samples = Samples()
            return {
                "received": samples.received,
                "lat": base64.b64encode(samples.latencies.tobytes()).decode(),
                "closed": group.closed,
                "requests": group.requests,
                "errors": group.errors + [s.error for s in group.streams if s.error][:3],
            }
        raise ValueError(f"unknown op {op!r}")


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    worker = Worker()
    out = sys.stdout.buffer
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["op"] == "exit":
            break
        try:
            answer = await worker.handle(cmd)
        except Exception as exc:  # report any failure to the harness instead of dying silently
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(answer).encode() + b"\n")
        out.flush()
    for name in list(worker.groups):
        await worker.close({"group": name})


def main() -> None:
    uvloop.run(serve())


if __name__ == "__main__":
    main()
