"""The SSE subscriber's parsing: head, chunked framing, event blocks split anywhere."""

from __future__ import annotations

import asyncio

import pytest
from loadtests.bench.sseclient import SseError, SseParser, SseStream, sse_request
from loadtests.bench.stats import Samples, make_payload, scan_timestamps

EVENTS = [
    b": connected\n\n",
    b"id: 1-0\nevent: message\ndata: " + make_payload(0, sent_us=1_000) + b"\n\n",
    b"id: 1-1\nevent: message\ndata: " + make_payload(1, sent_us=2_000) + b"\n\n",
    b"id: 1-2\nevent: message\ndata: " + make_payload(2, sent_us=3_000) + b"\n\n",
]
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def _chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)


def _feed_in_pieces(parser: SseParser, raw: bytes, size: int) -> bytes:
    return b"".join(parser.feed(raw[i : i + size]) for i in range(0, len(raw), size))


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 64, 10_000])
def test_chunked_stream_split_anywhere_gives_every_event_once(piece: int) -> None:
    # One chunk per event, then a chunk holding two events and one cut in the middle of a
    # timestamp: the parser must only ever hand out whole event blocks.
    body = EVENTS[1] + EVENTS[2] + EVENTS[3]
    cut = body.index(b'"bench_t":') + 14
    raw = HEAD + _chunked([EVENTS[0], EVENTS[1], EVENTS[2] + EVENTS[3], body[:cut], body[cut:]])
    parser = SseParser()
    out = _feed_in_pieces(parser, raw, piece)
    assert parser.status == 200
    assert out == b"".join(EVENTS) + body
    samples = Samples()
    assert scan_timestamps(out, 10_000, samples) == 6
    assert sorted(samples.latencies) == [7_000, 7_000, 8_000, 8_000, 9_000, 9_000]


def test_close_delimited_body_and_incomplete_event_is_held_back() -> None:
    parser = SseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n") == b""
    assert parser.feed(EVENTS[1][:-1]) == b""  # last "\n" missing: not complete yet
    assert parser.feed(b"\n" + EVENTS[2][:10]) == EVENTS[1]
    assert parser.feed(EVENTS[2][10:]) == EVENTS[2]


def test_last_chunk_ends_the_stream_and_chunk_extensions_are_ignored() -> None:
    parser = SseParser()
    out = parser.feed(HEAD + b"%x;ext=1\r\n%s\r\n0\r\n\r\n" % (len(EVENTS[1]), EVENTS[1]))
    assert out == EVENTS[1]
    assert parser.ended


def test_bad_status_line_and_bad_chunk_size_are_errors() -> None:
    with pytest.raises(SseError):
        SseParser().feed(b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(SseError):
        SseParser().feed(HEAD + b"zz\r\n")


def test_non_200_answer_has_its_status() -> None:
    parser = SseParser()
    parser.feed(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert parser.status == 404


def test_sse_request_asks_for_an_event_stream() -> None:
    raw = sse_request("/sse/t", "127.0.0.1:1")
    assert raw.startswith(b"GET /sse/t HTTP/1.1\r\nHost: 127.0.0.1:1\r\n")
    assert b"Accept: text/event-stream\r\n" in raw
    assert raw.endswith(b"\r\n\r\n")


async def test_stream_over_a_real_socket() -> None:
    """A server that writes the head and events in odd pieces; ready on 200, every event once."""
    requests: list[bytes] = []
    served = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            requests.append(await reader.readuntil(b"\r\n\r\n"))
            raw = HEAD + _chunked(EVENTS)
            for start in range(0, len(raw), 37):
                writer.write(raw[start : start + 37])
                await writer.drain()
                await asyncio.sleep(0)
            await reader.read()  # until the client closes
        finally:
            writer.close()
            await writer.wait_closed()
            served.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    blocks: list[bytes] = []
    got_all = asyncio.Event()

    def on_events(block: bytes) -> None:
        blocks.append(block)
        if b"".join(blocks).count(b"bench_t") == 3:
            got_all.set()

    loop = asyncio.get_running_loop()
    request = sse_request("/api/v1/sse?topic=t", f"127.0.0.1:{port}")
    _, stream = await loop.create_connection(
        lambda: SseStream(request, on_events), "127.0.0.1", port
    )
    async with asyncio.timeout(10):
        await stream.ready
        await got_all.wait()
    stream.close()
    async with asyncio.timeout(10):
        await served.wait()
    server.close()
    await server.wait_closed()
    assert requests[0].startswith(b"GET /api/v1/sse?topic=t HTTP/1.1\r\n")
    assert b"".join(blocks) == b"".join(EVENTS)
    assert stream.error == ""
