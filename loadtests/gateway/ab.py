"""A/B a gateway change: two relay stacks (two checkouts), the same fixed load, alternating.

On two shared cores the absolute figures move with whatever else runs; comparing two builds
step by step, A B A B, within one run is what shows an optimisation's effect. The figure that
noise disturbs least is the gateway's CPU per delivery (µs of gateway CPU per message handed
to a subscriber); latency percentiles are printed too.

    uv run python -m loadtests.gateway.ab --base-python /tmp/base/.venv/bin/python \\
        --scenario fanout --rates 20,50,100 --rounds 2

Scenarios: ``fanout`` (WebSocket subscribers), ``sse`` (Server-Sent Events streams,
:mod:`loadtests.bench.sseclient`), ``longpoll`` (poll loops); all on one topic.

``--base-python`` is the interpreter of the other checkout's environment (``uv sync`` there);
the current checkout runs with this interpreter. Uses the bench harness's clients and stacks.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from dataclasses import dataclass

import uvloop
from loadtests.bench.pool import WorkerPool, split
from loadtests.bench.scenarios import SOURCES, Config, Step, _step
from loadtests.bench.stacks import HOST, RelayStack


@dataclass
class PythonRelayStack(RelayStack):
    """A relay stack whose services run with another checkout's interpreter."""

    python: str = sys.executable

    def _spawn(self, module: str) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{module}.log").open("wb")
        return subprocess.Popen(
            [self.python, "-m", module],
            env=self._env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _row(side: str, step: Step) -> str:
    gateway = step.server_cpu.get("gateway", 0.0)
    deliveries = step.deliveries_per_s
    us = 10_000 * gateway / deliveries if deliveries else 0.0
    return (
        f"| {side} | {step.rate} | {100 * step.delivered:.2f} | {deliveries:,.0f} "
        f"| {step.latency.p50_ms:.2f} | {step.latency.p99_ms:.2f} | {gateway:.0f} | {us:.1f} "
        f"| {step.other_cpu:.0f} |"
    )


async def _main(args: argparse.Namespace) -> int:
    cfg = Config(step_seconds=args.seconds)
    stacks = {
        "base": PythonRelayStack("base", python=args.base_python),
        "new": PythonRelayStack("new"),
    }
    clients = args.clients
    topic = f"ab.{args.scenario}"
    pool = WorkerPool(cfg.workers)
    for stack in stacks.values():
        stack.start()
    await pool.start()
    rows = [
        f"# A/B {args.scenario}, {clients} clients, {args.seconds:g} s per step",
        "",
        "| side | rate/s | delivered % | deliveries/s | p50 ms | p99 ms | gateway cpu % "
        "| gateway µs/delivery | other cpu % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    try:
        for side, stack in stacks.items():
            group = f"{args.scenario}-{side}"
            shares = split(clients, pool.size)
            if args.scenario == "fanout":
                url = f"ws://{HOST}:{stack.subscribe_port}/api/v1/ws"
                requests = [
                    {"op": "ws", "group": group, "kind": "relay", "url": url, "topic": topic,
                     "n": n, "sources": SOURCES, "concurrency": 50, "timeout": 60}
                    for n in shares
                ]  # fmt: skip
                await pool.each(requests, limit_s=90)
            elif args.scenario == "sse":
                requests = [
                    {"op": "sse", "group": group, "host": HOST, "port": stack.subscribe_port,
                     "path": f"/api/v1/sse?topic={topic}", "n": n, "sources": SOURCES,
                     "concurrency": 50, "timeout": 60}
                    for n in shares
                ]  # fmt: skip
                await pool.each(requests, limit_s=90)
            else:
                requests = [
                    {"op": "lp", "group": group, "kind": "relay", "host": HOST,
                     "port": stack.subscribe_port, "topic": topic, "n": n, "sources": SOURCES,
                     "max_seconds": 3600}
                    for n in shares
                ]  # fmt: skip
                await pool.each(requests)
                await asyncio.sleep(1.0)
            warm = Config(step_seconds=1.0, drain_seconds=1.0)
            await _step(pool, stack, side, group, topic, 10, clients, warm, record=False)
        for rate in [int(r) for r in args.rates.split(",")]:
            for _ in range(args.rounds):
                for side, stack in stacks.items():
                    group = f"{args.scenario}-{side}"
                    step = await _step(pool, stack, side, group, topic, rate, clients, cfg)
                    rows.append(_row(side, step))
    finally:
        await pool.stop()
        for stack in stacks.values():
            stack.stop()
    print("\n".join(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.gateway.ab", description=__doc__)
    parser.add_argument("--base-python", required=True)
    parser.add_argument("--scenario", choices=("fanout", "sse", "longpoll"), default="fanout")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rates", default="20,50,100")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    return uvloop.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
