"""One XREAD over a set of topics, handed to the dispatch callback: shared by both reader kinds.

Always from each topic's last id (``topic.position``), never ``$``: what was published between
two reads, or during an outage, is read next time. Reading the same entries twice is harmless —
:meth:`~relay_gateway.hub.Hub.dispatch`, the usual callback, skips every id at or below the
topic's position — which
is what lets a cluster reader answer a signal and a safety read with overlapping reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from glide import StreamReadOptions

from relay_gateway.source import Dispatch, Followed
from relaycore.streams import parse_entries
from relaycore.valkey import ValkeyClient

__all__ = ["read_once"]


async def read_once(
    dispatch: Dispatch,
    client: ValkeyClient,
    topics: Mapping[str, Followed],
    live: Mapping[str, Followed],
    *,
    count: int,
    slice_bytes: int,
    block_ms: int | None,
) -> int:
    """XREAD ``topics`` (stream key → topic) from their positions and dispatch what came back.

    ``live`` is the reader's current table: a topic dropped (and maybe re-created) while the read
    was in flight is not fed. Returns the most entries one topic got (``count`` means more may
    be waiting), 0 when nothing came back.
    """
    snapshot = list(topics.values())
    streams = {topic.key: str(topic.position) for topic in snapshot}
    raw = await client.xread(streams, StreamReadOptions(block_ms=block_ms, count=count))
    if not raw:
        return 0
    by_key = {topic.key: topic for topic in snapshot}
    most = 0
    for key, raw_entries in raw.items():
        topic = by_key.get(key.decode())
        if topic is None or live.get(topic.key) is not topic:
            continue
        entries = parse_entries(raw_entries)
        most = max(most, len(entries))
        start = 0
        while start < len(entries):
            # Fan out in slices of at most a fraction of a connection's queue, yielding in
            # between so writers move them to their sockets: a burst of one big XREAD
            # never overflows the queue of a consumer that is keeping up.
            end, size = start, 0
            while end < len(entries) and (end == start or size < slice_bytes):
                size += len(entries[end].payload)
                end += 1
            dispatch(topic, entries[start:end])
            start = end
            if start < len(entries):
                await asyncio.sleep(0)
    return most
