"""Per-client limits of the gateway: the WebSocket op budget and the per-principal cap.

* :class:`OpBudget` — a token bucket per WebSocket connection (``RELAY_WS_OP_RATE``, e.g.
  ``100/s``: bursts of up to 100 ops, refilled at 100 per second). An op over the budget is not
  handled: it gets an ``error`` ``rate_limited`` and counts as a protocol error, so a client
  that keeps flooding is closed 4400 after ``RELAY_WS_MAX_PROTOCOL_ERRORS``.
* :class:`ConnectionCap` — open WebSocket and SSE connections per principal
  (``RELAY_MAX_CONNECTIONS_PER_PRINCIPAL``, 0 = off). The principal is the JWT ``sub`` with
  ``RELAY_AUTH=jwt``, else the client's IP address (as uvicorn reports it: behind a trusted
  proxy, from ``X-Forwarded-For``). Over the cap the handshake is answered 429 with
  ``Retry-After`` before any upgrade. Long-polls are single requests and are not counted.
"""

from __future__ import annotations

import time
from collections import Counter

from starlette.requests import HTTPConnection

from relaycore.auth import Principal
from relaycore.http import ApiError

__all__ = ["ConnectionCap", "OpBudget", "principal_key", "too_many_connections"]


class OpBudget:
    """A token bucket: ``count`` ops per ``per_seconds``, bursts of up to ``count``."""

    __slots__ = ("capacity", "last", "rate", "tokens")

    def __init__(self, count: int, per_seconds: float) -> None:
        self.capacity = float(count)
        self.rate = count / per_seconds
        self.tokens = float(count)
        self.last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class ConnectionCap:
    """Open streaming connections per principal key; ``limit`` 0 counts nothing."""

    __slots__ = ("counts", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: Counter[str] = Counter()

    def acquire(self, key: str) -> bool:
        """Take a slot for ``key``; False (nothing taken) when it has ``limit`` already."""
        if self.limit <= 0:
            return True
        if self.counts[key] >= self.limit:
            return False
        self.counts[key] += 1
        return True

    def release(self, key: str) -> None:
        if self.limit <= 0:
            return
        self.counts[key] -= 1
        if self.counts[key] <= 0:
            del self.counts[key]


def principal_key(connection: HTTPConnection, principal: Principal, *, auth: bool) -> str:
    """Whose connection this is: the token's subject, or the client address without auth."""
    if auth:
        return "sub:" + principal.subject
    client = connection.client
    return "ip:" + (client.host if client is not None else "unknown")


def too_many_connections(limit: int) -> ApiError:
    return ApiError(
        429,
        "too_many_connections",
        f"at most {limit} open WebSocket/SSE connections per principal",
        headers={"Retry-After": "1"},
    )
