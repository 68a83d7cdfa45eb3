"""``python -m loadtests.bench``: Pulsar Relay vs nchan, side by side, in one run (``make bench``).

Starts both stacks on free ports, runs the scenarios alternating relay / nchan, prints a
markdown table with every figure for both and the ratio relay/nchan, writes it to
``loadtests/results/bench-<date>.md`` and stops everything it started.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from pathlib import Path

import uvloop

from .pool import WorkerPool
from .report import Report, machine_info
from .scenarios import Budget, Config, run_batch, run_conns, run_publish, run_stepped
from .stacks import NchanStack, RelayStack, Stack, ensure_peer_installed

SCENARIOS = ("publish", "batch", "fanout", "longpoll", "sse", "conns")
# Share of the stepping budget each stepped scenario gets (what one leaves goes to the next).
# Long-poll's ladder is the longest (both sides usually reach its top); SSE runs last.
STEPPED_WEIGHTS = {"fanout": 1.0, "longpoll": 1.2, "sse": 0.6}
RESULTS = Path(__file__).resolve().parents[1] / "results"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__)
    parser.add_argument("--sides", default="relay,nchan", help="relay,nchan (default both)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument("--quick", action="store_true", help="short smoke run (~1 min)")
    parser.add_argument(
        "--budget",
        type=float,
        default=500.0,
        help="seconds from start after which stepping stops (conns still runs, ~1 min)",
    )
    parser.add_argument(
        "--subscribers", type=int, default=None, help="fanout and sse subscribers (1000)"
    )
    parser.add_argument("--loops", type=int, default=None, help="long-poll loops (200)")
    parser.add_argument(
        "--rates", default=None, help="comma-separated msgs/s ladder for every stepped scenario"
    )
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--no-install", action="store_true", help="never call apt-get")
    return parser.parse_args(argv)


def _quick(cfg: Config) -> Config:
    return dataclasses.replace(
        cfg,
        rounds=1,
        publish_seconds=3.0,
        warmup_seconds=1.0,
        fanout_subscribers=200,
        fanout_rates=(20, 100, 400),
        sse_subscribers=200,
        sse_rates=(20, 100, 400),
        longpoll_loops=50,
        longpoll_rates=(20, 100, 400),
        step_seconds=1.5,
        idle_connections=1500,
        hold_seconds=1.0,
    )


def _overrides(cfg: Config, args: argparse.Namespace) -> Config:
    """Smaller runs for smoke tests: fewer clients, another rate ladder."""
    if args.subscribers:
        cfg = dataclasses.replace(
            cfg, fanout_subscribers=args.subscribers, sse_subscribers=args.subscribers
        )
    if args.loops:
        cfg = dataclasses.replace(cfg, longpoll_loops=args.loops)
    if args.rates:
        rates = tuple(int(r) for r in args.rates.split(",") if r)
        cfg = dataclasses.replace(cfg, fanout_rates=rates, sse_rates=rates, longpoll_rates=rates)
    return cfg


async def _main(args: argparse.Namespace) -> int:
    started_wall = time.monotonic()
    cfg = _overrides(_quick(Config()) if args.quick else Config(), args)
    budget = Budget(args.budget)
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        print(f"bench: unknown scenario(s) {sorted(unknown)}", file=sys.stderr)
        return 2
    sides = [s for s in args.sides.split(",") if s]
    if "nchan" in sides and not args.no_install:
        ensure_peer_installed()
    report = Report(cfg, machine_info(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    stacks: dict[str, Stack] = {}
    pool = WorkerPool(cfg.workers)
    try:
        for side in sides:
            stack: Stack = RelayStack("relay") if side == "relay" else NchanStack("nchan")
            stack.start()
            stacks[side] = stack
            print(
                f"bench: {side} up (publish :{stack.publish_port}, "
                f"subscribe :{stack.subscribe_port})",
                flush=True,
            )
        await pool.start()
        if "publish" in scenarios:
            report.publish = await run_publish(stacks, cfg, budget)
        if "batch" in scenarios:
            report.batch = await run_batch(stacks, cfg, budget)
        stepped = [name for name in STEPPED_WEIGHTS if name in scenarios]
        for index, name in enumerate(stepped):
            budget.stage(STEPPED_WEIGHTS[name], sum(STEPPED_WEIGHTS[n] for n in stepped[index:]))
            report.stepped[name] = await run_stepped(name, stacks, pool, cfg, budget)
        if "conns" in scenarios:
            report.conns = await run_conns(stacks, pool, cfg)
    finally:
        with contextlib.suppress(Exception):
            await pool.stop()
        for stack in stacks.values():
            stack.stop()
    report.elapsed_s = time.monotonic() - started_wall
    text = report.markdown()
    out = args.out or RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print("\n" + text)
    print(f"bench: report written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return uvloop.run(_main(_parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
