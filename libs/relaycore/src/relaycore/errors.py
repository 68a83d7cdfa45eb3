"""The error boundary both services put outermost: a bug answers in the §7 shape, logged once.

Handlers raise :class:`~relaycore.http.ApiError` for every answer a client can cause. Anything
else is a bug, and whichever path it escapes from — Starlette's routes, or the fast lanes that
skip Starlette's middleware (ingest's publishes, the gateway's long-poll) — it must still reach
the client as ``500 {"error": {"code": "internal", ...}}`` with an ``X-Request-ID`` header,
never as uvicorn's plain-text page, and be logged exactly once with that request id.

Two pieces do it, with no cost per request (nothing wraps ``send``):

- :func:`internal_error_response`, the Starlette handler for ``Exception``: Starlette's
  ``ServerErrorMiddleware`` sends it and then re-raises, so it does not log;
- :func:`answer_unhandled`, called by each service's outermost ``__call__`` around its whole
  app: it logs, then tries to send the same answer. If a response had already started (the
  Starlette handler sent one, or the bug struck mid-body), the send fails and uvicorn closes
  the connection, which is all that can be done then.

The request id is the client's ``X-Request-ID`` when it sent a sane one (so a proxy's id ties
its logs to ours), else a fresh one; it is computed only when an error happens and kept in the
scope, so the handler and the boundary report the same id.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope, Send

from relaycore.logging import get_logger
from relaycore.models import error_body

__all__ = ["answer_unhandled", "internal_error_response", "request_id"]

log = get_logger("relaycore.errors")

_SCOPE_KEY = "relay.request_id"
_HEADER = b"x-request-id"
# What is accepted from a client as its request id: short, and safe to echo in a header and log.
_SANE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_BODY = error_body("internal", "internal error", [])


def request_id(scope: Scope) -> str:
    """The id of this request for error reports: the client's ``X-Request-ID``, else a new one."""
    known: str | None = scope.get(_SCOPE_KEY)
    if known is not None:
        return known
    chosen = uuid.uuid4().hex
    for name, value in scope.get("headers", ()):
        if name == _HEADER:
            if _SANE_ID.fullmatch(value):
                chosen = value.decode("ascii")
            break
    scope[_SCOPE_KEY] = chosen
    return chosen


def _headers(rid: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(_BODY)),
        (_HEADER, rid.encode("ascii")),
    ]


async def internal_error_response(request: Request, exc: Exception) -> Response:
    """Starlette's handler for ``Exception``: the §7 answer; the boundary does the logging."""
    rid = request_id(request.scope)
    return Response(
        _BODY, status_code=500, media_type="application/json", headers={"X-Request-ID": rid}
    )


async def answer_unhandled(scope: Scope, send: Send, error: Exception) -> None:
    """Log ``error`` once with the request id and answer it as well as the connection allows."""
    rid = request_id(scope)
    kind = scope["type"]
    log.error(
        "unhandled_error",
        request_id=rid,
        transport=kind,
        path=scope.get("path"),
        method=scope.get("method"),
        exc_info=error,
    )
    # Best effort (see the module docstring): a send that fails means an answer had started.
    with contextlib.suppress(Exception):
        if kind == "http":
            start: dict[str, Any] = {
                "type": "http.response.start",
                "status": 500,
                "headers": _headers(rid),
            }
            await send(start)
            await send({"type": "http.response.body", "body": _BODY})
        elif kind == "websocket":
            # Before the upgrade this refuses it (403 from uvicorn); after, 1011 internal error.
            await send({"type": "websocket.close", "code": 1011, "reason": "internal error"})
