"""Messages as the gateway holds them, and the hot tier: each topic's recent window in memory.

A :class:`Message` is built once when a reader (or a history read) brings an entry in, and
carries its delivery encodings, each made once on first use and then shared by every
subscriber of that transport: the envelope JSON (long-poll), the WebSocket ``message`` event and
the SSE event block.

A :class:`HotWindow` holds *every* message of its topic with id in ``(base, newest]`` — a
contiguous run, never a sample — so a resume from a cursor at or after ``base`` is answered
exactly from memory. It is capped per topic by age (``RELAY_HOT_WINDOW``) and count
(``RELAY_HOT_MAX_MESSAGES``); :class:`HotTier` caps all windows together by bytes
(``RELAY_HOT_MAX_BYTES``), evicting from the topics that received a message least recently.
"""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict

import msgspec

from relaycore.frames import text_frame
from relaycore.ids import ZERO, StreamId
from relaycore.prepared import PreparedResponse, stream_chunk
from relaycore.streams import StreamEntry

__all__ = ["Batch", "HotTier", "HotWindow", "Message"]

_json = msgspec.json.Encoder()
# Fixed per-message overhead of the Python objects, for the byte cap's estimate.
_OVERHEAD = 240


class Message:
    """One delivered message: id, previous id (for gap detection) and its encodings."""

    __slots__ = ("_frame", "_sse", "_ws", "envelope", "id", "previous")

    def __init__(self, id: StreamId, previous: StreamId, envelope: bytes) -> None:
        self.id = id
        self.previous = previous
        self.envelope = envelope
        self._ws: bytes | None = None
        self._frame: bytes | None = None
        self._sse: bytes | None = None

    @classmethod
    def from_entry(cls, topic_json: bytes, entry: StreamEntry) -> Message:
        """Build the envelope ``{"topic","id","ts","payload","headers"?}`` by concatenation.

        The payload and headers are stored as JSON by the publish path, so they are spliced in
        verbatim: the payload comes back byte-for-byte as posted, and nothing is re-encoded.
        """
        id_text = str(entry.id).encode()
        parts = [
            b'{"topic":',
            topic_json,
            b',"id":"',
            id_text,
            b'","ts":',
            str(entry.id.ms).encode(),
            b',"payload":',
            entry.payload,
        ]
        if entry.headers and entry.headers != b"{}":
            parts += [b',"headers":', entry.headers]
        parts.append(b"}")
        return cls(entry.id, entry.previous, b"".join(parts))

    @property
    def ts(self) -> int:
        return self.id.ms

    @property
    def ws_bytes(self) -> bytes:
        """The WebSocket event ``{"op":"message",<envelope fields>}`` (UTF-8), encoded once."""
        if self._ws is None:
            self._ws = b'{"op":"message",' + self.envelope[1:]
        return self._ws

    @property
    def ws_frame(self) -> bytes:
        """The complete WebSocket text frame of :attr:`ws_bytes`, the same for every subscriber."""
        if self._frame is None:
            self._frame = text_frame(self.ws_bytes)
        return self._frame

    @property
    def sse_bytes(self) -> bytes:
        """The SSE event block (``id``, ``event: message``, ``data``), encoded once."""
        if self._sse is None:
            self._sse = (
                b"id: " + str(self.id).encode() + b"\nevent: message\ndata: " + self.envelope
                + b"\n\n"
            )  # fmt: skip
        return self._sse

    @property
    def size(self) -> int:
        # Envelope plus, once made, the three transport encodings; a stable estimate.
        return 4 * len(self.envelope) + _OVERHEAD


class Batch:
    """Consecutive messages of one topic fanned out together, with shared packed encodings.

    A subscriber that is exactly at the batch's start (the common live case) gets the whole
    batch as one write: one ``\n``-packed WebSocket frame, or one HTTP chunk of SSE event blocks,
    built once for all subscribers.
    """

    __slots__ = (
        "_frame",
        "_sse",
        "_sse_chunk",
        "_text",
        "contiguous",
        "count",
        "first",
        "last",
        "messages",
        "oldest_ms",
        "poll_answer",
    )

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self.count = len(messages)
        self.first = messages[0]
        self.last = messages[-1]
        self.oldest_ms = messages[0].id.ms
        # Whether each message's previous id is the one before it: only then may a subscriber
        # that passed the first message's chain check take the rest without checking each.
        self.contiguous = all(
            messages[index].previous == messages[index - 1].id for index in range(1, len(messages))
        )
        self._text: bytes | None = None
        self._frame: bytes | None = None
        self._sse: bytes | None = None
        self._sse_chunk: bytes | None = None
        # The long-poll answer carrying exactly this batch, built by the first caught-up poll
        # it is handed to and written as is to every other (relay_gateway.longpoll).
        self.poll_answer: PreparedResponse | None = None

    def __len__(self) -> int:
        return self.count

    @property
    def ws_bytes(self) -> bytes:
        """Every message's WebSocket event, separated by ``\n``."""
        if self._text is None:
            if len(self.messages) == 1:
                self._text = self.first.ws_bytes
            else:
                self._text = b"\n".join([message.ws_bytes for message in self.messages])
        return self._text

    @property
    def ws_frame(self) -> bytes:
        if self._frame is None:
            if len(self.messages) == 1:
                self._frame = self.first.ws_frame
            else:
                self._frame = text_frame(self.ws_bytes)
        return self._frame

    @property
    def sse_bytes(self) -> bytes:
        """Every message's SSE event block, in order."""
        if self._sse is None:
            if len(self.messages) == 1:
                self._sse = self.first.sse_bytes
            else:
                self._sse = b"".join([message.sse_bytes for message in self.messages])
        return self._sse

    @property
    def sse_chunk(self) -> bytes:
        """:attr:`sse_bytes` as one chunk of a chunked HTTP response (an SSE stream's body)."""
        if self._sse_chunk is None:
            self._sse_chunk = stream_chunk(self.sse_bytes)
        return self._sse_chunk


def topic_json(topic: str) -> bytes:
    return _json.encode(topic)


class HotWindow:
    """Every message of one topic with id in ``(base, newest]``, oldest first."""

    __slots__ = ("_ids", "_messages", "_start", "base", "bytes")

    def __init__(self, base: StreamId = ZERO) -> None:
        # A list plus a start offset: O(1) amortized eviction from the front, and bisect.
        self._messages: list[Message] = []
        self._ids: list[StreamId] = []
        self._start = 0
        self.base = base
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._messages) - self._start

    @property
    def newest(self) -> StreamId:
        return self._ids[-1] if len(self) else self.base

    def covers(self, after: StreamId) -> bool:
        """Whether every message with id > ``after`` (up to the newest) is held here."""
        return self.base <= after

    def append(self, message: Message) -> int:
        """Add the next message; returns the bytes added. A break in the chain restarts."""
        if message.previous != self.newest:
            # Trimmed or reset upstream: what we hold no longer joins this message.
            self.clear(message.previous)
        self._messages.append(message)
        self._ids.append(message.id)
        size = message.size
        self.bytes += size
        return size

    def after(self, cursor: StreamId, limit: int | None = None) -> list[Message]:
        """Messages with id > ``cursor``, oldest first, at most ``limit``."""
        index = bisect.bisect_right(self._ids, cursor, lo=self._start)
        end = len(self._messages) if limit is None else min(len(self._messages), index + limit)
        return self._messages[index:end]

    def pop_oldest(self) -> int:
        """Drop the oldest message; returns the bytes freed."""
        message = self._messages[self._start]
        self._messages[self._start] = None  # type: ignore[call-overload]  # freed slot, compacted below
        self._start += 1
        self.base = message.id
        size = message.size
        self.bytes -= size
        if self._start > 64 and self._start * 2 > len(self._messages):
            del self._messages[: self._start]
            del self._ids[: self._start]
            self._start = 0
        return size

    def evict(self, max_messages: int, oldest_ms: int) -> int:
        """Drop messages beyond the count cap or older than ``oldest_ms``; returns bytes freed."""
        freed = 0
        while len(self) and (len(self) > max_messages or self._ids[self._start].ms < oldest_ms):
            freed += self.pop_oldest()
        return freed

    def clear(self, base: StreamId) -> int:
        freed = self.bytes
        self._messages.clear()
        self._ids.clear()
        self._start = 0
        self.base = base
        self.bytes = 0
        return freed


class HotTier:
    """All topics' windows under one byte cap; the least recently fed topics lose bytes first."""

    def __init__(self, *, window: float, max_messages: int, max_bytes: int) -> None:
        self.window_ms = int(window * 1000)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.bytes = 0
        # name → window, ordered from least to most recently fed.
        self._recency: OrderedDict[str, HotWindow] = OrderedDict()

    def add(self, name: str, window: HotWindow, message: Message) -> None:
        self.bytes += window.append(message)
        self._recency[name] = window
        self._recency.move_to_end(name)
        self.bytes -= window.evict(self.max_messages, self._oldest_ms())
        if self.bytes > self.max_bytes:
            self._evict_coldest()

    def forget(self, name: str, window: HotWindow) -> None:
        self._recency.pop(name, None)
        self.bytes -= window.clear(window.newest)

    def sweep(self) -> None:
        """Age out old messages of topics that have gone quiet."""
        oldest_ms = self._oldest_ms()
        for window in list(self._recency.values()):
            self.bytes -= window.evict(self.max_messages, oldest_ms)

    def _oldest_ms(self) -> int:
        return int(time.time() * 1000) - self.window_ms

    def _evict_coldest(self) -> None:
        for window in list(self._recency.values()):
            while len(window) and self.bytes > self.max_bytes:
                self.bytes -= window.pop_oldest()
            if self.bytes <= self.max_bytes:
                return
