"""Ingest metrics (Prometheus, one registry per app) and the request-duration middleware.

``relay_ingest_messages_total{result}``: messages by outcome, ``created`` / ``duplicate`` or the
error code that refused them (``validation_error``, ``rate_limited``, ``unavailable`` ...).
``relay_http_request_duration_seconds{service,route,method,status}``: from ``CommonMetrics``;
``route`` is the route template (``/api/v1/topics/{topic}``), never the raw path, so clients
cannot blow up the label set. ``relay_valkey_errors_total{service,operation}``.
``relay_ingest_pipeline_commands``: commands per pipelined round trip.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relaycore.metrics import CommonMetrics

__all__ = ["IngestMetrics", "RequestMetricsMiddleware"]

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# The method is a label too; anything else a client invents is counted as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class IngestMetrics(CommonMetrics):
    def __init__(self) -> None:
        super().__init__("ingest")
        self.messages = Counter(
            "relay_ingest_messages",
            "Messages received by ingest, by result (created, duplicate or the error code)",
            ["result"],
            registry=self.registry,
        )
        self.pipeline_commands = Histogram(
            "relay_ingest_pipeline_commands",
            "Valkey commands sent per pipelined round trip",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.valkey_available = Gauge(
            "relay_ingest_valkey_available",
            "1 while the write path reaches Valkey, 0 during an outage",
            registry=self.registry,
        )
        self.valkey_available.set(1)
        # Pre-create the common series so dashboards see zeros rather than gaps; the two
        # every publish counts are kept, so a publish does not look its series up.
        self.created = self.messages.labels("created")
        self.duplicates = self.messages.labels("duplicate")
        self.messages.labels("unavailable")


class RequestMetricsMiddleware:
    """Times every HTTP request into ``relay_http_request_duration_seconds``."""

    def __init__(
        self, app: ASGIApp, *, metrics: CommonMetrics, templates: Mapping[Any, str]
    ) -> None:
        self.app = app
        self.metrics = metrics
        # endpoint → route template; the router leaves the matched endpoint in the scope.
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = self.templates.get(scope.get("endpoint"), "unmatched")
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.request_duration.labels(
                self.metrics.service, route, method, str(status)
            ).observe(time.perf_counter() - started)
