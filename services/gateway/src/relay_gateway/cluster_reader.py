"""Cluster readers: wake on the publish signal, read per hash slot, check slowly per node.

On Valkey Cluster a multi-key XREAD must stay within one hash slot, and a blocking XREAD per
slot would need a connection per slot. So instead of blocking (or polling every slot, which
cost an idle gateway with 1,000 topics ~4,000 commands/s), a cluster reader:

1. **subscribes** (GLIDE sharded pub/sub, dynamic ``SSUBSCRIBE`` on its own client) to the
   channel ``relay:{<topic>}:w`` of every topic it serves. The publish functions ``SPUBLISH``
   the newest id there after each write; the channel carries the topic's hash tag, so the signal
   comes from the primary that owns the topic.
2. on a signal, marks the topic's slot **dirty** and reads it with one non-blocking XREAD of all
   its topics in that slot, from their last ids. Every slot read is its own task: a slot whose
   primary is down retries with its own backoff (50 ms → 2 s) while every other slot keeps being
   read at once — one dead primary never slows the topics of the others.
3. runs a **safety read** every ``RELAY_READER_SAFETY_INTERVAL`` (2 s), per primary (topics
   grouped by the slot map from ``CLUSTER SLOTS``): one ``INFO persistence`` whose write marker
   (``rdb_changes_since_last_save``, ``rdb_last_save_time``) says whether the node wrote
   anything since the last check, and only then one ``FCALL_RO relay_pending_v1`` that says
   which of its streams hold entries after our positions; those slots are read. (Commands a
   function runs count in ``INFO commandstats``: checking every topic of an idle node every
   interval would cost as many XREADs as topics, so an idle node is asked one INFO only.) So a lost
   signal (a reconnect, a failover, a subscription not yet confirmed) delays delivery by at most
   the interval and never loses it. Keys the node no longer serves (``-1``: a failover or a slot
   migration) are read through GLIDE's own slot routing and the slot map is refreshed. While
   GLIDE reports its subscriptions out of sync with what we asked for (a node reconnecting), the
   check runs every 250 ms, and once more when they are back in sync.

A newly added topic is read once right away and again once its subscription is confirmed, so
nothing published between the hub's XINFO and the SSUBSCRIBE is missed. Idle cost per reader:
one INFO per primary per interval plus a slot-map refresh every 30 s, whatever the number of
topics.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import time
from collections.abc import Sequence
from typing import Any

import structlog
from glide import (
    GlideClusterClient,
    GlideError,
    InfoSection,
    RequestError,
    SlotIdRoute,
    SlotType,
)

from relay_gateway.metrics import GatewayMetrics
from relay_gateway.source import Dispatch, Followed
from relay_gateway.streamreads import read_once
from relaycore.ids import StreamId
from relaycore.keys import key_slot, signal_channel
from relaycore.settings import Settings
from relaycore.streams import FUNCTION_LIBRARY, PENDING_FUNCTION, is_missing_function

__all__ = ["ClusterReader", "SlotMap"]

log = structlog.get_logger("relay_gateway.cluster_reader")

BACKOFF_START = 0.05
BACKOFF_CAP = 2.0
# While GLIDE's subscriptions are out of sync with the desired set (a node reconnecting).
UNSYNCED_INTERVAL = 0.25
SLOT_MAP_REFRESH = 30.0
SUBSCRIBE_TIMEOUT_MS = 2000
# Topics per relay_pending call: bounds one command's size on a node serving many topics.
PENDING_CHUNK = 1000


class SlotMap:
    """Which primary serves which slot, from ``CLUSTER SLOTS``; only used to group topics."""

    def __init__(self, reply: Any) -> None:
        ranges: list[tuple[int, int, str]] = []
        for item in reply or []:
            start, end, primary = int(item[0]), int(item[1]), item[2]
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            ranges.append((start, end, f"{host}:{int(primary[1])}"))
        ranges.sort()
        self._starts = [start for start, _, _ in ranges]
        self._ranges = ranges

    def node(self, slot: int) -> str:
        """The primary's address, or a per-slot placeholder for a slot no node claims."""
        index = bisect.bisect_right(self._starts, slot) - 1
        if index >= 0:
            start, end, node = self._ranges[index]
            if start <= slot <= end:
                return node
        return f"slot:{slot}"


class ClusterReader:
    """One dedicated cluster client: sharded subscriptions plus non-blocking reads per slot."""

    def __init__(
        self,
        index: int,
        client: GlideClusterClient,
        settings: Settings,
        metrics: GatewayMetrics,
    ) -> None:
        self.index = index
        self.client = client
        self.count = settings.reader_count
        self.slice_bytes = max(1, settings.max_queue_bytes // 8)
        self.safety_interval = max(0.05, settings.reader_safety_interval)
        self.metrics = metrics
        self.topics: dict[str, Followed] = {}  # stream key → topic
        self.slots: dict[int, dict[str, Followed]] = {}  # slot → its topics
        self.channels: dict[bytes, tuple[Followed, int]] = {}  # signal channel → (topic, slot)
        self.dirty: set[int] = set()  # slots to read
        self.inflight: set[int] = set()
        self.failing: dict[int, tuple[float, float]] = {}  # slot → (retry at, backoff)
        self.failing_nodes: set[str] = set()
        self.markers: dict[str, bytes] = {}  # node → write marker at its last complete check
        self.to_subscribe: set[str] = set()
        self.to_unsubscribe: set[str] = set()
        self.slot_map: SlotMap | None = None
        self.slot_map_at = -math.inf
        self.safety_due = 0.0
        self.safety_running = False
        self.synced = True
        self.healthy = True
        self.running = False
        self._wake = asyncio.Event()
        self._subscribe_wake = asyncio.Event()

    # --- topics --------------------------------------------------------------------------

    def add(self, topic: Followed) -> None:
        slot = key_slot(topic.name)
        channel = signal_channel(topic.name)
        self.topics[topic.key] = topic
        self.slots.setdefault(slot, {})[topic.key] = topic
        self.channels[channel.encode()] = (topic, slot)
        self.to_unsubscribe.discard(channel)
        self.to_subscribe.add(channel)
        self._subscribe_wake.set()
        self.mark(slot)  # read now; and again once the subscription is confirmed

    def remove(self, topic: Followed) -> None:
        if self.topics.get(topic.key) is not topic:
            return
        del self.topics[topic.key]
        slot = key_slot(topic.name)
        group = self.slots.get(slot)
        if group is not None:
            group.pop(topic.key, None)
            if not group:
                del self.slots[slot]
        channel = signal_channel(topic.name)
        self.channels.pop(channel.encode(), None)
        self.to_subscribe.discard(channel)
        self.to_unsubscribe.add(channel)
        self._subscribe_wake.set()

    def mark(self, slot: int) -> None:
        self.dirty.add(slot)
        self._wake.set()

    # --- the loop ------------------------------------------------------------------------

    async def run(self, dispatch: Dispatch) -> None:
        self.running = True
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._listen(), name=f"relay-reader-{self.index}-signals")
                group.create_task(
                    self._subscriptions(), name=f"relay-reader-{self.index}-subscriptions"
                )
                await self._schedule(dispatch, group)
        finally:
            self.running = False

    async def _schedule(self, dispatch: Dispatch, group: asyncio.TaskGroup) -> None:
        """Start a read task for every dirty slot not in flight or backing off; safety reads."""
        while True:
            now = time.monotonic()
            next_at = math.inf
            if self.topics and not self.safety_running:
                if now >= self.safety_due:
                    # Its end sets the wake event and the next due time.
                    self.safety_running = True
                    group.create_task(self._safety_read(), name=f"relay-reader-{self.index}-safety")
                else:
                    next_at = self.safety_due
            for slot in list(self.dirty):
                if slot in self.inflight:
                    continue  # stays dirty: read again when the current read ends
                failure = self.failing.get(slot)
                if failure is not None and failure[0] > now:
                    next_at = min(next_at, failure[0])
                    continue
                self.dirty.discard(slot)
                group_topics = self.slots.get(slot)
                if not group_topics:
                    continue
                self.inflight.add(slot)
                group.create_task(self._read_slot(dispatch, slot, group_topics))
            # No await between the scan and the clear: nothing can set the event in between.
            self._wake.clear()
            timeout = next_at - time.monotonic()
            if timeout <= 0:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), None if math.isinf(timeout) else timeout)

    async def _read_slot(self, dispatch: Dispatch, slot: int, topics: dict[str, Followed]) -> None:
        try:
            most = await read_once(
                dispatch, self.client, topics, self.topics,
                count=self.count, slice_bytes=self.slice_bytes, block_ms=None,
            )  # fmt: skip
        except GlideError as error:
            self.metrics.xread_errors.inc()
            _, backoff = self.failing.get(slot, (0.0, BACKOFF_START / 2))
            backoff = min(backoff * 2, BACKOFF_CAP)
            if slot not in self.failing:
                log.warning("slot_read_error", reader=self.index, slot=slot, error=str(error))
            self.failing[slot] = (time.monotonic() + backoff, backoff)
            self.dirty.add(slot)
        else:
            if self.failing.pop(slot, None) is not None:
                log.info("slot_read_recovered", reader=self.index, slot=slot)
            if most >= self.count:
                self.dirty.add(slot)  # more may be waiting
        finally:
            self.inflight.discard(slot)
            self._wake.set()

    # --- signals -------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Sharded pub/sub messages → dirty slots (skipping ids already read)."""
        client = self.client
        while True:
            message = await client.get_pubsub_message()
            while message is not None:
                self._signal(message.channel, message.message)
                message = client.try_get_pubsub_message()
            self._wake.set()

    def _signal(self, channel: Any, payload: Any) -> None:
        known = self.channels.get(channel if isinstance(channel, bytes) else str(channel).encode())
        if known is None:
            return
        topic, slot = known
        try:
            if StreamId.parse(payload) <= topic.position:
                return  # already read (a safety or neighbour's read got there first)
        except (ValueError, TypeError):
            pass
        self.dirty.add(slot)

    async def _subscriptions(self) -> None:
        """Apply added and removed topics to the client's sharded subscriptions, in batches."""
        client = self.client
        while True:
            await self._subscribe_wake.wait()
            self._subscribe_wake.clear()
            drop, self.to_unsubscribe = self.to_unsubscribe, set()
            add, self.to_subscribe = self.to_subscribe, set()
            try:
                if drop:  # never empty: an empty set would mean "all channels"
                    await client.sunsubscribe(drop, timeout_ms=SUBSCRIBE_TIMEOUT_MS)
                if add:
                    await client.ssubscribe(add, timeout_ms=SUBSCRIBE_TIMEOUT_MS)
            except (GlideError, TimeoutError) as error:
                # GLIDE keeps the desired state and subscribes when it can; until then the
                # safety read (sooner: GLIDE now reports unsynced) covers these topics.
                log.info("subscribe_pending", reader=self.index, error=str(error) or "timeout")
                self.safety_due = time.monotonic()
                self._wake.set()
                continue
            for channel in add:
                known = self.channels.get(channel.encode())
                if known is not None:
                    self.dirty.add(known[1])
            self._wake.set()

    # --- the safety read -----------------------------------------------------------------

    async def _safety_read(self) -> None:
        """Which slots have entries we have not read (one call per primary); mark them dirty."""
        interval = self.safety_interval
        try:
            synced = await self._subscriptions_synced()
            if synced and not self.synced:
                log.info("subscriptions_synced", reader=self.index)
            if not synced:
                interval = min(interval, UNSYNCED_INTERVAL)
            resynced = synced and not self.synced
            self.synced = synced
            if self.slot_map is None or time.monotonic() - self.slot_map_at > SLOT_MAP_REFRESH:
                await self._refresh_slot_map()
            slot_map = self.slot_map
            by_node: dict[str, list[int]] = {}
            for slot in self.slots:
                node = slot_map.node(slot) if slot_map is not None else f"slot:{slot}"
                by_node.setdefault(node, []).append(slot)
            results = await asyncio.gather(
                *(self._pending_on(node, slots) for node, slots in by_node.items())
            )
            if not all(results):
                interval = min(interval, BACKOFF_CAP)
            self.healthy = any(results) or not results
            if resynced:
                # Signals may have been lost while GLIDE resubscribed: read every slot once.
                self.dirty.update(self.slots)
        finally:
            self.safety_due = time.monotonic() + interval
            self.safety_running = False
            self._wake.set()

    async def _subscriptions_synced(self) -> bool:
        try:
            state = await self.client.get_subscriptions()
        except GlideError:
            return False
        # Every channel we asked for (sharded mode) is subscribed on its node.
        for mode, desired in state.desired_subscriptions.items():
            actual: set[str] = set(state.actual_subscriptions.get(mode, set()))
            if not set(desired) <= actual:
                return False
        return True

    async def _refresh_slot_map(self) -> None:
        try:
            reply = await self.client.custom_command(["CLUSTER", "SLOTS"])
        except GlideError as error:
            log.debug("slot_map_failed", reader=self.index, error=str(error))
            return
        self.slot_map = SlotMap(reply)
        self.slot_map_at = time.monotonic()

    async def _pending_on(self, node: str, slots: Sequence[int]) -> bool:
        """One ``relay_pending`` call per chunk on ``node``; False if the node failed.

        Skipped when the node's write marker is unchanged since the last complete check: it
        wrote nothing since, so no signal can have been lost.
        """
        topics = [topic for slot in slots for topic in self.slots.get(slot, {}).values()]
        if not topics:
            return True
        try:
            marker = await self._write_marker(key_slot(topics[0].name))
        except GlideError as error:
            return self._node_failed(node, error)
        if marker is not None and self.markers.get(node) == marker:
            return True
        for start in range(0, len(topics), PENDING_CHUNK):
            chunk = topics[start : start + PENDING_CHUNK]
            args: list[str | bytes] = []
            for topic in chunk:
                args += [topic.key, str(topic.position)]
            route = SlotIdRoute(SlotType.PRIMARY, key_slot(chunk[0].name))
            try:
                try:
                    reply = await self.client.fcall_ro_route(PENDING_FUNCTION, args, route)
                except RequestError as error:
                    if not is_missing_function(error):
                        raise
                    # A node that started empty (or never met an ingest): load the library.
                    await self.client.function_load(FUNCTION_LIBRARY, replace=True, route=route)
                    reply = await self.client.fcall_ro_route(PENDING_FUNCTION, args, route)
            except GlideError as error:
                return self._node_failed(node, error)
            if node in self.failing_nodes:
                self.failing_nodes.discard(node)
                log.info("node_check_recovered", reader=self.index, node=node)
            moved = False
            for topic, state in zip(chunk, reply if isinstance(reply, list) else [], strict=False):
                if state != 0:
                    self.dirty.add(key_slot(topic.name))
                    moved = moved or state == -1
            if moved:
                self.slot_map_at = -math.inf
        if marker is not None:
            # Read before the check: a write after it changes the marker, checked next time.
            self.markers[node] = marker
        return True

    def _node_failed(self, node: str, error: GlideError) -> bool:
        self.metrics.xread_errors.inc()
        self.markers.pop(node, None)
        if node not in self.failing_nodes:
            self.failing_nodes.add(node)
            log.warning("node_check_error", reader=self.index, node=node, error=str(error))
        self.slot_map_at = -math.inf  # a failover may follow: refresh next time
        return False

    async def _write_marker(self, slot: int) -> bytes | None:
        """What changes whenever the node writes: its dirty counter and last save time.

        ``rdb_changes_since_last_save`` counts every write (with or without AOF, replicas);
        a save resets it but also moves ``rdb_last_save_time``, and a restart moves both.
        """
        info: Any = await self.client.info(
            [InfoSection.PERSISTENCE], SlotIdRoute(SlotType.PRIMARY, slot)
        )
        text = info if isinstance(info, bytes) else str(info).encode()
        marks = [
            line
            for line in text.splitlines()
            if line.startswith((b"rdb_changes_since_last_save:", b"rdb_last_save_time:"))
        ]
        return b"|".join(marks) if len(marks) == 2 else None
