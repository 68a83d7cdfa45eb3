"""``relay-gateway`` / ``python -m relay_gateway``: run the gateway with uvicorn.

An invalid ``RELAY_*`` value stops the process at start with one line on stderr naming the
variable (exit code 1). uvicorn runs with uvloop and httptools, and the sans-I/O ``websockets``
implementation: no task per connection and no per-connection keepalive task (pings are timers),
which holds many idle connections with the least memory. permessage-deflate stays off (its
per-connection zlib buffers cost ~100s of KiB each), inbound frames are capped at
``RELAY_MAX_WS_FRAME_BYTES`` (larger: close 1009), and uvicorn pings every
``RELAY_WS_PING_INTERVAL`` and drops peers that do not answer within ``RELAY_WS_PING_TIMEOUT``.
"""

from __future__ import annotations

import os
import sys

import uvicorn

from relay_gateway import redact
from relay_gateway.app import create_app
from relay_gateway.shutdown import Drain, GatewayServer
from relaycore.logging import configure_service_logging, uvicorn_log_config
from relaycore.runtime import tune_gc
from relaycore.settings import ConfigError, Settings
from relaycore.uvicorn_ext import server_protocols

__all__ = ["main"]


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
    }


def app_from_env() -> object:
    """Factory for uvicorn's multi-worker mode (``RELAY_WORKERS`` > 1)."""
    settings = Settings.from_env(os.environ)
    configure_service_logging(
        settings.log_level, settings.log_format, access_log=settings.access_log
    )
    redact.install()
    app = create_app(settings)
    tune_gc()
    return app


def main() -> None:
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as error:
        print(f"relay-gateway: {error}", file=sys.stderr)
        sys.exit(1)
    configure_service_logging(
        settings.log_level, settings.log_format, access_log=settings.access_log
    )
    redact.install()
    options = uvicorn_options(settings)
    if settings.workers > 1:
        # Worker processes build their own app; uvicorn's shutdown closes WebSockets with 1012
        # at once instead of spreading them over the drain window.
        uvicorn.run(
            "relay_gateway.__main__:app_from_env",
            factory=True,
            workers=settings.workers,
            timeout_graceful_shutdown=int(settings.shutdown_grace),
            **options,  # type: ignore[arg-type]  # uvicorn.run keywords
        )
        return
    drain = Drain(settings)
    app = create_app(settings, drain=drain)
    tune_gc()
    config = uvicorn.Config(app, **options)  # type: ignore[arg-type]  # uvicorn.Config keywords
    GatewayServer(config, drain, settings.shutdown_grace).run()


if __name__ == "__main__":
    main()
