"""What handlers reach: everything the lifespan built, as one typed object on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from relay_ingest.messages import MessageLimits
from relay_ingest.metrics import IngestMetrics
from relay_ingest.pipeline import Pipeline
from relay_ingest.publisher import Publisher
from relay_ingest.ratelimit import RateLimiter
from relay_ingest.spans import PublishSpans
from relaycore.auth import Authenticator
from relaycore.retention import RetentionPolicy
from relaycore.settings import Settings
from relaycore.tracing import Tracing
from relaycore.valkey import ValkeyClient

__all__ = ["IngestState", "ingest_state"]


@dataclass
class IngestState:
    settings: Settings
    client: ValkeyClient
    pipeline: Pipeline
    publisher: Publisher
    limiter: RateLimiter
    authenticator: Authenticator
    metrics: IngestMetrics
    tracing: Tracing
    spans: PublishSpans
    limits: MessageLimits
    retention: RetentionPolicy
    draining: bool = False


def ingest_state(request: Request) -> IngestState:
    state: IngestState = request.app.state.ingest
    return state
