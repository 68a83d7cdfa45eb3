"""The gateway's Prometheus metrics (contract §9), built once per app in its lifespan.

Every name starts with ``relay_``. Collectors pre-bind their transport labels so the delivery
path pays one attribute lookup per observation, not a label resolution.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from relaycore.metrics import LATENCY_BUCKETS, CommonMetrics

__all__ = ["TRANSPORTS", "GatewayMetrics", "TransportMetrics"]

TRANSPORTS = ("ws", "sse", "poll")


class TransportMetrics:
    """The label-bound children of one transport.

    ``pending`` counts deliveries written during one fan-out; the hub adds them to the counter
    and observes the lag once per fan-out (:meth:`GatewayMetrics.flush_writes`): a counter
    increment per subscriber would cost more than the write itself.
    """

    __slots__ = (
        "connections",
        "deliveries",
        "lag",
        "open",
        "pending",
        "shared",
        "slow_consumers",
    )

    def __init__(self, metrics: GatewayMetrics, transport: str) -> None:
        self.connections = metrics.connections.labels(transport)
        self.deliveries = metrics.deliveries.labels(transport)
        self.lag = metrics.delivery_lag.labels(transport)
        self.slow_consumers = metrics.slow_consumers.labels(transport)
        self.pending = 0
        # Long-poll answers written from a shared prepared response during one fan-out.
        self.shared = 0
        # Long-polls in flight: a plain count read at scrape time (no lock per request).
        self.open = 0

    def written(self, count: int, oldest_ms: int) -> None:
        """``count`` deliveries written now, the oldest published at ``oldest_ms``."""
        self.deliveries.inc(count)
        self.lag.observe(max(0.0, time.time() * 1000 - oldest_ms) / 1000)

    def written_items(self, items: Iterable[tuple[bytes, int, int]]) -> None:
        """Count one write of queued items ``(data, messages, oldest publish ms)``.

        One lag observation per write, for its oldest message: the histogram then costs one
        lock per write instead of one per delivery, and still shows the worst lag.
        """
        sent = 0
        oldest = 0
        for _, count, oldest_ms in items:
            if count:
                sent += count
                oldest = oldest or oldest_ms
        if sent:
            self.written(sent, oldest)


class GatewayMetrics(CommonMetrics):
    """Connections, deliveries, end-to-end lag, hot tier, slow consumers, Valkey errors."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__("gateway", registry)
        self.connections = Gauge(
            "relay_gateway_connections",
            "Open consumer connections (long-polls in flight count as connections)",
            ["transport"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "relay_gateway_deliveries",
            "Messages handed to consumers' connections",
            ["transport"],
            registry=self.registry,
        )
        self.delivery_lag = Histogram(
            "relay_delivery_lag_seconds",
            "End-to-end lag, publish time (the id's milliseconds) to send; one observation per "
            "fan-out (and per write from a backlog), for the oldest message it carries",
            ["transport"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.hot_hits = Counter(
            "relay_hot_tier_hits",
            "Resumes answered from the gateway's in-memory window",
            registry=self.registry,
        )
        self.hot_misses = Counter(
            "relay_hot_tier_misses",
            "Resumes that had to read Valkey (cursor older than the in-memory window)",
            registry=self.registry,
        )
        self.hot_bytes = Gauge(
            "relay_hot_tier_bytes",
            "Approximate bytes held by the hot tier",
            registry=self.registry,
        )
        self.slow_consumers = Counter(
            "relay_slow_consumer_disconnects",
            "Connections cut because their outbound queue overflowed",
            ["transport"],
            registry=self.registry,
        )
        self.active_topics = Gauge(
            "relay_gateway_topics",
            "Topics this gateway currently reads from Valkey",
            registry=self.registry,
        )
        self.poll_shared_answers = Counter(
            "relay_gateway_poll_shared_answers",
            "Long-poll answers written from a response prepared once for every poll at the same "
            "cursor (waiting ones during the fan-out, and those arriving behind by the same "
            "messages)",
            registry=self.registry,
        )
        self.transports = {name: TransportMetrics(self, name) for name in TRANSPORTS}
        poll = self.transports["poll"]
        poll.connections.set_function(lambda: poll.open)
        for name in TRANSPORTS:
            # Export zero-valued series from the start so dashboards see every transport.
            self.transports[name].deliveries.inc(0)
            self.transports[name].slow_consumers.inc(0)
        self.xread_errors = self.valkey_errors.labels(self.service, "xread")
        self.read_errors = self.valkey_errors.labels(self.service, "read")

    def transport(self, name: str) -> TransportMetrics:
        return self.transports[name]

    def flush_writes(self, oldest_ms: int) -> None:
        """Account the deliveries written by one fan-out; its oldest message is ``oldest_ms``."""
        for transport in self.transports.values():
            if transport.pending:
                transport.written(transport.pending, oldest_ms)
                transport.pending = 0
            if transport.shared:
                self.poll_shared_answers.inc(transport.shared)
                transport.shared = 0
