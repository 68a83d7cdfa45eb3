"""The two services as real processes, started the way users start them (``python -m``).

:class:`ServiceProcess` runs ``relay-ingest`` or ``relay-gateway`` (``python -m relay_ingest`` /
``python -m relay_gateway``, the console scripts' entry points) on a free port with the given
``RELAY_*`` variables, waits until ``/health`` answers (over HTTPS when TLS is configured) and
stops the process by its pid. Used by the hostile-input and TLS tests.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from relay_devtools.testing.servers import free_port

__all__ = ["ServiceProcess"]

_MODULES = {"ingest": "relay_ingest", "gateway": "relay_gateway"}


class ServiceProcess:
    """``relay-<service>`` on 127.0.0.1 and a free port, its output kept in a temp file."""

    def __init__(self, service: str, *, ca_file: Path | None = None, **relay: str) -> None:
        if service not in _MODULES:
            raise ValueError(f"unknown service {service!r}")
        self.service = service
        self.port = free_port()
        self.ca_file = ca_file
        self.tls = "TLS_CERT_FILE" in relay
        prefix = service.upper()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        self.env.update(
            {
                f"RELAY_{prefix}_HOST": "127.0.0.1",
                f"RELAY_{prefix}_PORT": str(self.port),
                "RELAY_LOG_LEVEL": "warning",
            }
        )
        self.env.update({f"RELAY_{name}": value for name, value in relay.items()})
        # Closed in __exit__: the log outlives start() so a failing test can show it.
        self._log = tempfile.NamedTemporaryFile(prefix=f"relay-{service}-", suffix=".log")  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        scheme = "wss" if self.tls else "ws"
        return f"{scheme}://127.0.0.1:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting ``ca_file`` (the system store when there is none)."""
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)

    def client(self, timeout: float = 10.0) -> httpx.Client:
        verify: ssl.SSLContext | bool = self.ssl_context() if self.tls else True
        return httpx.Client(base_url=self.url, timeout=timeout, verify=verify)

    def output(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def start(self, timeout: float = 30.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", _MODULES[self.service]],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        with self.client(timeout=1.0) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"relay-{self.service} exited: {self.output()[-3000:]}")
                try:
                    if http.get("/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"relay-{self.service} did not answer /health in {timeout}s")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s; only this process, by its pid."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._log.close()
