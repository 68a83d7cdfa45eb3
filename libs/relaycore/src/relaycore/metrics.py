"""Prometheus metrics: one registry per app, names prefixed ``relay_``.

Each service defines its metrics in a small class built in its lifespan and passed around as
typed state; no module-level collectors, so two apps in one test process never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.responses import Response

__all__ = ["LATENCY_BUCKETS", "CommonMetrics", "metrics_endpoint"]

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


def metrics_endpoint(registry: CollectorRegistry) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
