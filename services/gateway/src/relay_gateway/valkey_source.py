"""The stream source on Valkey: non-blocking reads on one client, live reads on a reader pool.

History (``XRANGE``) and stream ends (``XINFO STREAM``) go through the gateway's client for
non-blocking commands; live reads through :class:`~relay_gateway.readers.ReaderPool`'s
dedicated clients (blocking ``XREAD`` standalone, wake-ups on Valkey Cluster), so a blocked
read never stalls a resume. Every GLIDE error becomes :class:`~relay_gateway.source.Unavailable`
and is counted in ``relay_valkey_errors`` (``read_errors``).
"""

from __future__ import annotations

import asyncio

from glide import GlideError

from relay_gateway.metrics import GatewayMetrics
from relay_gateway.readers import ReaderPool
from relay_gateway.source import Dispatch, Followed, Unavailable
from relaycore.ids import MAX_SEQ, ZERO, StreamId
from relaycore.streams import StreamEntry, read_after, stream_info
from relaycore.valkey import ValkeyClient

__all__ = ["ValkeySource"]

# Nothing can follow it, and Valkey rejects an exclusive range starting there.
_LAST_POSSIBLE_ID = StreamId(MAX_SEQ, MAX_SEQ)


class ValkeySource:
    """:class:`~relay_gateway.source.StreamSource` on Valkey."""

    def __init__(self, client: ValkeyClient, readers: ReaderPool, metrics: GatewayMetrics) -> None:
        self.client = client
        self.readers = readers
        self.metrics = metrics

    async def last_id(self, topic: str) -> StreamId:
        try:
            info = await stream_info(self.client, topic)
        except GlideError as error:
            self.metrics.read_errors.inc()
            raise Unavailable(str(error)) from None
        return info.last_generated_id if info is not None else ZERO

    async def read_after(self, topic: str, after: StreamId, count: int) -> list[StreamEntry]:
        if after == _LAST_POSSIBLE_ID:
            return []
        try:
            return await read_after(self.client, topic, after, count)
        except GlideError as error:
            self.metrics.read_errors.inc()
            raise Unavailable(str(error)) from None

    def follow(self, topic: Followed) -> None:
        self.readers.add(topic)

    def unfollow(self, topic: Followed) -> None:
        self.readers.remove(topic)

    @property
    def healthy(self) -> bool:
        return self.readers.healthy

    def start(self, dispatch: Dispatch, group: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        return self.readers.start(dispatch, group)
