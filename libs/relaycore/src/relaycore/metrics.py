"""Prometheus metrics: one registry per app, names prefixed ``relay_``.

Each service defines its metrics in a small class built in its lifespan and passed around as
typed state; no module-level collectors, so two apps in one test process never collide.
"""

from __future__ import annotations

import asyncio
from typing import Any

from glide import GlideError, InfoSection
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.responses import Response

from relaycore.valkey import ValkeyClient

__all__ = ["LATENCY_BUCKETS", "CommonMetrics", "metrics_endpoint", "persistence_ok"]

# INFO persistence fields that say the last background write of each kind succeeded. Any other
# value (``err``) means Valkey cannot write its AOF or snapshot: with
# ``stop-writes-on-bgsave-error yes`` writes are about to be refused (or already are).
_PERSISTENCE_STATUS = (
    b"aof_last_write_status",
    b"aof_last_bgrewrite_status",
    b"rdb_last_bgsave_status",
)

# Seconds, from 0.5 ms to 10 s: covers a pipelined publish and a slow end-to-end delivery.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class CommonMetrics:
    """Metrics every service has: request durations and Valkey errors."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.request_duration = Histogram(
            "relay_http_request_duration_seconds",
            "HTTP request duration by route and status",
            ["service", "route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.valkey_errors = Counter(
            "relay_valkey_errors",
            "Valkey commands that failed, by operation",
            ["service", "operation"],
            registry=self.registry,
        )
        self.service = service

        # Refreshed by every scrape (``refresh_valkey``): what the alerts need without giving the
        # services' ACL users anything new (both already run INFO on connect). Labelled by
        # service so one alert can tell a gateway from an ingest.
        def gauge(name: str, documentation: str) -> Gauge:
            return Gauge(name, documentation, ["service"], registry=self.registry).labels(service)

        self.valkey_up = gauge(
            "relay_valkey_up",
            "1 when this process's Valkey client answered INFO persistence at the last scrape",
        )
        self.valkey_loading = gauge(
            "relay_valkey_loading",
            "1 while Valkey is loading its data set (AOF replay after a restart)",
        )
        self.valkey_persistence_ok = gauge(
            "relay_valkey_persistence_ok",
            "1 when Valkey's last AOF write, AOF rewrite and RDB save all succeeded "
            "(INFO persistence); 0 when any failed; unchanged while Valkey is unreachable",
        )
        self.valkey_aof_enabled = gauge(
            "relay_valkey_aof_enabled",
            "1 when Valkey runs with appendonly yes (INFO persistence aof_enabled)",
        )
        self.ready = gauge(
            "relay_ready",
            "1 when /ready would answer 200 at the last scrape (Valkey reachable and not "
            "loading, the service not draining, its readers or write path healthy)",
        )

    async def refresh_valkey(self, client: ValkeyClient, *, limit: float) -> bool:
        """Probe Valkey once (``INFO persistence``, at most ``limit`` s) into the gauges.

        True when Valkey answered and is not loading (what ``/ready`` also requires).
        """
        try:
            async with asyncio.timeout(limit):
                info: Any = await client.info([InfoSection.PERSISTENCE])
        except (GlideError, TimeoutError):
            self.valkey_errors.labels(self.service, "info").inc()
            self.valkey_up.set(0)
            return False
        # A cluster client answers one text per node: every node must be healthy.
        replies: list[bytes] = list(info.values()) if isinstance(info, dict) else [info]
        replies = [r.encode() if isinstance(r, str) else r for r in replies]
        self.valkey_up.set(1)
        loading = any(b"loading:1" in r for r in replies)
        self.valkey_loading.set(float(loading))
        self.valkey_persistence_ok.set(float(all(persistence_ok(r) for r in replies)))
        self.valkey_aof_enabled.set(float(all(b"aof_enabled:1" in r for r in replies)))
        return not loading


def persistence_ok(info: bytes) -> bool:
    """Whether one node's ``INFO persistence`` text reports every background write succeeded."""
    fields = dict(
        line.split(b":", 1)
        for line in info.splitlines()
        if b":" in line and not line.startswith(b"#")
    )
    return all(fields.get(name, b"ok").strip() == b"ok" for name in _PERSISTENCE_STATUS)


def metrics_endpoint(registry: CollectorRegistry) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
