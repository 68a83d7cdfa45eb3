"""Backoff with full jitter, shared by publish retries and subscribe reconnects."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff (``initial`` doubling up to ``maximum``) with jitter.

    ``deadline`` bounds the total time one operation keeps retrying (``None``: forever, the
    default for subscriptions); ``attempts`` bounds the number of tries (``None``: no bound).
    A server's ``Retry-After`` replaces the computed delay when it is longer.
    """

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0
    # Fraction of the delay that is random: 1.0 is "full jitter" (uniform in [0, delay]).
    jitter: float = 0.5
    deadline: float | None = 30.0
    attempts: int | None = None

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
        base = min(self.maximum, self.initial * self.multiplier**attempt)
        delay = base * (1.0 - self.jitter * random.random())
        if retry_after is not None:
            # Never sooner than the server asked; a little jitter so retries do not herd.
            delay = max(delay, retry_after * (1.0 + 0.1 * random.random()))
        return delay


PUBLISH_RETRY = RetryPolicy()
SUBSCRIBE_RETRY = RetryPolicy(initial=0.1, maximum=5.0, deadline=None)
