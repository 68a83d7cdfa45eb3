"""``make loadtest``: start a relay stack on free ports, run locust headless against it, stop it.

``python -m loadtests.bench.loadtest [--users N] [--spawn-rate N] [--time 30s]`` prints
locust's summary (requests, failures, latency percentiles, and the ``E2E`` rows: end-to-end
delivery latency per transport). Extra arguments after ``--`` go to locust unchanged.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from .stacks import HOST, RelayStack

LOCUSTFILE = Path(__file__).resolve().parents[1] / "locustfile.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.loadtest", description=__doc__)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--spawn-rate", type=int, default=20)
    parser.add_argument("--time", default="30s", help="run time (locust syntax: 30s, 2m)")
    parser.add_argument("locust_args", nargs="*", help="passed to locust after --")
    args = parser.parse_args(argv)

    stack = RelayStack("relay")
    stack.start()
    print(
        f"loadtest: relay up — ingest http://{HOST}:{stack.publish_port}, "
        f"gateway http://{HOST}:{stack.subscribe_port}; {args.users} users for {args.time}",
        flush=True,
    )
    env = {
        **os.environ,
        "LOADTEST_INGEST_URL": f"http://{HOST}:{stack.publish_port}",
        "LOADTEST_GATEWAY_URL": f"http://{HOST}:{stack.subscribe_port}",
    }
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate),
        "--run-time",
        args.time,
        "--stop-timeout",
        "5",
        *args.locust_args,
    ]
    try:
        done = subprocess.run(command, env=env, check=False, timeout=3600)
    finally:
        stack.stop()
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
