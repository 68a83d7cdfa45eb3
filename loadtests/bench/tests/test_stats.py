"""The harness's own arithmetic: timestamp scanning and percentiles (fast, no servers)."""

from __future__ import annotations

from loadtests.bench.pool import split
from loadtests.bench.stats import (
    LatencySummary,
    Samples,
    make_payload,
    percentile,
    ratio,
    scan_timestamps,
)


def test_scan_finds_every_message_in_a_packed_relay_frame() -> None:
    frame = b"\n".join(
        b'{"op":"message","topic":"t","id":"1-%d","ts":1,"payload":%s}'
        % (i, make_payload(i, sent_us=1_000 + i))
        for i in range(3)
    )
    samples = Samples()
    assert scan_timestamps(frame, 5_000, samples) == 3
    assert list(samples.latencies) == [4_000, 3_999, 3_998]
    assert samples.received == 3


def test_scan_tolerates_a_space_after_the_colon_and_ignores_other_frames() -> None:
    samples = Samples()
    assert scan_timestamps(b'{"bench_t": 10,"seq":1}', 15, samples) == 1
    assert scan_timestamps(b'{"op":"subscribed","topic":"t"}', 15, samples) == 0
    assert list(samples.latencies) == [5]


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7], 0.99) == 7


def test_latency_summary_in_milliseconds() -> None:
    summary = LatencySummary.of([1000, 2000, 3000, 100_000])
    assert summary.count == 4
    assert summary.p50_ms == 2.0
    assert summary.p99_ms == 100.0
    assert LatencySummary.of([]).count == 0


def test_ratio_handles_missing_sides() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None
    assert ratio(1.0, 0.0) is None


def test_split_spreads_clients_over_processes() -> None:
    assert split(1000, 3) == [334, 333, 333]
    assert sum(split(15000, 3)) == 15000
