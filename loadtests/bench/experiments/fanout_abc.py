"""Fan-out stepping for three sides in alternation: relay, the lean prototype, nchan.

``python -m loadtests.bench.experiments.fanout_abc`` — the same 1,000-subscriber stepping as
``make bench``'s fanout scenario, with :mod:`loadtests.bench.experiments.lean_gateway` (fed by
its own relay ingest + Valkey) as a third side, so the three are measured under the same
neighbour load. Prints each side's highest sustained step.
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import uvloop

from loadtests.bench.pool import WorkerPool
from loadtests.bench.scenarios import Budget, Config, run_stepped
from loadtests.bench.stacks import HOST, NchanStack, RelayStack, Stack, _stop, _wait_http
from relaycore.testing import free_port


@dataclass
class LeanStack(RelayStack):
    """valkey + relay-ingest + the lean prototype in place of relay-gateway."""

    def start(self) -> None:
        self.valkey.start()
        self.publish_port = free_port()
        self.subscribe_port = free_port()
        self.ingest = self._spawn("relay_ingest")
        self.gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loadtests.bench.experiments.lean_gateway",
                "--valkey",
                self.valkey.url,
                "--port",
                str(self.subscribe_port),
            ],
            stdin=subprocess.DEVNULL,
        )
        _wait_http(self.publish_port, "/ready", 30, self.ingest)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, self.subscribe_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("lean gateway did not listen")

    def stop(self) -> None:
        _stop(self.gateway)
        super().stop()


async def _main() -> int:
    stacks: dict[str, Stack] = {
        "relay": RelayStack("relay"),
        "lean": LeanStack("lean"),
        "nchan": NchanStack("nchan"),
    }
    started: list[Stack] = []
    pool = WorkerPool(Config().workers)
    try:
        for stack in stacks.values():
            stack.start()
            started.append(stack)
        await pool.start()
        cfg = dataclasses.replace(Config(), half_rounds=0)
        result = await run_stepped("fanout", stacks, pool, cfg, Budget(540))
        for side in stacks:
            best = result.best(side)
            if best is None:
                print(f"{side}: nothing sustained")
            else:
                print(
                    f"{side}: {best.deliveries_per_s:,.0f} deliveries/s at {best.rate}/s, "
                    f"p50 {best.latency.p50_ms:.1f} ms, p99 {best.latency.p99_ms:.1f} ms"
                )
    finally:
        await pool.stop()
        for stack in started:
            stack.stop()
    return 0


def main() -> int:
    return uvloop.run(_main())


if __name__ == "__main__":
    sys.exit(main())
