"""A connection's bounded outbound queue, measured in bytes (``RELAY_MAX_QUEUE_BYTES``).

The hub pushes into it synchronously while fanning out — it never waits on a consumer — and
the connection's writer takes *everything* queued at once, so a writer that falls behind packs
many events into one frame instead of falling further behind. A push that would pass the byte
cap marks the queue overflowed and clears it: the connection is then cut as a slow consumer,
and the memory one consumer can pin stays bounded whatever it does.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

__all__ = ["OutboundQueue"]

T = TypeVar("T", str, bytes)


class OutboundQueue(Generic[T]):
    """Items of one connection waiting to be written.

    Each item carries how many deliveries (messages) it holds and the publish time (ms) of the
    oldest, for the delivery metrics; control events carry ``0, 0``.
    """

    __slots__ = ("_items", "_ready", "_room", "bytes", "closed", "max_bytes", "overflowed")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.overflowed = False
        self.closed = False
        self._items: list[tuple[T, int, int]] = []
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item: T, count: int = 0, oldest_ms: int = 0) -> bool:
        """Queue ``item``; False (and the queue overflowed and emptied) if over the cap."""
        if self.overflowed or self.closed:
            return False
        size = len(item)
        if self.bytes + size > self.max_bytes and self._items:
            self.overflowed = True
            self._items.clear()
            self.bytes = 0
            self._ready.set()
            return False
        self._items.append((item, count, oldest_ms))
        self.bytes += size
        self._ready.set()
        if self.bytes * 2 > self.max_bytes:
            self._room.clear()
        return True

    @property
    def filling(self) -> bool:
        """More than half full: producers that can wait (history) should."""
        return self.bytes * 2 > self.max_bytes

    async def room(self) -> None:
        """Wait until the queue is at most half full (history delivery's backpressure)."""
        await self._room.wait()

    async def take(self) -> list[tuple[T, int, int]]:
        """Everything queued, waiting for at least one item."""
        while not self._items:
            if self.overflowed or self.closed:
                return []
            self._ready.clear()
            await self._ready.wait()
        return self.take_now()

    def take_now(self) -> list[tuple[T, int, int]]:
        """Everything queued now (maybe nothing)."""
        items, self._items = self._items, []
        self.bytes = 0
        self._room.set()
        return items

    def close(self) -> None:
        self.closed = True
        self._ready.set()
        self._room.set()
