"""How ``relay-gateway`` is served: uvicorn's options, one server, or several worker processes.

With ``RELAY_WORKERS`` > 1, uvicorn's supervisor (``uvicorn.supervisors.Multiprocess``) binds
the socket, starts the workers and, on SIGTERM, sends SIGTERM to every worker at once. A worker
running uvicorn's plain ``Server`` would then close all its WebSockets with 1012 in the same
instant. Here every worker runs :class:`~relay_gateway.shutdown.GatewayServer` with its own
:class:`~relay_gateway.shutdown.Drain`, exactly like a single-process gateway: each spreads its
own closes over ``RELAY_SHUTDOWN_DRAIN``, the workers drain in parallel over the same window,
and the whole gateway exits before ``RELAY_SHUTDOWN_GRACE``.

This is the one module that reaches into uvicorn's supervisor internals (tested range: uvicorn
0.54.x, pinned by ``uv.lock``; ``tests/test_serving.py`` fails loudly when they change):

- ``Process.target`` is what runs in the spawned child; it starts a health-check thread and
  then runs ``Process.server``. :class:`GatewayWorker` builds its server *before* that, so the
  thread never builds a second, plain one (``Process.server`` builds lazily).
- ``Multiprocess`` creates its ``Process`` objects by name in four methods
  (:data:`SPAWNING_METHODS`); :class:`GatewaySupervisor` overrides exactly those with the same
  steps, creating :class:`GatewayWorker` instead.
"""

from __future__ import annotations

import os
import socket

import uvicorn
from starlette.applications import Starlette
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process, logger

from relay_gateway import redact
from relay_gateway.app import create_app
from relay_gateway.httpwrites import RelayHttpProtocol
from relay_gateway.shutdown import Drain, GatewayServer
from relay_gateway.wsframes import RelayWebSocketProtocol
from relaycore.logging import configure_service_logging, uvicorn_log_config
from relaycore.runtime import tune_gc
from relaycore.settings import Settings

__all__ = [
    "SPAWNING_METHODS",
    "GatewaySupervisor",
    "GatewayWorker",
    "gateway_app",
    "gateway_server",
    "serve",
    "uvicorn_options",
]

SPAWNING_METHODS = ("init_processes", "keep_subprocess_alive", "restart_all", "handle_ttin")
"""The ``Multiprocess`` methods that create worker processes (see the module docstring)."""


def uvicorn_options(settings: Settings) -> dict[str, object]:
    return {
        "host": settings.gateway_host,
        "port": settings.gateway_port,
        "loop": "uvloop",
        # httptools, one write per response (relay_gateway.httpwrites).
        "http": RelayHttpProtocol,
        # uvicorn's sans-I/O implementation plus the raw frame path (relay_gateway.wsframes).
        "ws": RelayWebSocketProtocol,
        "ws_per_message_deflate": False,
        "ws_max_size": settings.max_ws_frame_bytes,
        "ws_ping_interval": settings.ws_ping_interval,
        "ws_ping_timeout": settings.ws_ping_interval,
        "log_config": uvicorn_log_config(),
        "log_level": settings.log_level,
        # Access lines are logged at INFO: above that uvicorn would still format each one's
        # client address and path per request only to drop it.
        "access_log": settings.access_log and settings.log_level in ("debug", "info"),
        "lifespan": "on",
        "proxy_headers": True,
        # Like ingest: no server banner in responses.
        "server_header": False,
    }


def _configure_process(settings: Settings) -> None:
    configure_service_logging(
        settings.log_level, settings.log_format, access_log=settings.access_log
    )
    redact.install()


def gateway_server(settings: Settings) -> GatewayServer:
    """One gateway process's server: the app and the server share the process's drain."""
    drain = Drain(settings)
    app = create_app(settings, drain=drain)
    tune_gc()
    options = uvicorn_options(settings)
    config = uvicorn.Config(app, workers=settings.workers, **options)  # type: ignore[arg-type]  # uvicorn.Config keywords
    return GatewayServer(config, drain, settings.shutdown_grace)


def gateway_app() -> Starlette:
    """The gateway app from ``RELAY_*``, for other ASGI servers
    (``uvicorn --factory relay_gateway.serving:gateway_app``); such a server's own shutdown
    closes WebSockets at once, ``relay-gateway`` spreads them (module docstring)."""
    settings = Settings.from_env(os.environ)
    _configure_process(settings)
    return create_app(settings)


class GatewayWorker(Process):
    """A uvicorn worker process whose server is the gateway's :class:`GatewayServer`."""

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover
        # In the child. The settings were checked by the supervisor; the environment is the
        # same (spawned children inherit it).
        settings = Settings.from_env(os.environ)
        _configure_process(settings)
        self._server = gateway_server(settings)
        super().target(sockets)


class GatewaySupervisor(Multiprocess):
    """uvicorn's supervisor, with :class:`GatewayWorker` processes.

    Each override repeats uvicorn 0.54's method step for step, with ``GatewayWorker`` where
    uvicorn writes ``Process``.
    """

    def _worker(self) -> GatewayWorker:
        return GatewayWorker(self.config, self.sockets)

    def init_processes(self) -> None:
        for _ in range(self.processes_num):
            process = self._worker()
            process.start()
            self.processes.append(process)

    def restart_all(self) -> None:
        for idx, old_process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new_process = self._worker()
            new_process.start()
            ready = new_process.wait_until_ready(
                self.config.timeout_worker_healthcheck, self.should_exit
            )
            if not ready:
                new_process.kill()
                new_process.join()
                if not self.should_exit.is_set():
                    logger.error(
                        f"New child process [{new_process.pid}] was not ready in time; "
                        f"keeping worker [{old_process.pid}] and aborting the restart."
                    )
                return
            old_process.terminate()
            old_process.join()
            self.processes[idx] = new_process

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                logger.error(
                    f"Child process [{process.pid}] failed to start, stopping the parent process."
                )
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logger.info(f"Child process [{process.pid}] died")
            replacement = self._worker()
            replacement.start()
            self.processes[idx] = replacement

    def handle_ttin(self) -> None:
        logger.info("Received SIGTTIN, increasing the number of processes.")
        self.processes_num += 1
        process = self._worker()
        process.start()
        self.processes.append(process)


def serve(settings: Settings) -> None:
    """Run the gateway: one process, or ``RELAY_WORKERS`` worker processes under a supervisor."""
    _configure_process(settings)
    if settings.workers == 1:
        gateway_server(settings).run()
        return
    # The supervisor binds the socket and spawns the workers; it never loads the app (each
    # worker builds its own server), but uvicorn's Config names one.
    config = uvicorn.Config(
        "relay_gateway.serving:gateway_app",
        factory=True,
        workers=settings.workers,
        **uvicorn_options(settings),  # type: ignore[arg-type]  # uvicorn.Config keywords
    )
    sock = config.bind_socket()
    try:
        GatewaySupervisor(config, sockets=[sock]).run()
    finally:
        sock.close()
