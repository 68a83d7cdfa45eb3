"""CPU per delivery/message, rate-by-rate comparison, "every step" targets and their report rows."""

from __future__ import annotations

import os
import time

from loadtests.bench.compare import (
    common_best,
    every_step,
    rate_rows,
    representative,
    up_to_nchan_best,
)
from loadtests.bench.procstat import CpuMeter, cpu_seconds
from loadtests.bench.report import Report
from loadtests.bench.scenarios import Budget, Config, Step, SteppedResult, WrkRun
from loadtests.bench.stats import LatencySummary


def _step(
    side: str,
    rate: int,
    *,
    p99_ms: float = 10.0,
    cpu_s: float = 1.0,
    sustained: bool = True,
    clients: int = 100,
    seconds: float = 3.0,
) -> Step:
    published = int(rate * seconds)
    return Step(
        side=side,
        rate=rate,
        clients=clients,
        published=published,
        achieved_rate=rate,
        publish_failed=0,
        received=published * clients,
        latency=LatencySummary(published * clients, p99_ms / 2, p99_ms, p99_ms * 2),
        server_cpu={"valkey": 1.0},
        client_cpu=1.0,
        client_cpu_max=1.0,
        publisher_cpu=1.0,
        sustained=sustained,
        server_cpu_s=cpu_s,
    )


def test_cpu_per_delivery_is_server_cpu_seconds_over_received() -> None:
    step = _step("relay", 100, cpu_s=0.6)  # 300 messages x 100 clients = 30,000 deliveries
    assert step.cpu_us_per_delivery == 20.0
    empty = _step("relay", 100)
    empty.received = 0
    assert empty.cpu_us_per_delivery is None


def test_cpu_per_message_published_by_wrk() -> None:
    run = WrkRun(
        side="relay",
        kind="publish",
        connections=64,
        msgs_per_request=1,
        requests=20_000,
        seconds=2.0,
        errors=0,
        p50_ms=1.0,
        p99_ms=2.0,
        client_cpu=10.0,
        server_cpu={"valkey": 20.0, "ingest": 80.0},  # one core busy for 10,000 msgs/s
    )
    assert run.cpu_us_per_msg == 100.0
    assert WrkRun("relay", "publish", 1, 1, 0, 1.0, 0, 0.0, 0.0, 0.0, {}).cpu_us_per_msg is None


def test_representative_prefers_sustained_then_lowest_p99() -> None:
    steps = [
        _step("relay", 50, p99_ms=5.0, sustained=False),
        _step("relay", 50, p99_ms=40.0),
        _step("relay", 50, p99_ms=30.0),
        _step("nchan", 50, p99_ms=1.0),
    ]
    chosen = representative(steps, "relay", 50)
    assert chosen is steps[2]
    assert representative(steps, "relay", 70) is None


def _result() -> SteppedResult:
    result = SteppedResult("longpoll", 100, rates=(10, 20, 30, 40))
    result.ready_sides = ["relay", "nchan"]
    result.steps = [
        _step("relay", 10, p99_ms=12.0, cpu_s=0.3),
        _step("nchan", 10, p99_ms=10.0, cpu_s=0.3),
        _step("relay", 20, p99_ms=20.0, cpu_s=0.9),
        _step("nchan", 20, p99_ms=10.0, cpu_s=0.6),
        _step("relay", 30, p99_ms=200.0, sustained=False),
        _step("nchan", 30, p99_ms=10.0, cpu_s=0.9),
        _step("nchan", 40, p99_ms=300.0, sustained=False),
    ]
    return result


def test_rows_up_to_nchans_best_count_a_rate_the_relay_missed() -> None:
    result = _result()
    assert [row.rate for row in rate_rows(result)] == [10, 20, 30, 40]
    rows = up_to_nchan_best(result)
    assert [row.rate for row in rows] == [10, 20, 30]
    assert rows[1].p99_ratio == 2.0
    assert rows[1].cpu_ratio == 1.5
    latency = every_step(rows, lambda row: row.p99_ratio, 1.5)
    assert (latency.steps, latency.met, latency.all_met) == (3, 1, False)
    assert latency.worst is not None
    assert latency.worst.rate == 30
    assert latency.worst_ratio == 20.0
    common = common_best(result)
    assert common is not None
    assert common.rate == 20


def test_a_rate_the_relay_did_not_sustain_is_a_miss_whatever_its_ratio() -> None:
    result = _result()
    result.steps.append(_step("relay", 40, p99_ms=1.0, cpu_s=0.01, sustained=False))
    result.steps.append(_step("nchan", 40, p99_ms=10.0))  # nchan's best is now 40/s
    rows = up_to_nchan_best(result)
    assert rows[-1].rate == 40
    assert rows[-1].cpu_ratio is not None
    assert rows[-1].cpu_ratio < 1.0
    assert every_step(rows, lambda row: row.cpu_ratio, 1.0).met == 1  # only 10/s


def test_every_step_met_when_every_ratio_is_within_the_limit() -> None:
    rows = up_to_nchan_best(_result())[:1]
    fared = every_step(rows, lambda row: row.cpu_ratio, 1.0)
    assert fared.all_met
    assert fared.worst_ratio == 1.0
    assert not every_step([], lambda row: row.cpu_ratio, 1.0).all_met


def test_report_prints_cpu_per_delivery_and_the_rate_by_rate_table() -> None:
    report = Report(Config(), {"cpu": "test"}, "now")
    report.stepped["longpoll"] = _result()
    text = report.markdown()
    assert "## longpoll: relay vs nchan at every rate step" in text
    assert (
        "| 20 | yes | yes | 20.00 | 10.00 | 2.00x | 150.00 | 100.00 | 1.50x | **no** | **no** |"
        in text
    )
    assert "server CPU µs per delivery, every step up to nchan's highest sustained (30/s)" in text
    assert "**no** (1/3 steps)" in text
    assert "server CPU µs per delivery at 20/s, the highest rate both sustained" in text


def test_budget_stages_share_what_is_left() -> None:
    budget = Budget(100.0)
    budget.stage(1.0, 4.0)
    assert 20.0 < budget.left() <= 25.0  # generous: a stalled shared core must not fail it
    budget.stage(1.0, 1.0)  # the last stage gets everything that is left
    assert 80.0 < budget.left() <= 100.0


def test_cpu_seconds_count_every_thread_finely() -> None:
    pid = os.getpid()
    meter = CpuMeter({"me": pid})
    meter.start()
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    used = meter.seconds()["me"]
    assert 0.04 < used < 1.0
    assert cpu_seconds(2**22 + 12345) == 0.0  # no such process
