"""A connection's bounded outbound queue, measured in bytes (``RELAY_MAX_QUEUE_BYTES``).

The hub pushes into it synchronously while fanning out — it never waits on a consumer — and
the connection's writer takes *everything* queued at once, so a writer that falls behind packs
many events into one frame instead of falling further behind. A push that would pass the byte
cap marks the queue overflowed and clears it: the connection is then cut as a slow consumer,
and the memory one consumer can pin stays bounded whatever it does.

The events a writer or a history sender wait on are made on first use: most connections never
wait (the raw frame path writes at once), and an idle connection should cost little memory.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

__all__ = ["OutboundQueue"]

T = TypeVar("T", str, bytes)


class OutboundQueue(Generic[T]):
    """Items of one connection waiting to be written.

    Each item carries how many deliveries (messages) it holds and the publish time (ms) of the
    oldest, for the delivery metrics; control events carry ``0, 0``. ``items`` is read-only
    for callers (its emptiness is the fast path's check).
    """

    __slots__ = ("_ready", "_room", "bytes", "closed", "items", "max_bytes", "overflowed")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.overflowed = False
        self.closed = False
        self.items: list[tuple[T, int, int]] = []
        self._ready: asyncio.Event | None = None
        self._room: asyncio.Event | None = None

    def __len__(self) -> int:
        return len(self.items)

    def push(self, item: T, count: int = 0, oldest_ms: int = 0) -> bool:
        """Queue ``item``; False (and the queue overflowed and emptied) if over the cap."""
        if self.overflowed or self.closed:
            return False
        size = len(item)
        if self.bytes + size > self.max_bytes and self.items:
            self.overflowed = True
            self.items.clear()
            self.bytes = 0
            self._wake()
            return False
        self.items.append((item, count, oldest_ms))
        self.bytes += size
        if self._ready is not None:
            self._ready.set()
        return True

    @property
    def filling(self) -> bool:
        """More than half full: producers that can wait (history) should."""
        return self.bytes * 2 > self.max_bytes

    async def room(self) -> None:
        """Wait until the queue is at most half full (history delivery's backpressure)."""
        while self.filling and not self.closed:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()

    async def take(self) -> list[tuple[T, int, int]]:
        """Everything queued, waiting for at least one item."""
        while not self.items:
            if self.overflowed or self.closed:
                return []
            if self._ready is None:
                self._ready = asyncio.Event()
            self._ready.clear()
            await self._ready.wait()
        return self.take_now()

    def take_now(self) -> list[tuple[T, int, int]]:
        """Everything queued now (maybe nothing)."""
        items, self.items = self.items, []
        self.bytes = 0
        if self._room is not None:
            self._room.set()
        return items

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self._ready is not None:
            self._ready.set()
        if self._room is not None:
            self._room.set()
