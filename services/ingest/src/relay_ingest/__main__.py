"""``relay-ingest`` / ``python -m relay_ingest``: read settings, configure logging, run uvicorn.

An invalid ``RELAY_*`` value stops the process before it binds a port, with exit code 1 and one
line on stderr naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import NoReturn

import uvicorn
from starlette.applications import Starlette

from relaycore.auth import Authenticator
from relaycore.logging import configure_service_logging, uvicorn_log_config
from relaycore.runtime import tune_gc
from relaycore.settings import ConfigError, Settings

__all__ = ["app_from_environment", "main"]

PROG = "relay-ingest"


def _fail(message: str) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr)
    sys.exit(1)


def load_settings() -> Settings:
    """Settings from the environment, with the auth key files checked loadable."""
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as error:
        _fail(str(error))
    if settings.auth == "jwt":
        # Load each key file on its own so the message names the variable that is wrong.
        alone = dataclasses.replace(
            settings, jwt_secret="", jwt_public_key_file="", jwt_jwks_file=""
        )
        checks = (
            ("RELAY_JWT_PUBLIC_KEY_FILE", settings.jwt_public_key_file,
             dataclasses.replace(alone, jwt_public_key_file=settings.jwt_public_key_file)),
            ("RELAY_JWT_JWKS_FILE", settings.jwt_jwks_file,
             dataclasses.replace(alone, jwt_jwks_file=settings.jwt_jwks_file)),
        )  # fmt: skip
        for variable, path, only in checks:
            if not path:
                continue
            try:
                Authenticator.from_settings(only)
            except Exception as error:  # unreadable file, bad JSON, bad key: all a config error
                _fail(str(ConfigError(variable, path, str(error))))
    return settings


def _configure_logging(settings: Settings) -> None:
    configure_service_logging(
        settings.log_level, settings.log_format, access_log=settings.access_log
    )


def app_from_environment() -> Starlette:
    """The app factory each uvicorn worker process calls (``RELAY_WORKERS`` > 1)."""
    from relay_ingest.app import create_app

    settings = load_settings()
    _configure_logging(settings)
    app = create_app(settings)
    tune_gc()
    return app


def main() -> None:
    settings = load_settings()
    # Imported after the settings check: a bad variable is reported without loading the stack.
    from relay_ingest.app import create_app
    from relaycore.uvicorn_ext import server_protocols

    _configure_logging(settings)
    # One write per response (relaycore.uvicorn_ext), or uvicorn's own httptools protocol when
    # the installed uvicorn lacks an internal it uses.
    protocols = server_protocols(websockets=False, prepared_responses=False)
    many = settings.workers > 1
    # Several workers need an import string: each process builds its own app (and tunes its
    # own collector, in app_from_environment).
    app: Starlette | str = "relay_ingest.__main__:app_from_environment"
    if not many:
        app = create_app(settings)
        tune_gc()
    uvicorn.run(
        app,
        factory=many,
        workers=settings.workers if many else None,
        host=settings.ingest_host,
        port=settings.ingest_port,
        loop="uvloop",
        http=protocols.http,
        ws=protocols.ws,
        lifespan="on",
        log_config=uvicorn_log_config(),
        log_level=settings.log_level,
        access_log=settings.access_log,
        server_header=False,
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace)),
    )


if __name__ == "__main__":
    main()
