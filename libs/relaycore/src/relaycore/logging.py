"""structlog setup: JSON lines (via msgspec) or a console renderer, the same for every logger.

Follows structlog's production recipe: a filtering bound logger built once and cached,
contextvars merged into every event, and the standard library (uvicorn's own access and error
logs) routed through the same renderer so that with ``RELAY_LOG_FORMAT=json`` every stdout line
is one JSON object.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec
import structlog

__all__ = ["configure_logging", "configure_service_logging", "get_logger", "uvicorn_log_config"]

_json = msgspec.json.Encoder()


def _render_json(_: Any, __: str, event_dict: structlog.typing.EventDict) -> str:
    return _json.encode(event_dict).decode()


def _shared_processors() -> list[structlog.typing.Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    """Configure structlog and the stdlib root logger once, at process start."""
    numeric = logging.getLevelName(level.upper())
    renderer: structlog.typing.Processor = (
        _render_json if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*_shared_processors(), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    # The standard library (uvicorn, asyncio, glide) goes through the same renderer.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *_shared_processors()],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


def configure_service_logging(level: str, fmt: str, *, access_log: bool) -> None:
    """What each service's process (and each uvicorn worker) does at start, after settings."""
    configure_logging(level, fmt)
    if fmt == "json":
        # GLIDE's core logs straight to stdout in its own format; with JSON logs every stdout
        # line must be JSON, and connection trouble is already logged (and counted) by the apps.
        from glide import Logger, LogLevel

        Logger.set_logger_config(LogLevel.OFF)
    if not access_log:
        # uvicorn's access_log=False does this too, but a worker process configures logging
        # after uvicorn has, so it is repeated here.
        logging.getLogger("uvicorn.access").propagate = False


def uvicorn_log_config() -> dict[str, Any]:
    """A dictConfig for uvicorn that leaves its loggers to the root handler set up above."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            "uvicorn": {"level": "INFO", "propagate": True},
            "uvicorn.error": {"level": "INFO", "propagate": True},
            "uvicorn.access": {"level": "INFO", "propagate": True},
        },
    }


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
