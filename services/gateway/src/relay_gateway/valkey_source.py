"""The stream source on Valkey: non-blocking reads on one client, live reads on a reader pool.

History (``XRANGE``) and stream ends (``XINFO STREAM``) go through the gateway's client for
non-blocking commands; live reads through :class:`~relay_gateway.readers.ReaderPool`'s
dedicated clients (blocking ``XREAD`` standalone, wake-ups on Valkey Cluster), so a blocked
read never stalls a resume. Every GLIDE error becomes :class:`~relay_gateway.source.Unavailable`
and is counted in ``relay_valkey_errors`` (``read_errors``). On a single Valkey the source also
keeps the fail-fast verdict (:class:`~relay_gateway.health.StorageHealth`, probed every
``RELAY_VALKEY_PROBE_INTERVAL``): while Valkey is known to be down, reads raise ``Unavailable``
at once instead of waiting out the request timeout. On a cluster it keeps none: one dead
primary must not make every topic unavailable (its slots' reads fail on their own).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from glide import GlideError

from relay_gateway.health import StorageDown, StorageHealth
from relay_gateway.metrics import GatewayMetrics
from relay_gateway.readers import ReaderPool
from relay_gateway.source import Dispatch, Followed, Unavailable
from relaycore.ids import MAX_SEQ, ZERO, StreamId
from relaycore.streams import StreamEntry, read_after, stream_info
from relaycore.valkey import ValkeyClient

__all__ = ["ValkeySource"]

# Nothing can follow it, and Valkey rejects an exclusive range starting there.
_LAST_POSSIBLE_ID = StreamId(MAX_SEQ, MAX_SEQ)

T = TypeVar("T")


class ValkeySource:
    """:class:`~relay_gateway.source.StreamSource` on Valkey."""

    def __init__(
        self,
        client: ValkeyClient,
        readers: ReaderPool,
        metrics: GatewayMetrics,
        health: StorageHealth | None = None,
    ) -> None:
        self.client = client
        self.readers = readers
        self.metrics = metrics
        self.health = health

    async def _call(self, operation: Awaitable[T]) -> T:
        try:
            if self.health is None:
                return await operation
            return await self.health.call(operation)
        except StorageDown as error:
            raise Unavailable(str(error)) from None
        except GlideError as error:
            self.metrics.read_errors.inc()
            raise Unavailable(str(error)) from None

    async def last_id(self, topic: str) -> StreamId:
        info = await self._call(stream_info(self.client, topic))
        return info.last_generated_id if info is not None else ZERO

    async def read_after(self, topic: str, after: StreamId, count: int) -> list[StreamEntry]:
        if after == _LAST_POSSIBLE_ID:
            return []
        return await self._call(read_after(self.client, topic, after, count))

    def follow(self, topic: Followed) -> None:
        self.readers.add(topic)

    def unfollow(self, topic: Followed) -> None:
        self.readers.remove(topic)

    @property
    def healthy(self) -> bool:
        return self.readers.healthy

    def start(self, dispatch: Dispatch, group: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        tasks = self.readers.start(dispatch, group)
        if self.health is not None:
            tasks.append(group.create_task(self.health.watch_forever(), name="relay-valkey-probe"))
        return tasks
