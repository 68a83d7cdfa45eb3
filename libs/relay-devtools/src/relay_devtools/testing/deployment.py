"""Several real ``relay-ingest`` and ``relay-gateway`` processes against one Valkey.

What a production node (or a small deployment) runs: ``ingests`` ingest processes and
``gateways`` gateway processes, each on its own free port with ``RELAY_WORKERS=workers``, all
sharing the Valkey at ``valkey_url`` (``cluster=True``: a Valkey Cluster, any node's URL).
Tests and ``python -m loadtests.bench.scaling`` use it; the services run as
``python -m relay_ingest`` / ``python -m relay_gateway`` exactly as deployed, never imported.
Every process is stopped by its pid (SIGTERM, then SIGKILL to it and its workers after
``stop_timeout``), and its output goes to a log file in a temp dir, whose tail is shown when a
process fails to become ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from relay_devtools.testing.servers import free_port

__all__ = ["DeployedProcess", "Deployment", "descendants", "kill_tree"]

HOST = "127.0.0.1"


@dataclass
class DeployedProcess:
    """One started service process: ``relay_ingest`` or ``relay_gateway`` on ``port``."""

    module: str
    port: int
    log: Path
    process: asyncio.subprocess.Process

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, size: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-size:]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (e.g. the workers of a ``RELAY_WORKERS`` > 1 supervisor),
    from /proc; empty once it is gone."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def _answers_ready(port: int) -> bool:
    request = f"GET /ready HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(request)
            return sock.recv(16).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and everything below it, children first: killing a supervisor alone
    would leave its workers running, orphaned."""
    for process in [*reversed(descendants(pid)), pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process, signal.SIGKILL)


@dataclass
class Deployment:
    """``ingests`` + ``gateways`` service processes on one Valkey (an async context manager)."""

    valkey_url: str
    cluster: bool = False
    ingests: int = 2
    gateways: int = 2
    workers: int = 1
    # More RELAY_* settings for every process, without the prefix: {"SHUTDOWN_DRAIN": "1s"}.
    settings: Mapping[str, str] = field(default_factory=dict)
    ready_timeout: float = 60.0
    stop_timeout: float = 30.0
    ingest: list[DeployedProcess] = field(default_factory=list)
    gateway: list[DeployedProcess] = field(default_factory=list)
    _logs: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="relay-deploy-")))

    @property
    def processes(self) -> list[DeployedProcess]:
        return [*self.ingest, *self.gateway]

    def _env(self, port_variable: str, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update(
            RELAY_VALKEY_URL=self.valkey_url,
            RELAY_VALKEY_CLUSTER="true" if self.cluster else "false",
            RELAY_INGEST_HOST=HOST,
            RELAY_GATEWAY_HOST=HOST,
            RELAY_WORKERS=str(self.workers),
            RELAY_LOG_FORMAT="json",
            RELAY_LOG_LEVEL="warning",
            RELAY_ACCESS_LOG="false",
            **{f"RELAY_{name}": value for name, value in self.settings.items()},
        )
        env[port_variable] = str(port)
        return env

    async def _spawn(self, module: str, port_variable: str, index: int) -> DeployedProcess:
        port = free_port()
        log = self._logs / f"{module}-{index}.log"
        with log.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                module,
                env=self._env(port_variable, port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
            )
        return DeployedProcess(module, port, log, process)

    async def start(self) -> None:
        try:
            for index in range(self.ingests):
                self.ingest.append(await self._spawn("relay_ingest", "RELAY_INGEST_PORT", index))
            for index in range(self.gateways):
                self.gateway.append(await self._spawn("relay_gateway", "RELAY_GATEWAY_PORT", index))
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        waiting = list(self.processes)
        while waiting:
            for service in list(waiting):
                if service.process.returncode is not None:
                    raise RuntimeError(
                        f"{service.module} on port {service.port} exited with "
                        f"{service.process.returncode}:\n{service.log_tail()}"
                    )
                if await asyncio.to_thread(_answers_ready, service.port):
                    waiting.remove(service)
            if waiting and time.monotonic() > deadline:
                tails = "\n".join(f"{s.module}:{s.port}: {s.log_tail(800)}" for s in waiting)
                raise RuntimeError(f"not ready in {self.ready_timeout}s:\n{tails}")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """SIGTERM every process (gateways first: they drain), then wait; SIGKILL stragglers."""
        for service in [*self.gateway, *self.ingest]:
            if service.process.returncode is None:
                service.process.send_signal(signal.SIGTERM)
        for service in self.processes:
            try:
                await asyncio.wait_for(service.process.wait(), self.stop_timeout)
            except TimeoutError:
                kill_tree(service.pid)
                await service.process.wait()
        self.ingest.clear()
        self.gateway.clear()
        shutil.rmtree(self._logs, ignore_errors=True)

    async def __aenter__(self) -> Deployment:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
