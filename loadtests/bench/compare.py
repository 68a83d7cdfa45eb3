"""Relay vs nchan rate by rate, for the stepped scenarios' "at every rate step" targets.

A rate may have been tried up to three times per side (noise retries) and again in a second
pass. The attempt that stands for a side at a rate is its best one by the same rule as
everywhere else in the harness (neighbours only ever make figures worse): a sustained attempt
over a failed one, then the lowest p99. Its CPU per delivery is taken from that same attempt,
so the two figures of one row always describe one measurement.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .scenarios import Step, SteppedResult
from .stats import ratio

__all__ = [
    "STEP_TARGETS",
    "EveryStep",
    "RateRow",
    "common_best",
    "every_step",
    "rate_rows",
    "representative",
    "up_to_nchan_best",
]

# Per scenario: (e2e p99 relay/nchan at most, CPU per delivery relay/nchan at most), None = no
# target. From issue 12: long-poll "every rate step up to nchan's highest sustained", fan-out
# CPU per delivery ≤ 0.8x.
STEP_TARGETS: dict[str, tuple[float | None, float | None]] = {
    "longpoll": (1.5, 1.0),
    "fanout": (None, 0.8),
    "sse": (None, None),
}


def _p99_key(step: Step) -> float:
    p99 = step.latency.p99_ms
    return math.inf if p99 != p99 else p99


def representative(steps: Sequence[Step], side: str, rate: int) -> Step | None:
    """The attempt that stands for ``side`` at ``rate``: sustained first, then lowest p99."""
    tried = [s for s in steps if s.side == side and s.rate == rate]
    return min(tried, key=lambda s: (not s.sustained, _p99_key(s)), default=None)


@dataclass(frozen=True)
class RateRow:
    rate: int
    relay: Step | None
    nchan: Step | None

    @property
    def p99_ratio(self) -> float | None:
        if self.relay is None or self.nchan is None:
            return None
        return ratio(self.relay.latency.p99_ms, self.nchan.latency.p99_ms)

    @property
    def cpu_ratio(self) -> float | None:
        if self.relay is None or self.nchan is None:
            return None
        return ratio(self.relay.cpu_us_per_delivery, self.nchan.cpu_us_per_delivery)


def rate_rows(result: SteppedResult) -> list[RateRow]:
    """One row per rate of the ladder that either side ran (the half-rate rounds excluded)."""
    rows = []
    for rate in result.rates:
        relay = representative(result.steps, "relay", rate)
        nchan = representative(result.steps, "nchan", rate)
        if relay is not None or nchan is not None:
            rows.append(RateRow(rate, relay, nchan))
    return rows


def up_to_nchan_best(result: SteppedResult) -> list[RateRow]:
    """The rows the "every step" targets are read from: rates up to nchan's highest sustained.

    A rate the relay did not reach (it stopped lower) is kept, with ``relay`` None: a step it
    could not sustain counts as missed, not as absent.
    """
    best = result.best("nchan")
    if best is None:
        return []
    return [row for row in rate_rows(result) if row.rate <= best.rate and row.nchan is not None]


def common_best(result: SteppedResult) -> RateRow | None:
    """The highest rate both sides sustained (CPU per delivery compared at equal load)."""
    both = [
        row
        for row in rate_rows(result)
        if row.relay is not None
        and row.nchan is not None
        and row.relay.sustained
        and row.nchan.sustained
    ]
    return both[-1] if both else None


@dataclass(frozen=True)
class EveryStep:
    """How a relay/nchan ratio fared over a set of rate rows against ``limit``."""

    steps: int
    met: int
    worst: RateRow | None
    worst_ratio: float | None

    @property
    def all_met(self) -> bool:
        return self.steps > 0 and self.met == self.steps


def every_step(
    rows: Sequence[RateRow], figure: Callable[[RateRow], float | None], limit: float
) -> EveryStep:
    """Count the rows whose ratio is ≤ ``limit`` at a rate the relay sustained.

    A rate the relay did not reach, or did not sustain (lost messages, p99 over the cap, the
    publisher behind), is a miss whatever its ratio.
    """
    met = 0
    worst: RateRow | None = None
    worst_value: float | None = None
    for row in rows:
        value = figure(row)
        sustained = row.relay is not None and row.relay.sustained
        if sustained and value is not None and value <= limit:
            met += 1
        rank = math.inf if value is None else value
        if worst is None or rank > (math.inf if worst_value is None else worst_value):
            worst, worst_value = row, value
    return EveryStep(len(rows), met, worst, worst_value)
