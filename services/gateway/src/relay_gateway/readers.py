"""Blocking stream readers: a small fixed pool of dedicated GLIDE clients.

GLIDE multiplexes a client's commands over one connection, and a blocking XREAD stalls every
other command on it, so reads get clients of their own (``RELAY_READER_POOL_SIZE``, default 4)
and the hub's non-blocking commands another. Each reader multiplexes all of its topics (assigned
by hash) into one ``XREAD BLOCK <RELAY_READER_BLOCK> COUNT <RELAY_READER_COUNT> STREAMS k1..kn
id1..idn``, always from the last id it saw for each topic — never ``$``, so nothing published
between two reads (or during an outage) is missed. A topic added while a read is blocked joins at
the next read, within ``RELAY_READER_BLOCK`` (100 ms).

On Valkey Cluster a multi-key XREAD must stay within one hash slot: topics are assigned to
readers by slot, and a reader issues one non-blocking XREAD per slot (concurrently, since slots
live on different nodes) and waits ``RELAY_READER_BLOCK`` when all were empty.

When Valkey is unreachable a reader retries with capped exponential backoff (50 ms → 2 s); the
hub keeps its topics and positions, so after recovery the next read resumes exactly where the
last one stopped.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import structlog
from glide import GlideError, StreamReadOptions

from relay_gateway.metrics import GatewayMetrics
from relaycore.ids import ZERO
from relaycore.settings import Settings
from relaycore.streams import parse_entries, stream_info
from relaycore.valkey import ValkeyClient

if TYPE_CHECKING:
    from relay_gateway.hub import Hub, Topic

__all__ = ["Reader", "ReaderPool", "key_slot"]

log = structlog.get_logger("relay_gateway.readers")

BACKOFF_START = 0.05
BACKOFF_CAP = 2.0


def _crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum Valkey Cluster uses for hash slots."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(topic: str) -> int:
    """The cluster hash slot of every key of ``topic`` (its keys use the hash tag ``{topic}``)."""
    return _crc16(topic.encode()) % 16384


class Reader:
    """One dedicated client reading every topic assigned to it in one blocking XREAD."""

    def __init__(
        self,
        index: int,
        client: ValkeyClient,
        settings: Settings,
        metrics: GatewayMetrics,
        *,
        cluster: bool,
    ) -> None:
        self.index = index
        self.client = client
        self.cluster = cluster
        self.block_ms = max(1, int(settings.reader_block * 1000))
        self.count = settings.reader_count
        self.slice_bytes = max(1, settings.max_queue_bytes // 8)
        self.metrics = metrics
        self.topics: dict[str, Topic] = {}  # stream key → topic
        self.healthy = True
        self.running = False
        self._wake = asyncio.Event()
        self.hub: Hub | None = None

    def add(self, topic: Topic) -> None:
        self.topics[topic.key] = topic
        self._wake.set()

    def remove(self, topic: Topic) -> None:
        if self.topics.get(topic.key) is topic:
            del self.topics[topic.key]

    async def run(self, hub: Hub) -> None:
        self.hub = hub
        self.running = True
        backoff = BACKOFF_START
        try:
            while True:
                if not self.topics:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                try:
                    if self.cluster:
                        await self._read_by_slot(hub)
                    else:
                        await self._read(hub, self.topics, self.block_ms)
                except GlideError as error:
                    hub.health.failed(error)
                    self.metrics.xread_errors.inc()
                    if self.healthy:
                        log.warning("reader_error", reader=self.index, error=str(error))
                    self.healthy = False
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_CAP)
                    continue
                if not self.healthy:
                    log.info("reader_recovered", reader=self.index)
                    hub.health.mark_up()
                    try:
                        await self._rewind_reset_streams(hub)
                    except GlideError:
                        continue
                self.healthy = True
                backoff = BACKOFF_START
        finally:
            self.running = False

    async def _rewind_reset_streams(self, hub: Hub) -> None:
        """After an outage, find streams that went backwards (Valkey lost or reset data).

        XREAD after an id the stream never reaches again would wait forever; such a topic is
        read again from the start, and its feeds see the new entries' previous ids go backwards
        and report a ``reset`` gap.
        """
        for topic in list(self.topics.values()):
            info = await stream_info(hub.client, topic.name)
            last = info.last_generated_id if info is not None else ZERO
            if last < topic.position:
                log.warning("stream_went_backwards", topic=topic.name, last=str(last))
                topic.position = ZERO

    async def _read(self, hub: Hub, topics: Mapping[str, Topic], block_ms: int | None) -> bool:
        """One XREAD over ``topics`` from each one's position; True if anything came back."""
        snapshot = list(topics.values())
        streams = {topic.key: str(topic.position) for topic in snapshot}
        options = StreamReadOptions(block_ms=block_ms, count=self.count)
        raw = await self.client.xread(streams, options)
        if not raw:
            return False
        by_key = {topic.key: topic for topic in snapshot}
        for key, raw_entries in raw.items():
            topic = by_key.get(key.decode())
            # A topic dropped (and maybe re-created) meanwhile: only feed the live object.
            if topic is None or self.topics.get(topic.key) is not topic:
                continue
            entries = parse_entries(raw_entries)
            start = 0
            while start < len(entries):
                # Fan out in slices of at most a fraction of a connection's queue, yielding in
                # between so writers move them to their sockets: a burst of one big XREAD
                # never overflows the queue of a consumer that is keeping up.
                end, size = start, 0
                while end < len(entries) and (end == start or size < self.slice_bytes):
                    size += len(entries[end].payload)
                    end += 1
                hub.dispatch(topic, entries[start:end])
                start = end
                if start < len(entries):
                    await asyncio.sleep(0)
        return True

    async def _read_by_slot(self, hub: Hub) -> None:
        groups: dict[int, dict[str, Topic]] = defaultdict(dict)
        for key, topic in self.topics.items():
            groups[key_slot(topic.name)][key] = topic
        if len(groups) == 1:
            await self._read(hub, next(iter(groups.values())), self.block_ms)
            return
        results: Sequence[bool] = await asyncio.gather(
            *(self._read(hub, group, None) for group in groups.values())
        )
        if not any(results):
            await asyncio.sleep(self.block_ms / 1000)


class ReaderPool:
    """``RELAY_READER_POOL_SIZE`` readers; a topic always goes to the same one."""

    def __init__(
        self, clients: Sequence[ValkeyClient], settings: Settings, metrics: GatewayMetrics
    ) -> None:
        self.cluster = settings.valkey_cluster
        self.readers = [
            Reader(index, client, settings, metrics, cluster=self.cluster)
            for index, client in enumerate(clients)
        ]

    def reader_for(self, topic: Topic) -> Reader:
        if self.cluster:
            return self.readers[key_slot(topic.name) % len(self.readers)]
        return self.readers[zlib.crc32(topic.name.encode()) % len(self.readers)]

    def add(self, topic: Topic) -> None:
        self.reader_for(topic).add(topic)

    def remove(self, topic: Topic) -> None:
        self.reader_for(topic).remove(topic)

    @property
    def healthy(self) -> bool:
        return all(reader.running and reader.healthy for reader in self.readers)

    def start(self, hub: Hub, group: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        return [
            group.create_task(reader.run(hub), name=f"relay-reader-{reader.index}")
            for reader in self.readers
        ]
