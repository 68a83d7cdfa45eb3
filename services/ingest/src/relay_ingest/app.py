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
from relay_ingest.publisher import Publisher, TopicRetention
from relay_ingest.ratelimit import RateLimiter
from relay_ingest.routes import routes
from relay_ingest.spans import PublishSpans
from relay_ingest.state import IngestState
from relaycore.auth import Authenticator
from relaycore.http import cors_middleware, exception_handlers
from relaycore.liveness import ServerWatch
from relaycore.logging import get_logger
from relaycore.retention import RetentionPolicy
from relaycore.settings import Settings
from relaycore.tracing import Tracing
from relaycore.valkey import ValkeyClient, ValkeyDsn, create_client

__all__ = ["create_app"]

log = get_logger("relay_ingest")


def retention_policy(settings: Settings) -> RetentionPolicy:
    """``RELAY_RETENTION_RULES`` over ``RELAY_RETENTION_MAXLEN`` / ``RELAY_RETENTION_MAX_AGE``."""
    return RetentionPolicy(
        settings.retention_rules,
        default_maxlen=settings.retention_maxlen,
        default_max_age=settings.retention_max_age,
    )


def create_app(settings: Settings, *, valkey: ValkeyClient | None = None) -> Starlette:
    metrics = IngestMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = (
            valkey
            if valkey is not None
            else await create_client(
                ValkeyDsn.from_dsn(settings.valkey_url).with_ca_file(settings.valkey_tls_ca_file),
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

        dsn = ValkeyDsn.from_dsn(settings.valkey_url)
        # Standalone only: on a cluster one dead node must not refuse every topic's publishes
        # (there, a dead node is noticed through GLIDE's errors and timeouts alone). An injected
        # client may point anywhere: it is trusted as it is.
        watch = (
            None
            if settings.valkey_cluster or valkey is not None
            else ServerWatch(
                dsn.host, dsn.port, tls=dsn.tls, on_lost=lambda reason: pipeline.mark_down(reason)
            )
        )
        pipeline = Pipeline(
            client,
            watch=watch,
            max_commands=settings.publish_pipeline_size,
            queue_limit=settings.publish_queue_limit,
            metrics=metrics,
            on_recover=reload_functions,
            observe_batch=metrics.pipeline_commands.observe,
        )
        retention = retention_policy(settings)
        publisher = Publisher(
            client,
            pipeline,
            TopicRetention(retention, max(1, int(settings.idempotency_window * 1000))),
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
            retention=retention,
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
