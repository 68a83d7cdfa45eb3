"""The ingest application factory and its lifespan.

``create_app(settings)`` builds a Starlette app; its lifespan creates the GLIDE client (lazily,
so the service starts and ``/health`` answers while Valkey is down), the pipeline with its
flusher task, the publisher, authenticator, rate limiter and tracing, and hangs them on
``app.state.ingest`` as one typed :class:`~relay_ingest.state.IngestState`. Tests pass their own
``valkey`` client, which the app then uses but does not close.

On shutdown the pipeline stops taking publishes, sends what is queued, and the flusher task ends;
if Valkey cannot take the queue within ``RELAY_SHUTDOWN_GRACE`` the task is cancelled (its
waiters get 503) and awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware

from relay_ingest.fastlane import IngestApp
from relay_ingest.messages import MessageLimits
from relay_ingest.metrics import IngestMetrics, RequestMetricsMiddleware
from relay_ingest.pipeline import Pipeline
from relay_ingest.publisher import Publisher
from relay_ingest.ratelimit import RateLimiter
from relay_ingest.routes import routes
from relay_ingest.spans import PublishSpans
from relay_ingest.state import IngestState
from relaycore.auth import Authenticator
from relaycore.http import cors_middleware, exception_handlers
from relaycore.logging import get_logger
from relaycore.models import RetentionInfo
from relaycore.settings import Settings
from relaycore.streams import StreamRetention
from relaycore.tracing import Tracing
from relaycore.valkey import ValkeyClient, ValkeyDsn, create_client

__all__ = ["create_app"]

log = get_logger("relay_ingest")


def retention_of(settings: Settings) -> StreamRetention:
    return StreamRetention(
        maxlen=settings.retention_maxlen,
        max_age_ms=int(settings.retention_max_age * 1000),
        idempotency_ttl_ms=max(1, int(settings.idempotency_window * 1000)),
    )


def create_app(settings: Settings, *, valkey: ValkeyClient | None = None) -> Starlette:
    metrics = IngestMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = (
            valkey
            if valkey is not None
            else await create_client(
                ValkeyDsn.from_dsn(settings.valkey_url),
                cluster=settings.valkey_cluster,
                name="relay-ingest",
                request_timeout=settings.valkey_timeout,
                connection_timeout=settings.valkey_timeout,
                lazy=True,
            )
        )
        tracing = Tracing("relay-ingest", settings.otlp_endpoint)

        async def reload_functions() -> None:
            # At start, and after an outage: the server may be back without its data (and
            # so without the function). Runs only once the flusher does, after `publisher` exists.
            await publisher.load_functions()

        pipeline = Pipeline(
            client,
            max_commands=settings.publish_pipeline_size,
            queue_limit=settings.publish_queue_limit,
            metrics=metrics,
            on_recover=reload_functions,
            observe_batch=metrics.pipeline_commands.observe,
        )
        publisher = Publisher(
            client,
            pipeline,
            retention_of(settings),
            metrics,
            merge_limit=settings.publish_pipeline_size,
        )
        metrics.valkey_available.set_function(lambda: float(pipeline.available))
        state = IngestState(
            settings=settings,
            client=client,
            pipeline=pipeline,
            publisher=publisher,
            limiter=RateLimiter(settings.rate_limit, pipeline),
            authenticator=Authenticator.from_settings(settings),
            metrics=metrics,
            tracing=tracing,
            spans=PublishSpans(tracing),
            limits=MessageLimits(settings.max_message_bytes, settings.max_batch_items),
            retention=RetentionInfo(
                maxlen=settings.retention_maxlen,
                max_age_ms=int(settings.retention_max_age * 1000),
            ),
        )
        app.state.ingest = state
        try:
            async with asyncio.TaskGroup() as tasks:
                flusher = tasks.create_task(pipeline.run(), name="relay-ingest-pipeline")
                try:
                    yield
                finally:
                    state.draining = True
                    pipeline.close()
                    done, _ = await asyncio.wait({flusher}, timeout=settings.shutdown_grace)
                    if not done:
                        log.warning("pipeline_drain_timeout", pending=pipeline.pending)
                        flusher.cancel()
        finally:
            tracing.shutdown()
            if valkey is None:
                await client.close()

    endpoint_templates = {route.endpoint: route.path for route in routes}
    cors = cors_middleware(settings, ["GET", "POST", "OPTIONS"])
    middleware = [
        Middleware(RequestMetricsMiddleware, metrics=metrics, templates=endpoint_templates),
        *cors,
    ]
    # Publishes without an Origin header take the fast lane in front of all of this.
    return IngestApp(
        metrics=metrics,
        vary_origin=bool(cors),
        routes=routes,
        middleware=middleware,
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
