"""Keep tokens out of the logs (contract §8).

Browsers pass their JWT as the ``token`` query parameter, and uvicorn's access and WebSocket
logs print request paths with their query strings. This filter rewrites every record's message
arguments so a token value never reaches a log line.
"""

from __future__ import annotations

import logging
import re

__all__ = ["TokenRedactingFilter", "install"]

_TOKEN = re.compile(r"((?:^|[?&])(?:token|access_token)=)[^&\s\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    return _TOKEN.sub(r"\1[redacted]", text)


class TokenRedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str) and "token=" in record.msg.lower():
            record.msg = redact(record.msg)
        return True


def install() -> None:
    """Attach the filter to every handler of the root logger (where uvicorn's logs go)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(TokenRedactingFilter())
