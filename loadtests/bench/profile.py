"""Profile the relay under load with py-spy: where do ingest and gateway spend their CPU?

``python -m loadtests.bench.profile --scenario fanout --rate 200 --seconds 10`` starts a relay
stack, drives one scenario at a fixed load while ``py-spy record`` samples ingest and gateway
(``--nonblocking``: the target is never paused), then prints the hottest functions by own
time and by inclusive time, and keeps the raw collapsed stacks (flamegraph input) under
``loadtests/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import sys
import time
from pathlib import Path

import uvloop

from .pool import WorkerPool, split
from .publisher import publish_at_rate
from .scenarios import SOURCES, Config, _wrk_run
from .stacks import HOST, RelayStack
from .stats import make_payload

RESULTS = Path(__file__).resolve().parents[1] / "results"


def summarize(raw: str, top: int = 25) -> str:
    """Own-time and inclusive-time tables from py-spy's collapsed ``frame;frame;leaf count``."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", "| own % | function |", "|---|---|"]
    lines += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in own.most_common(top)]
    lines += ["", "| inclusive % | function |", "|---|---|"]
    lines += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


async def _drive(stack: RelayStack, args: argparse.Namespace) -> str:
    cfg = Config()
    if args.scenario in ("publish", "batch"):
        topic = "bench.profile"
        if args.scenario == "publish":
            path, body, per = "/api/v1/messages", stack.publish_body(topic, make_payload(0)), 1
            conns = cfg.publish_connections
        else:
            item = stack.publish_body(topic, make_payload(0))
            path, per = "/api/v1/messages/batch", cfg.batch_size
            body = b'{"messages":[' + b",".join([item] * per) + b"]}"
            conns = cfg.batch_connections
        wrk = await _wrk_run("relay", stack, args.scenario, path, body, per, conns, args.seconds)
        return f"{wrk.msgs_per_s:.0f} msgs/s, p99 {wrk.p99_ms:.1f} ms"
    pool = WorkerPool(cfg.workers)
    await pool.start()
    try:
        topic = f"bench.profile.{args.scenario}"
        group = "profile"
        clients = {
            "fanout": cfg.fanout_subscribers,
            "sse": cfg.sse_subscribers,
            "longpoll": cfg.longpoll_loops,
        }[args.scenario]
        shares = split(clients, pool.size)
        if args.scenario == "fanout":
            url = f"ws://{HOST}:{stack.subscribe_port}/api/v1/ws"
            await pool.each(
                [
                    {
                        "op": "ws",
                        "group": group,
                        "kind": "relay",
                        "url": url,
                        "topic": topic,
                        "n": n,
                        "sources": SOURCES,
                        "concurrency": 50,
                    }
                    for n in shares
                ],
                limit_s=90,
            )
        elif args.scenario == "sse":
            await pool.each(
                [
                    {
                        "op": "sse",
                        "group": group,
                        "host": HOST,
                        "port": stack.subscribe_port,
                        "path": f"/api/v1/sse?topic={topic}",
                        "n": n,
                        "sources": SOURCES,
                        "concurrency": 50,
                    }
                    for n in shares
                ],
                limit_s=90,
            )
        else:
            await pool.each(
                [
                    {
                        "op": "lp",
                        "group": group,
                        "kind": "relay",
                        "host": HOST,
                        "port": stack.subscribe_port,
                        "topic": topic,
                        "n": n,
                        "sources": SOURCES,
                        "max_seconds": args.seconds + 30,
                    }
                    for n in shares
                ],
            )
            await asyncio.sleep(1.0)
        run = await publish_at_rate(stack, topic, args.rate, args.seconds)
        await asyncio.sleep(1.0)
        received, _, _ = await pool.collect(group)
        return f"published {run.ok} at {run.achieved_rate:.0f}/s; {received} deliveries"
    finally:
        await pool.stop()


async def _main(args: argparse.Namespace) -> int:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    stack = RelayStack("relay")
    stack.start()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, Path] = {}
    recorders = []
    try:
        for name in ("ingest", "gateway"):
            out = RESULTS / f"profile-{args.scenario}-{name}-{stamp}.txt"
            outputs[name] = out
            recorders.append(
                await asyncio.create_subprocess_exec(
                    spy,
                    "record",
                    "--pid",
                    str(stack.server_pids()[name]),
                    "--nonblocking",
                    "-r",
                    "250",
                    "-d",
                    str(int(args.seconds)),
                    "-f",
                    "raw",
                    "-o",
                    str(out),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
            )
        await asyncio.sleep(0.5)
        outcome = await _drive(stack, args)
        for recorder in recorders:
            await asyncio.wait_for(recorder.wait(), args.seconds + 30)
    finally:
        stack.stop()
    print(f"# profile: {args.scenario} ({outcome})\n")
    for name, out in outputs.items():
        print(f"## {name}\n")
        print(summarize(out.read_text() if out.exists() else ""))
        print(f"(raw collapsed stacks: {out})\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.profile", description=__doc__)
    scenarios = ("publish", "batch", "fanout", "sse", "longpoll")
    parser.add_argument("--scenario", choices=scenarios, default="publish")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=200, help="msgs/s for fanout/sse/longpoll")
    return uvloop.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
