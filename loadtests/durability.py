"""Durability figures: publish rate and p99 under each ``appendfsync``, and what kill -9 loses.

    python -m loadtests.durability [--seconds 8] [--rounds 2] [--modes always,everysec,no]
    (make durability; DURABILITY_ARGS passes options)

For each mode it starts a ``valkey-server`` (AOF on, that ``appendfsync``, data on the local
disk, so fsync is real) and one ``relay-ingest`` process, then measures with ``wrk``:

- single publishes: ``wrk -t2 -c64`` with ``loadtests/ingest/publish.lua``;
- batch publishes: ``wrk -t2 -c16``, 100 messages per request (``publish_batch.lua``);

and the loss: producers publish (singles and batches of 100, about 30 requests in flight) for
2 s, Valkey is SIGKILLed under them, restarted on the same AOF, and every acknowledged (201)
message is looked up in the stream. A process kill is what this measures; a machine crash
(power loss) can lose more with ``everysec`` (up to about 1 s) and ``no`` (what the kernel had
not written back, up to about 30 s), which no test on this machine can show.

Rounds alternate the modes (always, everysec, no, always, ...) so that other jobs on a shared
machine weigh on each alike; the table gives the median rate and p99 of the rounds, and the
acknowledged and lost messages summed over them. Prints a Markdown table (the README's
"Durability" table) and writes it to ``--out`` if given.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec

from relay_devtools.testing import ValkeyProcess, free_port
from relaycore.ids import StreamId
from relaycore.streams import read_after
from relaycore.valkey import ValkeyDsn, create_client

HERE = Path(__file__).resolve().parent
SINGLE_LUA = HERE / "ingest" / "publish.lua"
BATCH_LUA = HERE / "ingest" / "publish_batch.lua"
HOST = "127.0.0.1"


@dataclass
class Row:
    mode: str
    single_rate: float = 0.0
    single_p99: float = 0.0
    batch_rate: float = 0.0
    batch_p99: float = 0.0
    acked: int = 0
    lost: int = 0
    written_unacked: int = 0
    errors: list[str] = field(default_factory=list)


def start_ingest(valkey: ValkeyProcess, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        RELAY_VALKEY_URL=valkey.url,
        RELAY_INGEST_HOST=HOST,
        RELAY_INGEST_PORT=str(port),
        RELAY_ACCESS_LOG="false",
        RELAY_LOG_LEVEL="warning",
        RELAY_LOG_FORMAT="json",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "relay_ingest"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ingest exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"http://{HOST}:{port}/ready", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("ingest did not become ready")


def run_wrk(
    script: Path, port: int, connections: int, seconds: float, env: dict[str, str]
) -> tuple[float, float, int]:
    """msgs/s, p99 ms and answers other than 201 from one wrk run."""
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds:.0f}s", "-s", str(script),
         f"http://{HOST}:{port}"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout  # fmt: skip
    rate = re.search(r"msgs/s: (\d+)", output)
    p99 = re.search(r"p99 ([\d.]+) ms", output)
    bad = re.search(r"answers other than 201: (\d+)", output)
    if rate is None or p99 is None or bad is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    return float(rate.group(1)), float(p99.group(1)), int(bad.group(1))


async def measure_loss(valkey: ValkeyProcess, port: int, row: Row) -> None:
    """Publish, SIGKILL Valkey under the load, restart it, look every 201 up in the stream."""
    topic = f"durability-{row.mode}"
    acked: dict[int, str] = {}
    numbers = iter(range(10**9))
    stop = asyncio.Event()

    async def singles(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            n = next(numbers)
            try:
                r = await http.post("/api/v1/messages", json={"topic": topic, "payload": {"n": n}})
            except httpx.TransportError:
                continue
            if r.status_code == 201:
                acked[n] = r.json()["id"]

    async def batches(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            group = [next(numbers) for _ in range(100)]
            body = {"messages": [{"topic": topic, "payload": {"n": n}} for n in group]}
            try:
                r = await http.post("/api/v1/messages/batch", json=body)
            except httpx.TransportError:
                continue
            if r.status_code == 201:
                acked.update(zip(group, (x["id"] for x in r.json()["results"]), strict=True))

    limits = httpx.Limits(max_connections=64)
    async with (
        httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=10, limits=limits) as http,
        asyncio.TaskGroup() as tasks,
    ):
        for _ in range(24):
            tasks.create_task(singles(http))
        for _ in range(6):
            tasks.create_task(batches(http))
        await asyncio.sleep(2.0)
        valkey.stop()  # SIGKILL while ~30 requests are in flight
        stop.set()
    valkey.start()  # same port and AOF directory
    client = await create_client(ValkeyDsn.from_dsn(valkey.url), name="durability", lazy=False)
    try:
        entries = await read_after(client, topic, StreamId(0, 0), 10_000_000)
    finally:
        await client.close()
    stored = {msgspec.json.decode(e.payload)["n"]: str(e.id) for e in entries}
    row.acked = len(acked)
    row.lost = sum(1 for n, message_id in acked.items() if stored.get(n) != message_id)
    row.written_unacked = len(set(stored) - set(acked))


def measure(mode: str, seconds: float) -> Row:
    row = Row(mode)
    with tempfile.TemporaryDirectory(prefix=f"durability-{mode}-", dir="/var/tmp") as data:
        valkey = ValkeyProcess(
            data_dir=Path(data), extra_args=["--appendfsync", mode, "--loglevel", "warning"]
        )
        valkey.start()
        port = free_port()
        ingest = start_ingest(valkey, port, Path(data) / "ingest.log")
        try:
            prefix = {"TOPIC_PREFIX": f"dur-{mode}"}
            row.single_rate, row.single_p99, bad = run_wrk(SINGLE_LUA, port, 64, seconds, prefix)
            if bad:
                row.errors.append(f"single: {bad} answers other than 201")
            batch_env = {**prefix, "BATCH_SIZE": "100"}
            row.batch_rate, row.batch_p99, bad = run_wrk(BATCH_LUA, port, 16, seconds, batch_env)
            if bad:
                row.errors.append(f"batch: {bad} answers other than 201")
            # Any outage ingest saw during the rate runs (timeouts on a loaded machine) is
            # reported: those 503s are part of the figures.
            for line in (Path(data) / "ingest.log").read_text(errors="replace").splitlines():
                if "valkey_unavailable" in line or "valkey_unreachable" in line:
                    row.errors.append(f"ingest log: {line[:300]}")
            asyncio.run(measure_loss(valkey, port, row))
        finally:
            ingest.terminate()
            try:
                ingest.wait(timeout=10)
            except subprocess.TimeoutExpired:
                ingest.kill()
            valkey.stop()
    return row


def combine(rounds: list[Row]) -> Row:
    """Median rates and p99s of the rounds of one mode; acknowledged and lost summed."""
    row = Row(rounds[0].mode)
    row.single_rate = statistics.median(r.single_rate for r in rounds)
    row.single_p99 = statistics.median(r.single_p99 for r in rounds)
    row.batch_rate = statistics.median(r.batch_rate for r in rounds)
    row.batch_p99 = statistics.median(r.batch_p99 for r in rounds)
    row.acked = sum(r.acked for r in rounds)
    row.lost = sum(r.lost for r in rounds)
    row.written_unacked = sum(r.written_unacked for r in rounds)
    row.errors = [e for r in rounds for e in r.errors]
    return row


def table(rows: list[Row]) -> str:
    lines = [
        "| `appendfsync` | single msgs/s | single p99 | batch msgs/s | batch p99 (100 msgs) "
        "| acknowledged before kill -9 | acknowledged lost |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r.mode}` | {r.single_rate:,.0f} | {r.single_p99:.1f} ms | {r.batch_rate:,.0f} "
            f"| {r.batch_p99:.1f} ms | {r.acked:,} | {r.lost} |"
        )
    by_mode = {r.mode: r for r in rows}
    if "always" in by_mode and "everysec" in by_mode and by_mode["everysec"].batch_rate:
        ratio = by_mode["always"].batch_rate / by_mode["everysec"].batch_rate
        lines.append("")
        lines.append(f"`always` keeps {ratio:.0%} of `everysec`'s batch publish rate.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per mode (alternated)")
    parser.add_argument("--modes", default="always,everysec,no")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    started = time.time()
    load_before = os.getloadavg()
    modes = args.modes.split(",")
    rounds: dict[str, list[Row]] = {mode: [] for mode in modes}
    for number in range(args.rounds):
        for mode in modes:
            print(f"durability: round {number + 1}, appendfsync {mode} ...", flush=True)
            row = measure(mode, args.seconds)
            print(f"  {table([row]).splitlines()[-1]}", flush=True)
            rounds[mode].append(row)
    rows = [combine(rounds[mode]) for mode in modes]
    text = table(rows)
    if "always" in rounds and "everysec" in rounds:
        # Each round's modes ran minutes apart under similar load: the per-round ratio is the
        # steadier figure on a shared machine.
        ratios = [
            a.batch_rate / e.batch_rate
            for a, e in zip(rounds["always"], rounds["everysec"], strict=True)
            if e.batch_rate
        ]
        text += (
            " Per round: "
            + ", ".join(f"{r:.0%}" for r in ratios)
            + f" (median {statistics.median(ratios):.0%})."
        )
    header = (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, {os.cpu_count()} cores, "
        f"{args.rounds} round(s) of {args.seconds:.0f} s wrk runs per mode, "
        f"load average {load_before[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end "
        f"(shared machine: other jobs ran meanwhile)"
    )
    for row in rows:
        if row.errors or row.written_unacked:
            print(f"{row.mode}: {row.written_unacked} written but not acknowledged; {row.errors}")
    print(header)
    print(text)
    if args.out is not None:
        args.out.write_text(header + "\n\n" + text + "\n")


if __name__ == "__main__":
    main()
