"""Latency samples, percentiles, and the payload timestamp every scenario measures latency from.

Every message the harness publishes carries ``"bench_t":<µs since the epoch>`` (wall clock, so
it is comparable across the harness's processes). A receiver scans the bytes it got for that
marker, so it needs no JSON parser and works the same on relay envelopes (several per frame
when the gateway packs them) and on nchan's raw payloads (one per frame, or a multipart body).
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "MARK",
    "LatencySummary",
    "Samples",
    "make_payload",
    "now_us",
    "percentile",
    "ratio",
    "scan_timestamps",
]

MARK = b'"bench_t":'
_PAD = "x" * 48


def now_us() -> int:
    return time.time_ns() // 1000


def make_payload(seq: int, sent_us: int | None = None) -> bytes:
    """One benchmark message (~90 bytes): send time first, so receivers find it fast."""
    t = now_us() if sent_us is None else sent_us
    return b'{"bench_t":%d,"seq":%d,"pad":"%s"}' % (t, seq, _PAD.encode())


class Samples:
    """Latencies in µs, appended by receivers; a compact ``array`` so 1M samples cost 8 MB."""

    __slots__ = ("latencies", "received")

    def __init__(self) -> None:
        self.latencies = array("q")
        self.received = 0

    def reset(self) -> None:
        self.latencies = array("q")
        self.received = 0


def scan_timestamps(data: bytes, received_us: int, into: Samples) -> int:
    """Record the latency of every benchmark message in ``data``; returns how many it held."""
    found = 0
    start = data.find(MARK)
    latencies = into.latencies
    while start >= 0:
        begin = start + len(MARK)
        size = len(data)
        while begin < size and data[begin] == 32:  # a re-encoder may put a space after ':'
            begin += 1
        end = begin
        while end < size and 48 <= data[end] <= 57:
            end += 1
        if end > begin:
            latencies.append(received_us - int(data[begin:end]))
            found += 1
        start = data.find(MARK, end)
    into.received += found
    return found


def percentile(sorted_values: Sequence[int] | Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (``fraction`` in 0..1)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-fraction * len(sorted_values) // 1))))
    return float(sorted_values[rank - 1])


@dataclass(frozen=True, slots=True)
class LatencySummary:
    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, latencies_us: Iterable[int]) -> LatencySummary:
        ordered = sorted(latencies_us)
        if not ordered:
            return cls(0, float("nan"), float("nan"), float("nan"))
        return cls(
            count=len(ordered),
            p50_ms=percentile(ordered, 0.50) / 1000,
            p99_ms=percentile(ordered, 0.99) / 1000,
            max_ms=ordered[-1] / 1000,
        )


def ratio(relay: float | None, nchan: float | None) -> float | None:
    if relay is None or nchan is None or nchan == 0 or relay != relay or nchan != nchan:
        return None
    return relay / nchan
