"""Every HTTP connection's deadline on one timer per event loop, in quarter-second buckets.

An HTTP/1.1 connection always waits on one of two clocks: the header deadline while a request's
head arrives (the slowloris guard) and the keep-alive timeout while it is idle between
requests. uvicorn arms a ``loop.call_later`` for the keep-alive after every response and the
guard armed another for every request: two timer handles made and cancelled per request,
measured at ~45 % of the protocol's own Python time per long-poll answer on this machine
(``loadtests/RESULTS.md``, performance round 2). Neither needs sub-second precision, so here a
connection only writes its deadline into an attribute; the wheel keeps each connection in the
bucket of the earliest deadline it was armed for and, when that bucket's time comes, fires the
ones whose deadline has passed and moves the others to the bucket of their new deadline. A
deadline fires within :data:`RESOLUTION` seconds after it is due.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from typing import ClassVar, Protocol

__all__ = ["RESOLUTION", "Deadlines", "HasDeadline"]

# Bucket width, seconds.
RESOLUTION = 0.25
_PER_SECOND = 1 / RESOLUTION


class HasDeadline(Protocol):
    """A connection the wheel watches: ``deadline`` 0 means none."""

    deadline: float
    bucket: int | None  # the bucket it waits in, kept by the wheel

    def deadline_passed(self) -> None: ...


class Deadlines:
    """The wheel of one event loop."""

    __slots__ = ("_next_slot", "_ticking", "buckets", "loop", "timer")

    # Weak: a loop closed while connections still waited (tests run many loops in one process)
    # takes its wheel with it.
    _wheels: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.buckets: dict[int, set[HasDeadline]] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.loop = loop
        self._next_slot = 0  # the bucket the timer is set for
        self._ticking = False  # inside _tick, which sets the timer once it is done

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Deadlines:
        wheel = cls._wheels.get(loop)
        if wheel is None:
            wheel = cls._wheels[loop] = cls(loop)
        return wheel

    def arm(self, connection: HasDeadline, when: float) -> None:
        """Set ``connection``'s deadline to loop time ``when`` (replacing any earlier one)."""
        connection.deadline = when
        slot = math.ceil(when * _PER_SECOND)
        current = connection.bucket
        if current is not None and current <= slot:
            return  # checked when that earlier bucket is due, and moved then
        if current is not None:
            bucket = self.buckets.get(current)
            if bucket is not None:
                bucket.discard(connection)
        self._put(connection, slot)

    def forget(self, connection: HasDeadline) -> None:
        """No deadline any more, and out of the wheel (a connection that is gone)."""
        connection.deadline = 0.0
        current = connection.bucket
        if current is not None:
            connection.bucket = None
            bucket = self.buckets.get(current)
            if bucket is not None:
                bucket.discard(connection)

    def _put(self, connection: HasDeadline, slot: int) -> None:
        connection.bucket = slot
        bucket = self.buckets.get(slot)
        if bucket is None:
            self.buckets[slot] = {connection}
            if not self._ticking and (self.timer is None or slot < self._next_slot):
                self._schedule(slot)
        else:
            bucket.add(connection)

    def _schedule(self, slot: int) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self._next_slot = slot
        self.timer = self.loop.call_at(slot * RESOLUTION, self._tick)

    def _tick(self) -> None:
        self.timer = None
        now = self.loop.time()
        due = [slot for slot in self.buckets if slot * RESOLUTION <= now]
        self._ticking = True
        try:
            for slot in sorted(due):
                for connection in self.buckets.pop(slot):
                    connection.bucket = None
                    deadline = connection.deadline
                    if not deadline:
                        continue
                    if deadline <= now:
                        connection.deadline = 0.0
                        try:
                            connection.deadline_passed()
                        except Exception as error:  # one connection's bug must not stop the rest
                            self.loop.call_exception_handler(
                                {"message": "deadline callback failed", "exception": error}
                            )
                    else:
                        self._put(connection, math.ceil(deadline * _PER_SECOND))
        finally:
            self._ticking = False
            # The earliest bucket left, whether it was there before or was just made (a
            # connection moved to a later one must not delay those already waiting).
            if self.buckets:
                self._schedule(min(self.buckets))
