"""Resume decisions and history delivery, shared by every transport (contract §6).

Exactness rests on the ``v`` field each entry carries — the id of the entry written before it,
stored atomically by the publish function. For a cursor ``c``:

* the first retained entry after ``c`` has ``v <= c`` → nothing after ``c`` is missing:
  ``recovered`` — unless ``v < c`` and ``c`` (an id, not a timestamp) is not in the stream:
  ``c`` named an entry that was lost (a replica took over before it replicated, a reset), so
  ``reset``, delivery continuing from that entry;
* its ``v > c`` → entries between were trimmed (retention, MAXLEN): not recovered, ``trimmed``,
  delivery continues from that entry (the oldest retained after ``c``);
* nothing retained after ``c``: compare with the stream's last generated id ``L``. ``c == L``:
  recovered. ``c < L``: everything after ``c`` was trimmed (``trimmed``). ``c > L``: the cursor
  is ahead of the stream — it was lost or reset (``reset``) — and delivery restarts from the
  oldest retained entry. A bare-timestamp cursor later than ``L`` is no reset: it names an
  instant, not a position.

A cursor inside the topic's hot window is answered from memory (a hot-tier hit); anything
older is read from the stream source (Valkey with XRANGE) — at once ``Unavailable`` while
Valkey is known to be down (:mod:`relay_gateway.health`, in the Valkey source).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from relay_gateway.hot import Message
from relay_gateway.hub import RESET, TRIMMED, Feed, Hub, Topic
from relaycore.ids import ZERO, Cursor, StreamId

__all__ = [
    "Resume",
    "catch_up",
    "continues",
    "decide",
    "decide_hot",
    "read_history",
    "stream_end",
]


@dataclass(slots=True)
class Resume:
    """Where a resume starts and whether it is complete."""

    recovered: bool
    reason: str | None  # TRIMMED or RESET when not recovered
    messages: list[Message]  # the first page of history (may be empty)
    after: StreamId  # deliver what follows this id
    check_first: bool  # whether the first message may still reveal a gap
    pending_gap: str | None = None  # a gap whose first message is not known yet

    @property
    def position(self) -> StreamId:
        """The last id this resume accounts for: the cursor to hand back when nothing follows."""
        return self.messages[-1].id if self.messages else self.after


async def read_history(hub: Hub, topic: Topic, after: StreamId, count: int) -> list[Message]:
    """Up to ``count`` messages after ``after`` from the stream source (raises Unavailable)."""
    entries = await hub.source.read_after(topic.name, after, count)
    return [hub.message(topic, entry) for entry in entries]


async def stream_end(hub: Hub, name: str) -> StreamId:
    """The stream's last generated id (``0-0`` when it does not exist; raises Unavailable)."""
    return await hub.source.last_id(name)


def decide_hot(hub: Hub, topic: Topic, cursor: Cursor, count: int) -> Resume | None:
    """:func:`decide` from the hot window alone: ``None`` when the stream source must be read
    (the window does not cover the cursor, or the cursor names an id the window never held)."""
    after = cursor.after
    if topic.hot.covers(after) and after <= topic.position:
        messages = topic.hot.after(after, count)
        if not messages or continues(cursor, messages[0]):
            hub.metrics.hot_hits.inc()
            return Resume(True, None, messages, after, check_first=True)
        # An id the window spans but never held: the stream went back (Valkey restored
        # from an older backup, say). Valkey's entries tell trimmed from reset.
    return None


async def decide(hub: Hub, topic: Topic, cursor: Cursor, count: int) -> Resume:
    """Decide how a resume after ``cursor`` goes, with up to ``count`` messages of history."""
    hot = decide_hot(hub, topic, cursor, count)
    if hot is not None:
        return hot
    after = cursor.after
    hub.metrics.hot_misses.inc()
    messages = await read_history(hub, topic, after, count)
    if not messages:
        last = await stream_end(hub, topic.name)
        if after < last:
            # Published between the two reads, or trimmed: read again to tell which.
            messages = await read_history(hub, topic, after, count)
            if not messages:
                return Resume(False, TRIMMED, [], last, check_first=False, pending_gap=TRIMMED)
        elif after == last or cursor.by_time:
            return Resume(True, None, [], after, check_first=True)
        else:
            # The cursor is ahead of the stream: it was lost or reset. Start from the oldest.
            messages = await read_history(hub, topic, ZERO, count)
            if not messages:
                return Resume(False, RESET, [], last, check_first=False, pending_gap=RESET)
            return Resume(False, RESET, messages, ZERO, check_first=False)
    if continues(cursor, messages[0]):
        return Resume(True, None, messages, after, check_first=True)
    if messages[0].previous > after:
        return Resume(False, TRIMMED, messages, after, check_first=False)
    # The first entry after an id cursor was written after some other entry: the stream this
    # cursor came from is gone (restored from an older backup, or lost and republished past
    # it). A reset: start again from the oldest retained entry.
    messages = await read_history(hub, topic, ZERO, count)
    return Resume(False, RESET, messages, ZERO, check_first=False)


def continues(cursor: Cursor, first: Message) -> bool:
    """Whether ``first``, the first message after ``cursor``, follows it with nothing between.

    An id cursor is continued only by the entry written right after it (its ``v`` is the
    cursor). A timestamp cursor names an instant between entries: any earlier ``v`` is fine.
    Entries without ``v`` (written by something else than the publish function) say nothing.
    """
    previous = first.previous
    if previous == cursor.after or previous == ZERO:
        return True
    return cursor.by_time and previous < cursor.after


Deliver = Callable[[list[Message]], Awaitable[None]]


async def catch_up(hub: Hub, feed: Feed, resume: Resume, deliver: Deliver, page: int) -> None:
    """Hand the feed all history after the resume point, then switch it to live.

    The feed was registered before ``decide`` ran, so every message the reader dispatched since
    sits in its buffer; history is read until it reaches what the buffer holds (from the hot
    window when it covers the cursor, else page by page from Valkey), and ``go_live`` replays the
    buffer minus the ids history already delivered.
    """
    topic = feed.topic
    messages = resume.messages
    after = resume.after
    exhausted = False
    while True:
        if messages:
            await deliver(messages)
            after = messages[-1].id
        if topic.hot.covers(after):
            # Everything after ``after`` that the reader has seen is in memory.
            messages = topic.hot.after(after, page)
            if not messages:
                break
            continue
        if exhausted:
            break
        messages = await read_history(hub, topic, after, page)
        exhausted = len(messages) < page
        if not messages:
            break
    feed.go_live()
