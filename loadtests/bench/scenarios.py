"""The six scenarios, each run against every side in alternation (relay, nchan, relay, nchan ...).

- publish: ``wrk`` POSTs single messages on 64 keep-alive connections → msgs/s, p50/p99.
- batch: ``wrk`` POSTs 100-message batches (relay only; nchan has no batch publish, so its
  figure is its best single-message rate).
- fanout: 1,000 WebSocket subscribers on one topic; fixed publish rates stepped up until a
  step delivers < 100 % or p99 > 100 ms; then both sides again at half the relay's best rate.
- longpoll: 200 long-poll loops on one topic, the same stepping.
- sse: 1,000 Server-Sent Events subscribers on one topic, the same stepping as fanout.
- conns: 15,000 idle WebSockets from several 127.0.0.x addresses → all held? RSS per connection.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .pool import WorkerPool, split
from .procstat import MACHINE, CpuMeter, children, machine_busy_seconds, rss_kib
from .publisher import publish_at_rate
from .stacks import HOST, Stack
from .stats import LatencySummary, make_payload

__all__ = [
    "Budget",
    "Config",
    "ConnsResult",
    "SteppedResult",
    "WrkRun",
    "run_batch",
    "run_conns",
    "run_publish",
    "run_stepped",
]

HERE = Path(__file__).resolve().parent
LUA = HERE / "wrk" / "publish.lua"
SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]


FANOUT_RATES = (10, 20, 30, 40, 50, 70, 100, 130, 160, 200, 250, 300, 400, 500, 600, 800, 1000)


@dataclass(frozen=True)
class Config:
    rounds: int = 3
    publish_seconds: float = 6.0
    warmup_seconds: float = 2.0
    publish_connections: int = 64
    batch_size: int = 100
    batch_connections: int = 16
    fanout_subscribers: int = 1000
    fanout_rates: tuple[int, ...] = FANOUT_RATES
    longpoll_loops: int = 200
    longpoll_rates: tuple[int, ...] = (
        10,
        20,
        30,
        40,
        50,
        70,
        100,
        150,
        200,
        300,
        400,
        600,
        800,
        1000,
        1300,
        1600,
        2000,
        2500,
        3000,
    )
    sse_subscribers: int = 1000
    sse_rates: tuple[int, ...] = FANOUT_RATES
    step_seconds: float = 3.0
    drain_seconds: float = 2.0
    max_p99_ms: float = 100.0
    idle_connections: int = 15000
    hold_seconds: float = 5.0
    half_rounds: int = 3
    step_attempts: int = 3
    workers: int = 3


class Budget:
    """Wall-clock budget for the whole run; stepped scenarios stop early when it runs out.

    ``quiet_s`` is the part of it that measurements may spend waiting for the machine to
    calm down (see :func:`settle`).
    """

    def __init__(self, seconds: float, quiet_s: float = 90.0) -> None:
        self.deadline = time.monotonic() + seconds
        self.stage_deadline = math.inf
        self.quiet_s = quiet_s

    def left(self) -> float:
        return min(self.deadline, self.stage_deadline) - time.monotonic()

    def stage(self, weight: float, weights_left: float) -> None:
        """Give the next scenario ``weight / weights_left`` of the time that is left.

        Without shares the first stepped scenario could use the whole budget and starve the
        ones after it; time a scenario does not need goes to the ones that follow.
        """
        self.stage_deadline = math.inf
        self.stage_deadline = time.monotonic() + self.left() * weight / weights_left


QUIET_BELOW = 60.0  # % of one core busy with work the bench did not start
QUIET_WAIT = 8.0  # longest wait before one measurement


async def settle(budget: Budget | None) -> float:
    """Wait (bounded) until other jobs leave the cores mostly idle; returns their last load.

    The bench's own servers and clients are idle between measurements, so machine-wide busy
    CPU here is other jobs. Two shared cores with a neighbour's test suite at 150 % would
    measure the neighbour, not the servers. Each wait is capped (``QUIET_WAIT``) and all waits
    together by ``budget.quiet_s``, so the run's length stays bounded.
    """
    waited = 0.0
    while True:
        before, started = machine_busy_seconds(), time.monotonic()
        await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
        load = 100.0 * (machine_busy_seconds() - before) / elapsed
        if budget is None or load < QUIET_BELOW or waited >= QUIET_WAIT or budget.quiet_s <= 0:
            return load
        waited += elapsed
        budget.quiet_s -= elapsed


def _log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# --------------------------------------------------------------------------- publish / batch


@dataclass
class WrkRun:
    side: str
    kind: str
    connections: int
    msgs_per_request: int
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    client_cpu: float  # % of one core used by wrk
    server_cpu: dict[str, float]
    other_cpu: float = 0.0  # busy CPU on the machine that is neither server nor wrk
    first_error: str = ""

    @property
    def msgs_per_s(self) -> float:
        return (self.requests - self.errors) * self.msgs_per_request / self.seconds

    @property
    def cpu_us_per_msg(self) -> float | None:
        """Server CPU (every server process, µs) per message published."""
        rate = self.msgs_per_s
        return 1e4 * sum(self.server_cpu.values()) / rate if rate > 0 else None


def _wrk(url: str, body: bytes, connections: int, seconds: float) -> tuple[dict[str, float], float]:
    with tempfile.NamedTemporaryFile(prefix="bench-body-", suffix=".json") as body_file:
        body_file.write(body)
        body_file.flush()
        env = {**os.environ, "BENCH_BODY_FILE": body_file.name}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        command = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--timeout",
            "5s",
            "-s",
            str(LUA),
            url,
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=seconds + 30, check=False
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            return json.loads(line.removeprefix("BENCH_RESULT ")), cpu
    raise RuntimeError(f"wrk gave no result: {done.stdout[-500:]} {done.stderr[-500:]}")


async def _wrk_run(
    side: str,
    stack: Stack,
    kind: str,
    path: str,
    body: bytes,
    per_request: int,
    connections: int,
    seconds: float,
    budget: Budget | None = None,
) -> WrkRun:
    url = f"http://{HOST}:{stack.publish_port}{path}"
    await settle(budget)
    meter = CpuMeter(stack.server_pids())
    meter.start()
    result, cpu = await asyncio.to_thread(_wrk, url, body, connections, seconds)
    used = meter.stop()
    machine = used.pop(MACHINE)
    duration = result["duration_us"] / 1e6
    errors = int(
        result["status_errors"]
        + result["timeouts"]
        + result["read_errors"]
        + result["write_errors"]
        + result["connect_errors"]
    )
    run = WrkRun(
        side=side,
        kind=kind,
        connections=connections,
        msgs_per_request=per_request,
        requests=int(result["requests"]),
        seconds=duration,
        errors=errors,
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        client_cpu=100 * cpu / duration,
        server_cpu=used,
        other_cpu=max(0.0, machine - sum(used.values()) - 100 * cpu / duration),
    )
    _log(
        f"{kind:8} {side:6} {run.msgs_per_s:10.0f} msgs/s  p50 {run.p50_ms:.2f} ms  "
        f"p99 {run.p99_ms:.2f} ms  errors {errors}  wrk cpu {run.client_cpu:.0f}%"
    )
    return run


async def run_publish(
    stacks: dict[str, Stack], cfg: Config, budget: Budget | None = None
) -> list[WrkRun]:
    topic = "bench.publish"
    runs: list[WrkRun] = []
    bodies = {s: st.publish_body(topic, make_payload(0)) for s, st in stacks.items()}
    for side, stack in stacks.items():  # warm-up, not recorded
        await _wrk_run(
            side,
            stack,
            "warmup",
            stack.publish_path(topic),
            bodies[side],
            1,
            cfg.publish_connections,
            cfg.warmup_seconds,
        )
    for _ in range(cfg.rounds):
        for side, stack in stacks.items():
            runs.append(
                await _wrk_run(
                    side,
                    stack,
                    "publish",
                    stack.publish_path(topic),
                    bodies[side],
                    1,
                    cfg.publish_connections,
                    cfg.publish_seconds,
                    budget,
                )
            )
    return runs


async def run_batch(
    stacks: dict[str, Stack], cfg: Config, budget: Budget | None = None
) -> list[WrkRun]:
    stack = stacks.get("relay")
    if stack is None:
        return []
    topic = "bench.batch"
    item = b'{"topic":"%s","payload":%s}' % (topic.encode(), make_payload(0))
    body = b'{"messages":[' + b",".join([item] * cfg.batch_size) + b"]}"
    await _wrk_run(
        "relay",
        stack,
        "warmup",
        "/api/v1/messages/batch",
        body,
        cfg.batch_size,
        cfg.batch_connections,
        cfg.warmup_seconds,
    )
    return [
        await _wrk_run(
            "relay",
            stack,
            "batch",
            "/api/v1/messages/batch",
            body,
            cfg.batch_size,
            cfg.batch_connections,
            cfg.publish_seconds,
            budget,
        )
        for _ in range(cfg.rounds)
    ]


# --------------------------------------------------------------------------- fan-out / long-poll


@dataclass
class Step:
    side: str
    rate: int
    clients: int
    published: int
    achieved_rate: float
    publish_failed: int
    received: int
    latency: LatencySummary
    server_cpu: dict[str, float]
    client_cpu: float  # sum over the client processes
    client_cpu_max: float  # the busiest client process (100 = it was saturated)
    publisher_cpu: float
    sustained: bool
    other_cpu: float = 0.0  # busy CPU on the machine that the bench did not cause
    note: str = ""
    # CPU seconds of every server process from the first publish until the step's deliveries
    # were collected (the drain included: late deliveries cost CPU too).
    server_cpu_s: float = 0.0

    @property
    def cpu_us_per_delivery(self) -> float | None:
        """Server CPU (µs) per message delivered to a subscriber in this step."""
        return 1e6 * self.server_cpu_s / self.received if self.received else None

    @property
    def expected(self) -> int:
        return self.published * self.clients

    @property
    def delivered(self) -> float:
        return self.received / self.expected if self.expected else 0.0

    @property
    def deliveries_per_s(self) -> float:
        return self.achieved_rate * self.clients * min(self.delivered, 1.0)


@dataclass
class SteppedResult:
    scenario: str
    clients: int
    setup: dict[str, str] = field(default_factory=dict)
    ready_sides: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    half_rate: int = 0
    half_steps: list[Step] = field(default_factory=list)
    rates: tuple[int, ...] = ()
    # Sides the time budget stopped before they failed a rate: side -> the rate not tried.
    cut: dict[str, int] = field(default_factory=dict)

    def best(self, side: str) -> Step | None:
        sustained = [s for s in self.steps if s.side == side and s.sustained]
        return max(sustained, key=lambda s: s.deliveries_per_s, default=None)

    def capped(self, side: str) -> bool:
        """True when ``side`` sustained the top rate: its best is a lower bound, not a ceiling."""
        best = self.best(side)
        return best is not None and bool(self.rates) and best.rate == self.rates[-1]

    def unfinished(self, side: str) -> bool:
        """True when the time budget stopped ``side`` before it failed: a lower bound too."""
        return side in self.cut and self.best(side) is not None

    def half(self, side: str) -> list[Step]:
        return [s for s in self.half_steps if s.side == side]


async def _step(
    pool: WorkerPool,
    stack: Stack,
    side: str,
    group: str,
    topic: str,
    rate: int,
    clients: int,
    cfg: Config,
    *,
    record: bool = True,
    budget: Budget | None = None,
) -> Step:
    await settle(budget)
    await pool.all({"op": "reset", "group": group})
    meter = CpuMeter(
        {
            **stack.server_pids(),
            "_publisher": os.getpid(),
            **{f"_client{i}": pid for i, pid in enumerate(pool.pids)},
        }
    )
    meter.start()
    run = await publish_at_rate(stack, topic, rate, cfg.step_seconds)
    cpu = meter.stop()
    expected = run.ok * clients
    deadline = time.monotonic() + cfg.drain_seconds
    received = await pool.received(group)
    while received < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        received = await pool.received(group)
    received, latencies, errors = await pool.collect(group)
    server_cpu_s = sum(v for k, v in meter.seconds().items() if not k.startswith("_"))
    latency = LatencySummary.of(latencies)
    delivered_all = received >= expected > 0
    on_schedule = run.achieved_rate >= 0.95 * rate and run.failed == 0
    sustained = delivered_all and on_schedule and latency.p99_ms <= cfg.max_p99_ms
    notes = []
    if not on_schedule:
        notes.append(
            f"publisher {run.achieved_rate:.0f}/s of {rate}/s, {run.failed} failed "
            f"{run.first_error}".strip()
        )
    if errors:
        notes.append("client: " + errors[0])
    step = Step(
        side=side,
        rate=rate,
        clients=clients,
        published=run.ok,
        achieved_rate=run.achieved_rate,
        publish_failed=run.failed,
        received=received,
        latency=latency,
        server_cpu={k: v for k, v in cpu.items() if not k.startswith("_")},
        other_cpu=max(0.0, cpu[MACHINE] - sum(v for k, v in cpu.items() if k != MACHINE)),
        client_cpu=sum(v for k, v in cpu.items() if k.startswith("_client")),
        client_cpu_max=max((v for k, v in cpu.items() if k.startswith("_client")), default=0.0),
        publisher_cpu=cpu["_publisher"],
        sustained=sustained,
        note="; ".join(notes),
        server_cpu_s=server_cpu_s,
    )
    if record:
        _log(
            f"{group:12} {rate:5}/s  delivered {100 * step.delivered:6.2f}%  "
            f"{step.deliveries_per_s:9.0f} deliveries/s  p50 {latency.p50_ms:7.2f} ms  "
            f"p99 {latency.p99_ms:7.2f} ms  server cpu {sum(step.server_cpu.values()):4.0f}% "
            f"({step.cpu_us_per_delivery or 0:5.1f} µs/delivery)  "
            f"client cpu {step.client_cpu:4.0f}% (max {step.client_cpu_max:3.0f}%)  "
            f"other {step.other_cpu:4.0f}%  "
            f"{'ok' if sustained else 'NOT sustained'}"
            f"  {step.note}"
        )
    return step


async def run_stepped(
    scenario: str, stacks: dict[str, Stack], pool: WorkerPool, cfg: Config, budget: Budget
) -> SteppedResult:
    """``fanout`` (WebSockets), ``sse`` (event streams) or ``longpoll`` (poll loops).

    Steps the publish rate up; see the module docstring and README for the sustained rule.
    """
    topic = f"bench.{scenario}"
    clients, rates = {
        "fanout": (cfg.fanout_subscribers, cfg.fanout_rates),
        "sse": (cfg.sse_subscribers, cfg.sse_rates),
        "longpoll": (cfg.longpoll_loops, cfg.longpoll_rates),
    }[scenario]
    result = SteppedResult(scenario, clients, rates=rates)
    active: list[str] = []
    for side, stack in stacks.items():
        group = f"{scenario}-{side}"
        shares = split(clients, pool.size)
        if scenario == "fanout":
            path = "/api/v1/ws" if side == "relay" else f"/ws/{topic}"
            url = f"ws://{HOST}:{stack.subscribe_port}{path}"
            answers = await pool.each(
                [
                    {
                        "op": "ws",
                        "group": group,
                        "kind": side,
                        "url": url,
                        "topic": topic,
                        "n": n,
                        "sources": SOURCES,
                        "concurrency": 50,
                        "timeout": 60,
                    }
                    for n in shares
                ],
                limit_s=90,
            )
            ready = sum(a["ready"] for a in answers)
            errors = [e for a in answers for e in a["errors"]]
        elif scenario == "sse":
            answers = await pool.each(
                [
                    {
                        "op": "sse",
                        "group": group,
                        "host": HOST,
                        "port": stack.subscribe_port,
                        "path": (
                            f"/api/v1/sse?topic={topic}" if side == "relay" else f"/sse/{topic}"
                        ),
                        "n": n,
                        "sources": SOURCES,
                        "concurrency": 50,
                        "timeout": 60,
                    }
                    for n in shares
                ],
                limit_s=90,
            )
            ready = sum(a["ready"] for a in answers)
            errors = [e for a in answers for e in a["errors"]]
        else:
            answers = await pool.each(
                [
                    {
                        "op": "lp",
                        "group": group,
                        "kind": side,
                        "host": HOST,
                        "port": stack.subscribe_port,
                        "topic": topic,
                        "n": n,
                        "sources": SOURCES,
                        "max_seconds": max(budget.left(), 30),
                    }
                    for n in shares
                ],
            )
            await asyncio.sleep(1.0)  # let every loop reach its first wait
            ready = sum(a["started"] for a in answers)
            errors = []
        result.setup[side] = f"{ready}/{clients} ready" + (f" ({errors[0]})" if errors else "")
        _log(f"{scenario} {side}: {result.setup[side]}")
        if ready == clients:
            active.append(side)
            result.ready_sides.append(side)
            # Warm-up at a low rate, not recorded: first subscriptions, JIT-free code paths.
            await _step(
                pool,
                stack,
                side,
                group,
                topic,
                10,
                clients,
                Config(step_seconds=1.0, drain_seconds=1.0),
                record=False,
            )

    async def attempt_rate(side: str, rate: int) -> bool:
        """Up to ``cfg.step_attempts`` tries: a rate fails only when every attempt fails."""
        # Two cores are shared with whatever else runs: one stall can sink a step.
        for attempt in range(1, cfg.step_attempts + 1):
            step = await _step(
                pool,
                stacks[side],
                side,
                f"{scenario}-{side}",
                topic,
                rate,
                clients,
                cfg,
                budget=budget,
            )
            if attempt > 1:
                step.note = (f"attempt {attempt}; " + step.note).strip("; ")
            result.steps.append(step)
            if step.sustained:
                return True
        return False

    def budget_allows(sides: int) -> bool:
        return budget.left() >= 2 * (cfg.step_seconds + cfg.drain_seconds + 2) * sides

    failed_at: dict[str, int] = {}
    for index, rate in enumerate(rates):
        if not active:
            break
        if not budget_allows(len(active)):
            _log(f"{scenario}: time budget reached, stepping stops at {rate}/s")
            result.cut = dict.fromkeys(active, rate)
            break
        for side in list(active):
            if not await attempt_rate(side, rate):
                active.remove(side)
                failed_at[side] = index

    # A side that dropped out below the others gets one more pass from the rate it failed, so
    # a noisy minute for one side (neighbours come and go) does not decide the comparison.
    highest = max((failed_at.get(side, len(rates)) for side in result.ready_sides), default=0)
    for side, index in failed_at.items():
        if index >= highest or not budget_allows(1):
            continue
        _log(f"{scenario} {side}: second pass from {rates[index]}/s")
        for rate in rates[index:]:
            if not budget_allows(1):
                _log(f"{scenario} {side}: time budget reached, second pass stops at {rate}/s")
                result.cut[side] = rate
                break
            if not await attempt_rate(side, rate):
                break

    reference = result.best("relay") or result.best("nchan")
    if scenario == "fanout" and reference is not None:
        result.half_rate = max(1, reference.rate // 2)
        for _ in range(cfg.half_rounds):
            if budget.left() < 2 * (cfg.step_seconds + cfg.drain_seconds + 2):
                _log(f"{scenario}: time budget reached, fewer half-rate rounds")
                break
            for side, stack in stacks.items():
                if side not in result.ready_sides:
                    continue
                step = await _step(
                    pool,
                    stack,
                    side,
                    f"{scenario}-{side}",
                    topic,
                    result.half_rate,
                    clients,
                    cfg,
                    budget=budget,
                )
                result.half_steps.append(step)

    await pool.all({"op": "close", "group": f"{scenario}-relay"})
    await pool.all({"op": "close", "group": f"{scenario}-nchan"})
    return result


# --------------------------------------------------------------------------- idle connections


@dataclass
class ConnsResult:
    side: str
    target: int
    connected: int
    ready: int
    held: int
    seconds: float
    rss_before_kib: int
    rss_after_kib: int
    client_cpu: float
    errors: list[str]

    @property
    def kib_per_conn(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / self.held if self.held else 0.0


def _tree_rss(pid: int) -> int:
    return rss_kib(pid) + sum(_tree_rss(child) for child in children(pid))


async def run_conns(stacks: dict[str, Stack], pool: WorkerPool, cfg: Config) -> list[ConnsResult]:
    results: list[ConnsResult] = []
    topic = "bench.idle"
    for side, stack in stacks.items():
        group = f"conns-{side}"
        path = "/api/v1/ws" if side == "relay" else f"/ws/{topic}"
        url = f"ws://{HOST}:{stack.subscribe_port}{path}"
        # The process that holds the sockets: the gateway (and any workers), nginx's worker.
        holder = stack.rss_pid() if side == "nchan" else stack.server_pids()["gateway"]
        rss_before = _tree_rss(holder)
        cpu_before = pool.cpu_seconds()
        started = time.monotonic()
        answers = await pool.each(
            [
                {
                    "op": "ws",
                    "group": group,
                    "kind": side,
                    "url": url,
                    "topic": topic,
                    "n": n,
                    "sources": SOURCES,
                    "concurrency": 200,
                    "timeout": 150,
                }
                for n in split(cfg.idle_connections, pool.size)
            ],
            limit_s=180,
        )
        connect_seconds = time.monotonic() - started
        client_cpu = 100 * (pool.cpu_seconds() - cpu_before) / max(connect_seconds, 1e-9)
        await asyncio.sleep(cfg.hold_seconds)
        probes = await pool.all({"op": "probe", "group": group, "timeout": 20}, limit_s=60)
        rss_after = _tree_rss(holder)
        result = ConnsResult(
            side=side,
            target=cfg.idle_connections,
            connected=sum(a["connected"] for a in answers),
            ready=sum(a["ready"] for a in answers),
            held=sum(min(p["pongs"], p["open"]) for p in probes),
            seconds=connect_seconds,
            rss_before_kib=rss_before,
            rss_after_kib=rss_after,
            client_cpu=client_cpu,
            errors=[e for a in answers for e in a["errors"]][:3],
        )
        _log(
            f"conns {side}: {result.ready}/{result.target} subscribed in {connect_seconds:.1f}s,"
            f" {result.held} answered a ping after {cfg.hold_seconds:g}s,"
            f" {result.kib_per_conn:.1f} KiB RSS each  {result.errors[:1]}"
        )
        results.append(result)
        await pool.all({"op": "close", "group": group}, limit_s=120)
        await asyncio.sleep(2.0)  # let the server tear the sockets down before the next side
    return results


def wrk_available() -> bool:
    return shutil.which("wrk") is not None
