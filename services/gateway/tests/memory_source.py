"""A stream source in memory, for testing the hub's logic without a server.

Implements :class:`relay_gateway.source.StreamSource` the way the Valkey source behaves: each
stream a list of entries whose ``previous`` chains them (as the publish function writes ``v``),
ids from a counter, trimming from the front, ``down`` making every read raise ``Unavailable``.
Live reads are explicit: :meth:`MemorySource.read_live` hands each followed topic's entries
after its position to the dispatch callback, as a reader's XREAD would.
"""

from __future__ import annotations

import asyncio
import time

from relay_gateway.source import Dispatch, Followed, Unavailable
from relaycore.ids import ZERO, StreamId
from relaycore.streams import StreamEntry


class MemorySource:
    def __init__(self) -> None:
        self.streams: dict[str, list[StreamEntry]] = {}
        self.last: dict[str, StreamId] = {}
        self.followed: dict[str, Followed] = {}
        self.dispatch: Dispatch | None = None
        self.down = False
        # Ids are wall-clock milliseconds, as Valkey's are: the hot tier ages messages by them.
        self._ms = int(time.time() * 1000)

    # -- what a producer and an operator do ------------------------------------------------

    def append(self, topic: str, *payloads: bytes) -> list[StreamId]:
        stream = self.streams.setdefault(topic, [])
        ids = []
        for payload in payloads:
            self._ms += 1
            entry_id = StreamId(self._ms, 0)
            previous = self.last.get(topic, ZERO)
            stream.append(StreamEntry(entry_id, payload, None, previous))
            self.last[topic] = entry_id
            ids.append(entry_id)
        return ids

    def trim(self, topic: str, keep: int) -> None:
        del self.streams[topic][:-keep]

    def read_live(self) -> None:
        """One round of every reader: what each followed topic has after its position."""
        assert self.dispatch is not None, "start() was not called"
        for topic in list(self.followed.values()):
            fresh = [e for e in self.streams.get(topic.name, []) if e.id > topic.position]
            if fresh:
                self.dispatch(topic, fresh)

    # -- StreamSource ----------------------------------------------------------------------

    def _check(self) -> None:
        if self.down:
            raise Unavailable("storage down")

    async def last_id(self, topic: str) -> StreamId:
        self._check()
        return self.last.get(topic, ZERO)

    async def read_after(self, topic: str, after: StreamId, count: int) -> list[StreamEntry]:
        self._check()
        return [e for e in self.streams.get(topic, []) if e.id > after][:count]

    def follow(self, topic: Followed) -> None:
        self.followed[topic.name] = topic

    def unfollow(self, topic: Followed) -> None:
        if self.followed.get(topic.name) is topic:
            del self.followed[topic.name]

    @property
    def healthy(self) -> bool:
        return not self.down

    def start(self, dispatch: Dispatch, group: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        self.dispatch = dispatch
        return []
