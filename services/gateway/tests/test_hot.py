"""The hot tier: contiguous windows, per-topic caps, the global byte cap."""

from __future__ import annotations

import time

from relay_gateway.hot import HotTier, HotWindow, Message, topic_json
from relaycore.ids import ZERO, StreamId
from relaycore.streams import StreamEntry


def message(ms: int, previous: int, payload: bytes = b"1") -> Message:
    prev = StreamId(previous, 0) if previous else ZERO
    return Message.from_entry(topic_json("t"), StreamEntry(StreamId(ms, 0), payload, None, prev))


def test_envelope_splices_payload_and_headers_verbatim() -> None:
    entry = StreamEntry(StreamId(7, 1), b'{"a": [1, 2.50]}', b'{"k":"v"}', ZERO)
    built = Message.from_entry(topic_json("t"), entry)
    fields = '"topic":"t","id":"7-1","ts":7,"payload":{"a": [1, 2.50]},"headers":{"k":"v"}}'
    assert built.envelope == ("{" + fields).encode()
    assert built.ws_bytes == ('{"op":"message",' + fields).encode()
    assert built.ws_frame == bytes((0x81, len(built.ws_bytes))) + built.ws_bytes
    assert built.sse_bytes.startswith(b"id: 7-1\nevent: message\ndata: {")


def test_window_is_contiguous_and_restarts_on_a_break() -> None:
    window = HotWindow(ZERO)
    for ms in (1, 2, 3):
        window.append(message(ms, ms - 1))
    assert window.covers(ZERO)
    assert [str(m.id) for m in window.after(StreamId(1, 0))] == ["2-0", "3-0"]
    window.append(message(9, 7))  # 8 was never seen: only 9 is known to follow 7
    assert not window.covers(StreamId(3, 0))
    assert window.covers(StreamId(7, 0))
    assert [str(m.id) for m in window.after(StreamId(7, 0))] == ["9-0"]


def test_count_cap_moves_the_base() -> None:
    now = int(time.time() * 1000)
    tier = HotTier(window=3600, max_messages=3, max_bytes=10**9)
    window = HotWindow(StreamId(now, 0))
    for n in range(1, 6):
        tier.add("t", window, message(now + n, now + n - 1))
    assert len(window) == 3
    assert window.base == StreamId(now + 2, 0)
    assert not window.covers(StreamId(now + 1, 0))


def test_age_cap_drops_old_messages() -> None:
    tier = HotTier(window=60, max_messages=100, max_bytes=10**9)
    window = HotWindow(ZERO)
    tier.add("t", window, message(1, 0))  # published in 1970: older than the window
    assert len(window) == 0
    assert window.base == StreamId(1, 0)


def test_byte_cap_evicts_the_coldest_topic_first() -> None:
    now = int(time.time() * 1000)
    one = message(now, 0).size
    tier = HotTier(window=3600, max_messages=100, max_bytes=4 * one)
    cold, hot = HotWindow(ZERO), HotWindow(ZERO)
    tier.add("cold", cold, message(now, 0))
    tier.add("cold", cold, message(now + 1, now))
    tier.add("hot", hot, message(now, 0))
    tier.add("hot", hot, message(now + 1, now))
    tier.add("hot", hot, message(now + 2, now + 1))
    assert tier.bytes <= 4 * one
    assert len(cold) == 1  # the coldest topic paid
    assert len(hot) == 3
