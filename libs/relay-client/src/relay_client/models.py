"""What the SDK returns: :class:`Published`, :class:`Message`, :class:`Gap`, :class:`TopicInfo`.

Plain msgspec Structs (typed, immutable, cheap to build on the subscribe hot path).
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["Gap", "Message", "Published", "TopicInfo", "id_key"]


class Published(msgspec.Struct, frozen=True):
    """The answer to a publish: the message's ``id`` and ``ts`` (its id's milliseconds).

    ``duplicate`` is true when the topic already had a message with the caller's ``key``
    within the idempotency window: nothing was written and ``id`` is the first message's.
    """

    id: str
    topic: str
    ts: int
    duplicate: bool = False


class Message(msgspec.Struct, frozen=True):
    """One message as delivered: ``id`` is the cursor to resume after it."""

    topic: str
    id: str
    ts: int
    payload: Any
    headers: dict[str, str] = msgspec.field(default_factory=dict)

    def to_envelope(self) -> dict[str, Any]:
        """The contract's envelope (``headers`` left out when empty)."""
        envelope: dict[str, Any] = {
            "topic": self.topic, "id": self.id, "ts": self.ts, "payload": self.payload,
        }  # fmt: skip
        if self.headers:
            envelope["headers"] = self.headers
        return envelope


class Gap(msgspec.Struct, frozen=True):
    """Messages between the last one yielded and ``from_id`` are gone.

    ``reason`` is ``trimmed`` (retention removed them) or ``reset`` (the stream was lost or
    recreated); delivery continues with the message whose id is ``from_id``.
    """

    topic: str
    reason: str
    from_id: str


class TopicInfo(msgspec.Struct, frozen=True):
    """Ingest's topic info (contract §4)."""

    topic: str
    length: int
    first_id: str | None
    last_id: str | None
    retention: dict[str, Any] = msgspec.field(default_factory=dict)


def id_key(message_id: str) -> tuple[int, int]:
    """``"<ms>-<seq>"`` as a sortable pair; a bare millisecond cursor counts as ``(ms, -1)``."""
    ms, dash, seq = message_id.partition("-")
    return int(ms), int(seq) if dash else -1
