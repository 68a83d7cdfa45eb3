"""Real ``relay-ingest`` / ``relay-gateway`` processes for end-to-end tests of clients.

A :class:`ServiceProcess` runs ``python -m relay_ingest`` or ``python -m relay_gateway`` on a
fixed free port with the given ``RELAY_*`` settings, waits for ``/ready``, and can be
SIGTERMed (the real drain: WebSockets closed 1012, long-polls answered) and started again on the
same port, which is how client tests exercise reconnect-and-resume across a gateway restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType

from relay_devtools.testing.servers import free_port

__all__ = ["ServiceProcess"]

_MODULES = {"ingest": "relay_ingest", "gateway": "relay_gateway"}


class ServiceProcess:
    """One relay service as its own OS process: ``async with ServiceProcess("gateway", url)``."""

    def __init__(self, service: str, valkey_url: str, **settings: str) -> None:
        if service not in _MODULES:
            raise ValueError(f"service must be ingest or gateway, not {service!r}")
        self.service = service
        self.port = free_port()
        prefix = "RELAY_INGEST" if service == "ingest" else "RELAY_GATEWAY"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        self.env.update(
            {
                "RELAY_VALKEY_URL": valkey_url,
                f"{prefix}_HOST": "127.0.0.1",
                f"{prefix}_PORT": str(self.port),
                "RELAY_LOG_LEVEL": "warning",
                "RELAY_SHUTDOWN_DRAIN": "1s",
                "RELAY_SHUTDOWN_GRACE": "5s",
                "RELAY_TOPIC_LINGER": "1s",
                **settings,
            }
        )
        self.process: asyncio.subprocess.Process | None = None
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115  # lives as long as self
            prefix=f"relay-{service}-", suffix=".log", delete=False
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return Path(self._log.name)

    async def start(self, ready_within: float = 60.0) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            _MODULES[self.service],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        await self.wait_ready(ready_within)

    async def wait_ready(self, within: float = 60.0) -> None:
        async with asyncio.timeout(within):
            while True:
                if self.process is None or self.process.returncode is not None:
                    raise RuntimeError(
                        f"{self.service} exited: {self.log_path.read_text()[-2000:]}"
                    )
                if await self._ready():
                    return
                await asyncio.sleep(0.05)

    async def _ready(self) -> bool:
        # A plain HTTP/1.0 request: relaycore carries no HTTP client dependency.
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"GET /ready HTTP/1.0\r\nHost: relay\r\n\r\n")
            status = await asyncio.wait_for(reader.readline(), 2.0)
            return status.startswith(b"HTTP/1.") and b" 200 " in status
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()

    async def terminate(self, within: float = 15.0) -> int | None:
        """SIGTERM and wait for the exit (the gateway drains first); its exit code."""
        if self.process is None or self.process.returncode is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            self.process.kill()
            return await self.process.wait()

    async def restart(self) -> None:
        await self.terminate()
        await self.start()

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._log.close()
        self.log_path.unlink(missing_ok=True)

    async def __aenter__(self) -> ServiceProcess:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
