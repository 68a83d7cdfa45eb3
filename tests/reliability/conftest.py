"""Fault tests: every test starts its own processes (valkey-server, relay-ingest, relay-gateway)
and kills them with SIGKILL, as a crash would, while real clients publish and consume."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relay_devtools.testing import free_port


class Service:
    """``python -m relay_ingest`` / ``relay_gateway`` as a child process on a free port."""

    def __init__(self, module: str, valkey_url: str, **relay: str) -> None:
        self.module = module
        self.port = free_port()
        kind = "INGEST" if module == "relay_ingest" else "GATEWAY"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        self.env.update(
            RELAY_VALKEY_URL=valkey_url,
            **{f"RELAY_{kind}_HOST": "127.0.0.1", f"RELAY_{kind}_PORT": str(self.port)},
            RELAY_LOG_FORMAT="json",
            RELAY_ACCESS_LOG="false",
            RELAY_SHUTDOWN_GRACE="3s",
            RELAY_SHUTDOWN_DRAIN="1s",
        )
        self.env.update({f"RELAY_{name}": value for name, value in relay.items()})
        handle, name = tempfile.mkstemp(prefix=f"{module}-", suffix=".log")
        self._log_path = Path(name)
        self._log = os.fdopen(handle, "wb")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> Service:
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.module} exited: {self.log_tail()}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.module} not ready in {timeout}s: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: a crash, no drain."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log_tail(self) -> str:
        self._log.flush()
        return self._log_path.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        self.stop()
        self._log.close()
        self._log_path.unlink(missing_ok=True)


@pytest.fixture
def services() -> Iterator[list[Service]]:
    """Services a test starts; stopped (and their logs removed) at the end."""
    started: list[Service] = []
    try:
        yield started
    finally:
        for service in started:
            service.close()
