"""Real servers for tests: a ``valkey-server`` process and an in-loop uvicorn server."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

from relay_devtools.embedded import server_binary

__all__ = ["UvicornServer", "ValkeyProcess", "free_port"]


# Below Linux's ephemeral range (32768-60999 by default): a port handed out here is never also
# picked as the local port of some outgoing connection between our check and the server's bind,
# which is what made "port 0" choices flaky under many concurrent client connections.
_PORT_RANGE = (20000, 32000)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on or is bound to, on ``host`` and on the wildcard address."""
    while True:
        port = random.randrange(*_PORT_RANGE)
        if all(_bindable(address, port) for address in (host, "0.0.0.0")):
            return port


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class ValkeyProcess:
    """A real ``valkey-server`` on a free port in a temp dir, stoppable and restartable.

    ``restart()`` keeps the port and the data dir, so an outage test can kill the server and
    bring the same one back (with its AOF) while clients keep their address.
    """

    def __init__(
        self,
        *,
        config_file: Path | None = None,
        extra_args: Sequence[str] = (),
        data_dir: Path | None = None,
        port: int | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="relay-valkey-")
        self.data_dir = data_dir or Path(self._tmp.name)  # type: ignore[union-attr]  # set just above when data_dir is None
        self.config_file = config_file
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"valkey://{self.host}:{self.port}"

    def url_for(self, username: str, password: str) -> str:
        return f"valkey://{username}:{password}@{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        command = [str(server_binary())]
        if self.config_file is not None:
            command.append(str(self.config_file))
        command += [
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "valkey.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stderr = self.process.stderr.read().decode() if self.process.stderr else ""
                log = (self.data_dir / "valkey.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"valkey-server exited: {stderr}{log}")
            if self._answers_ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"valkey-server did not answer on port {self.port} in {timeout}s")

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        # +PONG, or NOAUTH when the config demands a user: either way the server is up.
        return reply.startswith((b"+PONG", b"-NOAUTH", b"-ERR"))

    def stop(self) -> None:
        """Kill the server at once (SIGKILL): an outage, not a graceful shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> ValkeyProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class UvicornServer:
    """Serve an ASGI app with a real uvicorn server on a free port, inside the running loop."""

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", **config: object) -> None:
        self.host = host
        self.port = free_port(host)
        self.config = uvicorn.Config(
            app,
            host=host,
            port=self.port,
            log_level="warning",
            lifespan="on",
            **config,  # type: ignore[arg-type]  # passthrough of uvicorn.Config keywords
        )
        self.server = uvicorn.Server(self.config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[UvicornServer]:
        self._task = asyncio.create_task(self.server.serve())
        try:
            while not self.server.started:
                if self._task.done():
                    self._task.result()
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.01)
            yield self
        finally:
            self.server.should_exit = True
            await self._task
