"""Requests answered inside uvicorn's protocol, without an ASGI task (the ``relay.direct`` key).

uvicorn starts one task per request, wraps it in its middleware (proxy headers) and the app's
call chain, and hands the app ``receive``/``send``; for a long-poll whose whole work is a
dictionary lookup and one prepared write, that machinery was most of the gateway's CPU per
delivered message (``loadtests/RESULTS.md``, performance round 2). :class:`DirectHttpProtocol`
offers each new body-less request to the app's :data:`relaycore.direct.DirectHandler` (found
in the lifespan state under :data:`relaycore.direct.DIRECT`) before it would start that task:
a handler that takes the request answers it through :class:`DirectCycle`, which completes
uvicorn's request cycle exactly as uvicorn's own ``send`` would — status line, the server's
default headers, ``connection: close`` when the connection is not kept alive, the access-log
line, then ``on_response`` (keep-alive timer, next pipelined request). A declined request goes
on to its ASGI task unchanged.

What is never offered: requests uvicorn turned away (``limit_concurrency``), requests queued
behind a response still being written (pipelined: they are started later, the ordinary way),
``Expect: 100-continue``, requests with a body (``content-length`` or ``transfer-encoding``),
and, while the access log is on, requests carrying ``X-Forwarded-For`` (the log line would name
the proxy instead of the client uvicorn's proxy-headers middleware resolves).

The gateway's connections start on :mod:`relaycore.uvicorn_ext.lean`, which serves the plain
case with no request cycle at all and hands a connection over to this protocol for the rest.

A parked request (taken, not answered yet) has no task: uvicorn's graceful shutdown does not
wait for it, so the app must answer its parked requests in its own drain (the gateway does,
stage 3 of ``relay_gateway.shutdown``); its connection is then closed by uvicorn as idle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.server import ServerState

from relaycore.direct import DIRECT, DirectHandler
from relaycore.uvicorn_ext.responses import (
    CycleResponseWriter,
    RelayHttpProtocol,
    start_response,
    write_now,
)

__all__ = ["DirectCycle", "DirectHttpProtocol", "complete_response"]

# Request headers that mean a body follows, or that the direct path must leave to uvicorn.
_BODY_HEADERS = frozenset((b"content-length", b"transfer-encoding"))
_FORWARDED = b"x-forwarded-for"


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode())


_STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}


def complete_response(
    status: int,
    default_headers: list[tuple[bytes, bytes]],
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    keep_alive: bool,
    head: bool,
) -> bytes:
    """A whole response as uvicorn's ``send`` writes it: status line, the server's default
    headers, ``headers``, ``connection: close`` unless kept alive, and ``body`` unless ``HEAD``."""
    parts = [_STATUS_LINES[status]]
    for name, value in default_headers:
        parts += (name, b": ", value, b"\r\n")
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if not head:
        parts.append(body)
    return b"".join(parts)


class DirectCycle(CycleResponseWriter):
    """A :class:`relaycore.direct.DirectRequest` over one uvicorn request cycle."""

    __slots__ = ("on_disconnect",)

    def __init__(self, cycle: RequestResponseCycle, server_state: ServerState) -> None:
        super().__init__(cycle, server_state)
        self.on_disconnect: Callable[[], None] | None = None

    @property
    def method(self) -> str:
        method: str = self._cycle.scope["method"]
        return method

    @property
    def path(self) -> str:
        return self._cycle.scope["path"]

    @property
    def root_path(self) -> str:
        return self._cycle.scope["root_path"]

    @property
    def query_string(self) -> bytes:
        return self._cycle.scope["query_string"]

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = self._cycle.scope["headers"]  # type: ignore[assignment]  # uvicorn types it as an Iterable
        return headers

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        cycle = self._cycle
        transport = cycle.transport
        if cycle.response_started or cycle.disconnected or transport.is_closing():
            return
        # The tail of uvicorn's RequestResponseCycle.send, for a complete response.
        start_response(cycle, status)
        data = complete_response(
            status,
            self._server_state.default_headers,
            headers,
            body,
            keep_alive=cycle.keep_alive,
            head=cycle.scope["method"] == "HEAD",
        )
        write_now(transport, data)
        cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            transport.close()
        cycle.on_response()

    def lost(self) -> None:
        """The peer went away: tell the handler once, if the request was still unanswered."""
        callback, self.on_disconnect = self.on_disconnect, None
        if callback is not None and not self._cycle.response_complete:
            callback()


class DirectHttpProtocol(RelayHttpProtocol):
    """The gateway's HTTP protocol: one write per response, prepared answers, and requests
    answered by the app's direct handler without an ASGI task.

    Pass it as uvicorn's ``http=`` (a protocol class is accepted there).
    """

    _direct: DirectHandler | None = None
    _fresh = False  # inside on_headers_complete: the request is new, not a pipelined one
    _parked: DirectCycle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as the base's
        super().connection_made(transport)
        # The lifespan has run before the server accepts connections: its state is complete.
        self._direct = self.app_state.get(DIRECT)

    def on_headers_complete(self) -> None:
        self._fresh = True
        try:
            super().on_headers_complete()
        finally:
            self._fresh = False

    def _start_asgi_task(self, cycle: RequestResponseCycle, app):  # type: ignore[no-untyped-def]  # as uvicorn's
        handler = self._direct
        if (
            handler is not None
            and self._fresh
            and app is self.app
            and not cycle.waiting_for_100_continue
            and self._may_offer(cycle)
        ):
            request = DirectCycle(cycle, self.server_state)
            if handler(request):
                if not cycle.response_complete:
                    self._parked = request
                return
        super()._start_asgi_task(cycle, app)

    def _may_offer(self, cycle: RequestResponseCycle) -> bool:
        log_forwarded = cycle.access_log
        for name, _ in cycle.scope["headers"]:
            if name in _BODY_HEADERS or (log_forwarded and name == _FORWARDED):
                return False
        return True

    def on_response_complete(self) -> None:
        self._parked = None
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        parked, self._parked = self._parked, None
        super().connection_lost(exc)
        if parked is not None:
            parked.lost()
