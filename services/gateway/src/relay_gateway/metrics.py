"""The gateway's Prometheus metrics (contract §9), built once per app in its lifespan.

Every name starts with ``relay_``. Collectors pre-bind their transport labels so the delivery
path pays one attribute lookup per observation, not a label resolution.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from relaycore.metrics import LATENCY_BUCKETS, CommonMetrics

__all__ = ["TRANSPORTS", "GatewayMetrics", "TransportMetrics"]

TRANSPORTS = ("ws", "sse", "poll")


class TransportMetrics:
    """The label-bound children of one transport."""

    def __init__(self, metrics: GatewayMetrics, transport: str) -> None:
        self.connections = metrics.connections.labels(transport)
        self.deliveries = metrics.deliveries.labels(transport)
        self.lag = metrics.delivery_lag.labels(transport)
        self.slow_consumers = metrics.slow_consumers.labels(transport)


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
            "write, for the oldest message it carries",
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
        self.transports = {name: TransportMetrics(self, name) for name in TRANSPORTS}
        for name in TRANSPORTS:
            # Export zero-valued series from the start so dashboards see every transport.
            self.transports[name].deliveries.inc(0)
            self.transports[name].slow_consumers.inc(0)
        self.xread_errors = self.valkey_errors.labels(self.service, "xread")
        self.read_errors = self.valkey_errors.labels(self.service, "read")

    def transport(self, name: str) -> TransportMetrics:
        return self.transports[name]
