"""How ``relay-gateway`` is served: uvicorn's options, one server, or several worker processes.

With ``RELAY_WORKERS`` > 1, uvicorn's supervisor signals every worker at once on SIGTERM; a
worker running uvicorn's plain ``Server`` would then close all its WebSockets with 1012 in the
same instant. Here every worker runs :class:`~relay_gateway.shutdown.GatewayServer` with its
own :class:`~relay_gateway.shutdown.Drain`, exactly like a single-process gateway (through
:class:`relaycore.uvicorn_ext.supervisor.Supervisor`, where the supervisor internals are
fenced): each spreads its own closes over ``RELAY_SHUTDOWN_DRAIN``, the workers drain in
parallel over the same window, and the whole gateway exits before ``RELAY_SHUTDOWN_GRACE``.
"""

from __future__ import annotations

import os

import uvicorn
from starlette.applications import Starlette

from relay_gateway import redact
from relay_gateway.app import create_app
from relay_gateway.shutdown import Drain, GatewayServer
from relaycore import uvicorn_ext
from relaycore.logging import configure_service_logging, uvicorn_log_config
from relaycore.runtime import tune_gc
from relaycore.settings import Settings
from relaycore.uvicorn_ext import server_protocols
from relaycore.uvicorn_ext.supervisor import Supervisor

__all__ = [
    "gateway_app",
    "gateway_server",
    "serve",
    "uvicorn_options",
]


def uvicorn_options(settings: Settings) -> dict[str, object]:
    # One write per response and prepared poll answers (http), uvicorn's sans-I/O WebSocket
    # implementation plus the raw frame path (ws): relaycore.uvicorn_ext, or uvicorn's own
    # protocols when the installed uvicorn lacks an internal they use.
    protocols = server_protocols(websockets=True, prepared_responses=True)
    return {
        "host": settings.gateway_host,
        "port": settings.gateway_port,
        "loop": "uvloop",
        "http": protocols.http,
        "ws": protocols.ws,
        "ws_per_message_deflate": False,
        "ws_max_size": settings.max_ws_frame_bytes,
        "ws_ping_interval": settings.ws_ping_interval,
        "ws_ping_timeout": settings.ws_ping_timeout,
        "log_config": uvicorn_log_config(),
        "log_level": settings.log_level,
        # Access lines are logged at INFO: above that uvicorn would still format each one's
        # client address and path per request only to drop it.
        "access_log": settings.access_log and settings.log_level in ("debug", "info"),
        "lifespan": "on",
        "proxy_headers": True,
        # Like ingest: no server banner in responses.
        "server_header": False,
        # HTTPS/WSS when RELAY_TLS_CERT_FILE/RELAY_TLS_KEY_FILE are set (checked in settings).
        "ssl_certfile": settings.tls_cert_file or None,
        "ssl_keyfile": settings.tls_key_file or None,
    }


def _configure_process(settings: Settings) -> None:
    configure_service_logging(
        settings.log_level, settings.log_format, access_log=settings.access_log
    )
    redact.install()
    # The slowloris guard's deadline, read by every HTTP connection this process accepts.
    uvicorn_ext.configure(header_timeout=settings.http_header_timeout)


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


def _worker_server() -> GatewayServer:
    """What each worker process runs (called in the child; the environment is inherited and
    the supervisor already checked the settings)."""
    settings = Settings.from_env(os.environ)
    _configure_process(settings)
    return gateway_server(settings)


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
        Supervisor(config, [sock], _worker_server).run()
    finally:
        sock.close()
