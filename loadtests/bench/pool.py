"""The harness's side of the load-generator processes (:mod:`loadtests.bench.worker`)."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .procstat import cpu_seconds

__all__ = ["WorkerPool", "split"]

REPO = Path(__file__).resolve().parents[2]


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as possible (first parts get the remainder)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lock = asyncio.Lock()

    async def call(self, cmd: dict[str, Any], limit_s: float) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        async with self.lock:
            self.process.stdin.write(json.dumps(cmd).encode() + b"\n")
            await self.process.stdin.drain()
            async with asyncio.timeout(limit_s):
                line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"bench worker {self.process.pid} exited")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"bench worker {self.process.pid}: {answer['error']}")
        return answer


class WorkerPool:
    """``size`` worker processes; a command goes to all at once, answers come back as a list."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.workers: list[_Worker] = []

    async def start(self) -> None:
        for _ in range(self.size):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "loadtests.bench.worker",
                cwd=REPO,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=2**27,
            )
            self.workers.append(_Worker(process))

    async def stop(self) -> None:
        for worker in self.workers:
            stdin = worker.process.stdin
            if stdin is not None and not stdin.is_closing():
                stdin.write(b'{"op":"exit"}\n')
                stdin.close()
        for worker in self.workers:
            try:
                await asyncio.wait_for(worker.process.wait(), 15)
            except TimeoutError:
                worker.process.kill()
                await worker.process.wait()
        self.workers.clear()

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers]

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    async def each(
        self, commands: Sequence[dict[str, Any]], limit_s: float = 60.0
    ) -> list[dict[str, Any]]:
        """Send ``commands[i]`` to worker ``i`` (all concurrently)."""
        calls = [w.call(c, limit_s) for w, c in zip(self.workers, commands, strict=False)]
        return list(await asyncio.gather(*calls))

    async def all(self, cmd: dict[str, Any], limit_s: float = 60.0) -> list[dict[str, Any]]:
        return await self.each([cmd] * len(self.workers), limit_s)

    async def received(self, group: str) -> int:
        return sum(a["received"] for a in await self.all({"op": "count", "group": group}))

    async def collect(self, group: str) -> tuple[int, array[int], list[str]]:
        """Received count, all latency samples (µs) and the first errors, then reset."""
        latencies: array[int] = array("q")
        received = 0
        errors: list[str] = []
        for answer in await self.all({"op": "collect", "group": group}):
            received += answer["received"]
            latencies.frombytes(base64.b64decode(answer["lat"]))
            errors += answer["errors"]
        return received, latencies, errors
