"""Pulsar Relay Python SDK: ``RelayClient`` (publish with safe retries, auto-resuming
subscribe over WebSocket, SSE or long-poll) and the typed :class:`RelayError` family.

See the README's "Clients" section; the ``relay`` CLI is :mod:`relay_client.cli`.
"""

from relay_client.client import DEFAULT_GATEWAY_URL, DEFAULT_INGEST_URL, RelayClient
from relay_client.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitedError,
    RelayConnectionError,
    RelayError,
    UnavailableError,
)
from relay_client.models import Gap, Message, Published, TopicInfo
from relay_client.retry import RetryPolicy
from relay_client.subscribe import Subscription, Transport

__all__ = [
    "DEFAULT_GATEWAY_URL",
    "DEFAULT_INGEST_URL",
    "AuthenticationError",
    "Gap",
    "InvalidRequestError",
    "Message",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProtocolError",
    "Published",
    "RateLimitedError",
    "RelayClient",
    "RelayConnectionError",
    "RelayError",
    "RetryPolicy",
    "Subscription",
    "TopicInfo",
    "Transport",
    "UnavailableError",
]
