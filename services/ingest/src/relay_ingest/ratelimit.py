"""Per-principal publish rate limit, shared by every ingest replica through Valkey.

A fixed window per principal: ``INCRBY relay:rl:{<principal>} <messages>``, ``PEXPIRE … NX``
(the first increment of a window starts its clock) and ``PTTL`` (how long until it resets, for
``Retry-After``). The three commands ride the shared pipeline, so under load they share round
trips with other requests' publishes. A batch counts as its number of messages. Rejected
requests count too: a client hammering past the limit stays limited until the window ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

from glide import ExpireOptions

from relay_ingest.pipeline import AnyBatch, Pipeline, Unavailable
from relaycore.keys import rate_limit_key
from relaycore.settings import RateLimit

__all__ = ["RateLimited", "RateLimiter"]


class RateLimited(Exception):
    """Over the limit; retry after ``retry_after`` seconds."""

    def __init__(self, limit: RateLimit, retry_after: int) -> None:
        super().__init__(
            f"rate limit of {limit.count} messages per {limit.per_seconds:g}s exceeded"
        )
        self.retry_after = retry_after


def _add_window(key: str, amount: int, window_ms: int, batch: AnyBatch) -> None:
    batch.incrby(key, amount)
    batch.pexpire(key, window_ms, ExpireOptions.HasNoExpiry)
    batch.pttl(key)


@dataclass
class RateLimiter:
    limit: RateLimit
    pipeline: Pipeline

    @property
    def enabled(self) -> bool:
        return self.limit.enabled

    async def acquire(self, principal: str, messages: int) -> None:
        """Count ``messages`` for ``principal``; raise :class:`RateLimited` past the limit."""
        if not self.limit.enabled:
            return
        window_ms = max(1, int(self.limit.per_seconds * 1000))
        count, _, ttl_ms = await self.pipeline.execute(
            partial(_add_window, rate_limit_key(principal), messages, window_ms), 3
        )
        if isinstance(count, BaseException) or isinstance(ttl_ms, BaseException):
            raise Unavailable("storage refused the rate-limit check")
        if int(count) > self.limit.count:
            remaining_ms = int(ttl_ms) if int(ttl_ms) > 0 else window_ms
            raise RateLimited(self.limit, max(1, math.ceil(remaining_ms / 1000)))
