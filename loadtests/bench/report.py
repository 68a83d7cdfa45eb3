"""The markdown report: one summary table with ratios and targets, then every measured figure."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from relay_devtools.embedded import server_binary

from .compare import STEP_TARGETS, RateRow, common_best, every_step, rate_rows, up_to_nchan_best
from .scenarios import Config, ConnsResult, Step, SteppedResult, WrkRun
from .stats import ratio

__all__ = ["Report", "machine_info"]


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    return (
        (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr) else ""
    )


def machine_info() -> dict[str, str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    nginx = shutil.which("nginx") or "nginx"
    return {
        "cpu": f"{model}, {os.cpu_count()} cores",
        "memory": f"{mem:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": _run([nginx, "-v"]),
        "nchan": _run(["dpkg-query", "-W", "-f=${Version}", "libnginx-mod-nchan"]),
        "valkey": _run([str(server_binary()), "--version"]),
        "wrk": _run(["wrk", "-v"]),
        "load average at start": " ".join(open("/proc/loadavg").read().split()[:3]),
    }


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _best_low(values: Sequence[float]) -> float | None:
    return min(values) if values else None


def _met(value: float | None, check: Callable[[float], bool]) -> str:
    if value is None:
        return "n/a"
    return "yes" if check(value) else "**no**"


@dataclass
class Report:
    cfg: Config
    machine: dict[str, str]
    started: str
    elapsed_s: float = 0.0
    publish: list[WrkRun] = field(default_factory=list)
    batch: list[WrkRun] = field(default_factory=list)
    stepped: dict[str, SteppedResult] = field(default_factory=dict)
    conns: list[ConnsResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    # ---------------------------------------------------------------- figures
    def _publish(self, side: str, attr: str) -> float | None:
        """``attr`` of the side's best publish round.

        Best of N, not the median: on shared cores, neighbours only ever take throughput away,
        so the best round is the closest to what the server can do (same rule for both sides).
        """
        runs = [r for r in self.publish if r.side == side]
        best = max(runs, key=lambda r: r.msgs_per_s, default=None)
        return None if best is None else float(getattr(best, attr))

    def _publish_median(self, side: str) -> float | None:
        return _median([r.msgs_per_s for r in self.publish if r.side == side])

    def _best_single(self, side: str) -> float | None:
        return self._publish(side, "msgs_per_s")

    def _batch(self) -> float | None:
        return max((r.msgs_per_s for r in self.batch), default=None)

    def _best(self, scenario: str, side: str) -> Step | None:
        result = self.stepped.get(scenario)
        return result.best(side) if result else None

    def _at(self, scenario: str, side: str, best: Step | None) -> str:
        if best is None:
            return ""
        result = self.stepped[scenario]
        if result.capped(side):
            return f" @ {best.rate}/s (top step: a lower bound)"
        if result.unfinished(side):
            return f" @ {best.rate}/s (time budget ended the stepping: a lower bound)"
        return f" @ {best.rate}/s"

    def _half_p99(self, side: str, pick: Callable[[list[float]], float | None]) -> float | None:
        result = self.stepped.get("fanout")
        if result is None:
            return None
        return pick([s.latency.p99_ms for s in result.half(side)])

    def _conns(self, side: str) -> ConnsResult | None:
        return next((c for c in self.conns if c.side == side), None)

    # ---------------------------------------------------------------- tables
    def summary_rows(self) -> list[list[str]]:
        rows: list[list[str]] = []
        if self.publish:
            pub_r, pub_n = (
                self._publish("relay", "msgs_per_s"),
                self._publish("nchan", "msgs_per_s"),
            )
            r = ratio(pub_r, pub_n)
            rows.append(
                [
                    "publish",
                    f"msgs/s, {self.cfg.publish_connections} conns (best of {self.cfg.rounds})",
                    _fmt(pub_r),
                    _fmt(pub_n),
                    _ratio(r),
                    "≥ 1.0x",
                    _met(r, lambda x: x >= 1.0),
                ]
            )
            med_r, med_n = self._publish_median("relay"), self._publish_median("nchan")
            rows.append(
                [
                    "publish",
                    "msgs/s, median of rounds",
                    _fmt(med_r),
                    _fmt(med_n),
                    _ratio(ratio(med_r, med_n)),
                    "—",
                    "",
                ]
            )
            for label, attr in (("p50 ms", "p50_ms"), ("p99 ms", "p99_ms")):
                a, b = self._publish("relay", attr), self._publish("nchan", attr)
                rows.append(
                    [
                        "publish",
                        f"latency {label} (best round)",
                        _fmt(a, 2),
                        _fmt(b, 2),
                        _ratio(ratio(a, b)),
                        "—",
                        "",
                    ]
                )
            a = self._publish("relay", "cpu_us_per_msg")
            b = self._publish("nchan", "cpu_us_per_msg")
            rows.append(
                [
                    "publish",
                    "server CPU µs per message (best round)",
                    _fmt(a, 1),
                    _fmt(b, 1),
                    _ratio(ratio(a, b)),
                    "—",
                    "",
                ]
            )
        if self.batch:
            batch, single = self._batch(), self._best_single("nchan")
            r = ratio(batch, single)
            rows.append(
                [
                    "batch",
                    f"msgs/s, {self.cfg.batch_size}/request, best round (nchan: best single)",
                    _fmt(batch),
                    _fmt(single),
                    _ratio(r),
                    "≥ 10x",
                    _met(r, lambda x: x >= 10.0),
                ]
            )
            best_batch = max(self.batch, key=lambda run: run.msgs_per_s)
            a, b = best_batch.cpu_us_per_msg, self._publish("nchan", "cpu_us_per_msg")
            rows.append(
                [
                    "batch",
                    "server CPU µs per message (best round; nchan: best single)",
                    _fmt(a, 1),
                    _fmt(b, 1),
                    _ratio(ratio(a, b)),
                    "—",
                    "",
                ]
            )
        for scenario, clients, what, target in (
            ("fanout", self.cfg.fanout_subscribers, "WebSocket subscribers", 4.0),
            ("longpoll", self.cfg.longpoll_loops, "long-poll loops", 1.0),
            ("sse", self.cfg.sse_subscribers, "SSE subscribers", 1.0),
        ):
            if scenario not in self.stepped:
                continue
            best_r, best_n = self._best(scenario, "relay"), self._best(scenario, "nchan")
            da = best_r.deliveries_per_s if best_r else None
            db = best_n.deliveries_per_s if best_n else None
            r = ratio(da, db)
            rows.append(
                [
                    scenario,
                    f"highest sustained deliveries/s ({clients} {what})",
                    _fmt(da) + self._at(scenario, "relay", best_r),
                    _fmt(db) + self._at(scenario, "nchan", best_n),
                    _ratio(r),
                    f"≥ {target:.1f}x",
                    _met(r, _at_least(target)),
                ]
            )
            if best_r or best_n:
                for label, get in _LATENCY_FIGURES:
                    va = get(best_r) if best_r else None
                    vb = get(best_n) if best_n else None
                    rows.append(
                        [
                            scenario,
                            f"latency {label} at that step",
                            _fmt(va, 2),
                            _fmt(vb, 2),
                            _ratio(ratio(va, vb)),
                            "—",
                            "",
                        ]
                    )
                rows += self._cpu_rows(scenario, best_r, best_n)
        fan = self.stepped.get("fanout")
        if fan is not None and fan.half_rate:
            # Best round, like throughput: neighbours only ever add latency (same rule both sides).
            a, b = self._half_p99("relay", _best_low), self._half_p99("nchan", _best_low)
            r = ratio(a, b)
            rows.append(
                [
                    "fanout",
                    f"e2e p99 ms at half the relay's best ({fan.half_rate}/s), "
                    f"best of {self.cfg.half_rounds}",
                    _fmt(a, 2),
                    _fmt(b, 2),
                    _ratio(r),
                    "≤ 1.5x",
                    _met(r, lambda x: x <= 1.5),
                ]
            )
            a, b = self._half_p99("relay", _median), self._half_p99("nchan", _median)
            rows.append(
                [
                    "fanout",
                    "e2e p99 ms at that rate, median of rounds",
                    _fmt(a, 2),
                    _fmt(b, 2),
                    _ratio(ratio(a, b)),
                    "—",
                    "",
                ]
            )
        ca, cb = self._conns("relay"), self._conns("nchan")
        if ca or cb:
            rows.append(
                [
                    "conns",
                    f"idle WebSockets held (of {self.cfg.idle_connections})",
                    _fmt(ca.held if ca else None),
                    _fmt(cb.held if cb else None),
                    _ratio(ratio(ca.held if ca else None, cb.held if cb else None)),
                    f"{self.cfg.idle_connections}",
                    _met(ca.held if ca else None, lambda x: x >= self.cfg.idle_connections),
                ]
            )
            ka = ca.kib_per_conn if ca else None
            kb = cb.kib_per_conn if cb else None
            rows.append(
                [
                    "conns",
                    "server RSS per connection, KiB",
                    _fmt(ka, 1),
                    _fmt(kb, 1),
                    _ratio(ratio(ka, kb)),
                    "≤ 12 KiB",
                    _met(ka, lambda x: x <= 12.0),
                ]
            )
        return rows

    def _cpu_rows(self, scenario: str, best_r: Step | None, best_n: Step | None) -> list[list[str]]:
        """CPU per delivery at each side's best step, at the highest common rate, every step."""
        result = self.stepped[scenario]
        p99_limit, cpu_limit = STEP_TARGETS.get(scenario, (None, None))
        va = best_r.cpu_us_per_delivery if best_r else None
        vb = best_n.cpu_us_per_delivery if best_n else None
        rows = [
            [
                scenario,
                "server CPU µs per delivery at that step",
                _fmt(va, 2),
                _fmt(vb, 2),
                _ratio(ratio(va, vb)),
                "—",
                "",
            ]
        ]
        common = common_best(result)
        if common is not None and common.relay is not None and common.nchan is not None:
            r = common.cpu_ratio
            rows.append(
                [
                    scenario,
                    f"server CPU µs per delivery at {common.rate}/s, the highest rate both "
                    "sustained",
                    _fmt(common.relay.cpu_us_per_delivery, 2),
                    _fmt(common.nchan.cpu_us_per_delivery, 2),
                    _ratio(r),
                    "—" if cpu_limit is None else f"≤ {cpu_limit:.1f}x",
                    "" if cpu_limit is None else _met(r, lambda x: x <= cpu_limit),
                ]
            )
        if scenario != "longpoll":
            return rows
        steps = up_to_nchan_best(result)
        best = result.best("nchan")
        upto = f"every step up to nchan's highest sustained ({best.rate}/s)" if best else ""
        for label, figure, limit, pick in (
            ("e2e p99 ms", _p99_ratio, p99_limit, _p99),
            ("server CPU µs per delivery", _cpu_ratio, cpu_limit, _cpu_per_delivery),
        ):
            if limit is None or not steps:
                continue
            fared = every_step(steps, figure, limit)
            worst = fared.worst
            at = f" (worst: {worst.rate}/s)" if worst is not None else ""
            rows.append(
                [
                    scenario,
                    f"{label}, {upto}{at}",
                    _fmt(pick(worst.relay), 2) if worst and worst.relay else "not reached",
                    _fmt(pick(worst.nchan) if worst and worst.nchan else None, 2),
                    _ratio(fared.worst_ratio),
                    f"≤ {limit:.1f}x at every step",
                    ("yes" if fared.all_met else "**no**") + f" ({fared.met}/{fared.steps} steps)",
                ]
            )
        return rows

    def _rate_table(self, name: str, result: SteppedResult) -> list[str]:
        """Relay vs nchan at every rate: the attempt standing for each side (compare.py)."""
        p99_limit, cpu_limit = STEP_TARGETS.get(name, (None, None))
        nchan_best = result.best("nchan")
        rows = []
        for row in rate_rows(result):
            in_scope = nchan_best is not None and row.rate <= nchan_best.rate
            cells = [
                str(row.rate),
                _sustained(row.relay),
                _sustained(row.nchan),
                _fmt(_p99(row.relay), 2),
                _fmt(_p99(row.nchan), 2),
                _ratio(row.p99_ratio),
                _fmt(_cpu_per_delivery(row.relay), 2),
                _fmt(_cpu_per_delivery(row.nchan), 2),
                _ratio(row.cpu_ratio),
            ]
            for limit, value in ((p99_limit, row.p99_ratio), (cpu_limit, row.cpu_ratio)):
                if limit is not None:
                    ok = row.relay is not None and row.relay.sustained
                    met = "yes" if ok and value is not None and value <= limit else "**no**"
                    cells.append(met if in_scope else "")
            rows.append(cells)
        header = [
            "rate/s",
            "relay sustained",
            "nchan sustained",
            "relay p99 ms",
            "nchan p99 ms",
            "p99 relay/nchan",
            "relay µs/delivery",
            "nchan µs/delivery",
            "CPU relay/nchan",
        ]
        if p99_limit is not None:
            header.append(f"p99 ≤ {p99_limit:.1f}x")
        if cpu_limit is not None:
            header.append(f"CPU ≤ {cpu_limit:.1f}x")
        out = [f"## {name}: relay vs nchan at every rate step", ""]
        out.append(
            "Each side's best attempt at each rate (sustained first, then lowest p99); the "
            "target columns cover the rates up to nchan's highest sustained."
        )
        out.append("")
        return out + _table(header, rows) + [""]

    def markdown(self) -> str:
        out: list[str] = [f"# Pulsar Relay vs nchan — `make bench`, {self.started}", ""]
        out += [f"- **{k}**: {v}" for k, v in self.machine.items()]
        out += [f"- **run time**: {self.elapsed_s:.0f} s"]
        others = [r.other_cpu for r in self.publish + self.batch] + [
            s.other_cpu
            for result in self.stepped.values()
            for s in result.steps + result.half_steps
        ]
        if others:
            out.append(
                f"- **other jobs' CPU during measurements**: mean {statistics.mean(others):.0f} %, "
                f"max {max(others):.0f} % of one core (2 cores = 200 %)"
            )
        out.append("")
        out += _table(
            ["scenario", "figure", "relay", "nchan", "relay/nchan", "target", "met"],
            self.summary_rows(),
        )
        out += [
            "",
            "CPU columns: % of one core over the measured window (2 cores = 200 %). "
            "'other' = busy CPU on the machine the bench did not cause (other jobs).",
            "Clients = the harness's own load generators (sum; busiest process in brackets: near "
            "100 % means the client, not the server, limited that figure).",
            "",
        ]
        if self.publish or self.batch:
            out += ["## publish / batch (wrk, every round)", ""]
            rows = [
                [
                    r.kind,
                    r.side,
                    str(r.connections),
                    _fmt(r.msgs_per_s),
                    _fmt(r.p50_ms, 2),
                    _fmt(r.p99_ms, 2),
                    str(r.errors),
                    _fmt(r.client_cpu),
                    _cpu(r.server_cpu),
                    _fmt(r.cpu_us_per_msg, 1),
                    _fmt(r.other_cpu),
                ]
                for r in self.publish + self.batch
            ]
            out += _table(
                [
                    "kind",
                    "side",
                    "conns",
                    "msgs/s",
                    "p50 ms",
                    "p99 ms",
                    "errors",
                    "wrk cpu %",
                    "server cpu %",
                    "server µs/msg",
                    "other cpu %",
                ],
                rows,
            )
            out.append("")
        for name, result in self.stepped.items():
            out += self._rate_table(name, result)
            out += [f"## {name}: {result.clients} clients, stepped publish rate", ""]
            out += [f"- setup {side}: {text}" for side, text in result.setup.items()]
            out += [
                f"- {side}: the time budget stopped the stepping before {rate}/s"
                for side, rate in result.cut.items()
            ]
            out.append("")
            steps = result.steps + result.half_steps
            rows = [
                [
                    s.side,
                    str(s.rate),
                    _fmt(s.achieved_rate),
                    f"{100 * s.delivered:.2f}",
                    _fmt(s.deliveries_per_s),
                    _fmt(s.latency.p50_ms, 2),
                    _fmt(s.latency.p99_ms, 2),
                    _fmt(s.latency.max_ms, 1),
                    _cpu(s.server_cpu),
                    _fmt(s.cpu_us_per_delivery, 2),
                    f"{_fmt(s.client_cpu)} (max {_fmt(s.client_cpu_max)})",
                    _fmt(s.other_cpu),
                    _fmt(s.publisher_cpu),
                    ("yes" if s.sustained else "no")
                    + (" (half-rate)" if s in result.half_steps else ""),
                    s.note[:120],
                ]
                for s in steps
            ]
            out += _table(
                [
                    "side",
                    "rate/s",
                    "published/s",
                    "delivered %",
                    "deliveries/s",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "server cpu %",
                    "server µs/delivery",
                    "clients cpu % (busiest)",
                    "other cpu %",
                    "publisher cpu %",
                    "sustained",
                    "note",
                ],
                rows,
            )
            out.append("")
        if self.conns:
            out += ["## conns: idle WebSockets", ""]
            rows = [
                [
                    c.side,
                    f"{c.connected}/{c.target}",
                    str(c.ready),
                    str(c.held),
                    f"{c.seconds:.1f}",
                    _fmt(c.client_cpu),
                    f"{c.rss_before_kib / 1024:.1f}",
                    f"{c.rss_after_kib / 1024:.1f}",
                    _fmt(c.kib_per_conn, 1),
                    (c.errors[0][:100] if c.errors else ""),
                ]
                for c in self.conns
            ]
            out += _table(
                [
                    "side",
                    "connected",
                    "subscribed",
                    "answered ping",
                    "connect s",
                    "clients cpu %",
                    "RSS before MiB",
                    "RSS after MiB",
                    "KiB/conn",
                    "first error",
                ],
                rows,
            )
            out.append("")
        if self.notes:
            out += ["## notes", ""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(out)


_LATENCY_FIGURES: tuple[tuple[str, Callable[[Step], float]], ...] = (
    ("p50 ms", lambda s: s.latency.p50_ms),
    ("p99 ms", lambda s: s.latency.p99_ms),
)


def _at_least(limit: float) -> Callable[[float], bool]:
    return lambda value: value >= limit


def _p99(step: Step | None) -> float | None:
    return step.latency.p99_ms if step else None


def _cpu_per_delivery(step: Step | None) -> float | None:
    return step.cpu_us_per_delivery if step else None


def _p99_ratio(row: RateRow) -> float | None:
    return row.p99_ratio


def _cpu_ratio(row: RateRow) -> float | None:
    return row.cpu_ratio


def _sustained(step: Step | None) -> str:
    if step is None:
        return "not run"
    return "yes" if step.sustained else "**no**"


def _cpu(values: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.0f}" for k, v in values.items())


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines
