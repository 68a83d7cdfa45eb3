"""The stream source seam: what the hub and recovery need of storage, and nothing else.

After centrifuge's Broker: the hub never talks to Valkey. It asks a :class:`StreamSource` for
history (``read_after``), for where a stream ends (``last_id``), and to follow the topics that
have local subscribers (``follow`` / ``unfollow``); the source's readers hand the entries they
read to one callback (:data:`Dispatch`, the hub's fan-out) in id order. A source that cannot
reach its storage raises :class:`Unavailable`, which the transports answer as ``unavailable``
(WebSocket ``error``) or 503.

:class:`relay_gateway.valkey_source.ValkeySource` implements it on Valkey (standalone with
blocking XREADs, or Valkey Cluster with wake-ups); tests of the hub's logic implement it in
memory. Dependencies point one way: transports → hub → source → Valkey.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

from relaycore.ids import StreamId
from relaycore.streams import StreamEntry

__all__ = ["Dispatch", "Followed", "StreamSource", "Unavailable"]


class Unavailable(Exception):
    """The storage could not be reached to start or resume a subscription."""


class Followed(Protocol):
    """A topic as a source's readers see it: read after ``position``, which the hub advances
    as it dispatches (and a reader may move back to ``0-0`` when the stream went backwards)."""

    name: str
    key: str
    position: StreamId


# Called by a reader with entries of one followed topic read after its position, in id order.
Dispatch = Callable[[Followed, Sequence[StreamEntry]], None]


class StreamSource(Protocol):
    """History reads, stream ends and the live feed of the topics this gateway serves."""

    async def last_id(self, topic: str) -> StreamId:
        """The stream's last generated id, ``0-0`` when it does not exist."""
        ...

    async def read_after(self, topic: str, after: StreamId, count: int) -> list[StreamEntry]:
        """Up to ``count`` entries with ids greater than ``after``, oldest first."""
        ...

    def follow(self, topic: Followed) -> None:
        """Start reading ``topic`` live from its ``position``."""
        ...

    def unfollow(self, topic: Followed) -> None: ...

    @property
    def healthy(self) -> bool:
        """Whether every reader runs and its last read succeeded (``/ready``)."""
        ...

    def start(self, dispatch: Dispatch, group: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        """Start the readers in ``group``; each hands what it reads to ``dispatch``."""
        ...
