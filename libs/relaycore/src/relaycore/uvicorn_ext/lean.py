"""The gateway's HTTP/1.1 protocol: whole requests answered with no request cycle at all.

Even answered by the direct handler (:mod:`relaycore.uvicorn_ext.direct`), a long-poll on
uvicorn's protocol paid for uvicorn's per-request machinery: six httptools callbacks that build
an ASGI scope, a ``RequestResponseCycle`` with its ``asyncio.Event``, the keep-alive bookkeeping
— ~25 µs of Python per request against ~2 µs for a bare httptools protocol on the same machine
(``loadtests/RESULTS.md``, performance round 2). :class:`LeanHttpProtocol` is that bare
protocol for the one case that matters: a read that holds exactly one complete request head,
without a body, that the app's :data:`relaycore.direct.DirectHandler` takes. It parses with the
same httptools parser uvicorn uses (so exactly what uvicorn accepts), keeps the connection alive
on the loop's deadline wheel, and answers through a :class:`LeanRequest`.

Everything else **hands the connection over** to uvicorn's protocol
(:class:`~relaycore.uvicorn_ext.direct.DirectHttpProtocol`) for good, replaying the bytes read
so far, so uvicorn sees the connection exactly as if it had had it from the start:

- a read that is not exactly one request head (split, pipelined, carrying a body), or that the
  parser rejects (uvicorn answers the 400);
- a request with ``content-length``/``transfer-encoding``, ``Expect``, or an upgrade
  (WebSocket);
- a request the handler declines (the ASGI app gets it; the handler is offered it again, and
  declines again);
- with the access log on, a request carrying ``X-Forwarded-For`` (the proxy-headers middleware
  would name the real client);
- every connection, from the start, when ``limit_concurrency`` is set.

Guarantees kept: the header deadline from the connection's start and the keep-alive timeout
between requests (both on :mod:`~relaycore.uvicorn_ext.deadlines`), ``connection: close`` and
closing when the request asks for it (HTTP/1.0, ``Connection: close``) or the server shuts
down, the access-log line in uvicorn's format, the server's default headers, graceful shutdown
(``server_state.connections``; a parked request is answered by the app's drain), and a bounded
write buffer (reading pauses while the transport is above its high-water mark, and while a
parked request has more bytes queued behind it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

import httptools
from uvicorn.config import Config
from uvicorn.server import ServerState

from relaycore.direct import DIRECT, DirectHandler
from relaycore.logging import get_logger
from relaycore.models import error_body
from relaycore.prepared import PreparedResponse
from relaycore.uvicorn_ext.coalescing import TIMEOUT_RESPONSE, header_timeout
from relaycore.uvicorn_ext.deadlines import Deadlines
from relaycore.uvicorn_ext.direct import DirectHttpProtocol, complete_response
from relaycore.uvicorn_ext.responses import ACCESS_LOG_FORMAT

__all__ = ["LeanHttpProtocol", "LeanRequest"]

_END = b"\r\n\r\n"
# Request headers whose requests the lean path leaves to uvicorn: a body follows, a
# 100-continue is expected, or the connection is to change protocol.
_HAND_OVER = frozenset((b"content-length", b"transfer-encoding", b"expect", b"upgrade"))
_FORWARDED = b"x-forwarded-for"
_INTERNAL_BODY = error_body("internal", "internal error", [])
_INTERNAL_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", b"%d" % len(_INTERNAL_BODY)),
]

log = get_logger("relaycore.uvicorn_ext.lean")


class LeanRequest:
    """A :class:`relaycore.direct.DirectRequest` on a :class:`LeanHttpProtocol` connection."""

    __slots__ = (
        "_protocol",
        "done",
        "headers",
        "method",
        "on_disconnect",
        "path",
        "query_string",
        "raw_target",
        "root_path",
    )

    def __init__(
        self,
        protocol: LeanHttpProtocol,
        method: str,
        raw_target: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self._protocol = protocol
        self.method = method
        self.raw_target = raw_target
        raw_path, _, self.query_string = raw_target.partition(b"?")
        path = raw_path.decode("latin-1")  # ASCII: checked by the protocol
        if "%" in path:
            path = unquote(path)
        self.root_path = root_path = protocol.root_path
        self.path = root_path + path
        self.headers = headers
        self.on_disconnect: Callable[[], None] | None = None
        self.done = False

    # ResponseWriter (relaycore.prepared)

    @property
    def buffered_bytes(self) -> int:
        transport = self._protocol.transport
        return 0 if transport.is_closing() else transport.get_write_buffer_size()

    def write_stream(self, chunk: bytes) -> bool:
        return False  # never a streamed response here: those are uvicorn's

    def cut(self, last: bytes, *, timeout: float) -> None:
        self.done = True
        transport = self._protocol.transport
        if transport.is_closing():
            return
        if last:
            transport.write(last)
        transport.close()
        asyncio.get_running_loop().call_later(timeout, transport.abort)

    def write_prepared(self, response: PreparedResponse) -> bool:
        protocol = self._protocol
        if (
            self.done
            or not protocol.keep_alive
            or protocol.write_paused
            or self.method == "HEAD"
            or protocol.transport.is_closing()
        ):
            return False
        self.done = True
        protocol.transport.write(response.encode(protocol.server_state.default_headers))
        protocol.answered(self, 200)
        return True

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        protocol = self._protocol
        transport = protocol.transport
        if self.done or transport.is_closing():
            return
        self.done = True
        data = complete_response(
            status,
            protocol.server_state.default_headers,
            headers,
            body,
            keep_alive=protocol.keep_alive,
            head=self.method == "HEAD",
        )
        transport.write(data)
        protocol.answered(self, status)


class LeanHttpProtocol(asyncio.Protocol):
    """Pass it as uvicorn's ``http=`` (a protocol class is accepted there)."""

    # The deadline wheel's fields (HasDeadline).
    deadline = 0.0
    bucket: int | None = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.loop = _loop or asyncio.get_event_loop()
        self.root_path = config.root_path
        self.timeout_keep_alive = config.timeout_keep_alive
        access_logger = logging.getLogger("uvicorn.access")
        self.access_logger = access_logger if access_logger.hasHandlers() else None
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set on connection_made
        self.handler: DirectHandler | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.keep_alive = True
        self.write_paused = False
        self.request: LeanRequest | None = None  # taken, not answered yet
        self.held: list[bytes] = []  # read behind a parked request
        self.client = ""
        self._wheel: Deadlines | None = None
        self._idle = False  # the deadline armed is the keep-alive timeout, not the header one
        # Per request, filled by the parser's callbacks.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._refuse = False
        self._complete = False

    # asyncio.Protocol

    # uvloop's TCP transport, not an asyncio subclass, but a Transport in all but name.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.handler = self.app_state.get(DIRECT)
        if self.handler is None or self.config.limit_concurrency is not None:
            self._hand_over(b"")
            return
        self.server_state.connections.add(self)  # type: ignore[arg-type]  # shut down like uvicorn's
        if self.access_logger is not None:
            peer = transport.get_extra_info("peername")
            self.client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
        self._wheel = Deadlines.of(self.loop)
        # Counted from the connection's start: a client that sends nothing is cut too.
        self._arm(header_timeout())

    def data_received(self, data: bytes) -> None:
        if self.request is not None:
            # Behind a parked request: kept (reading paused) until it is answered.
            self.held.append(data)
            self.transport.pause_reading()
            return
        self.deadline = 0.0
        end = data.find(_END)
        if end < 0 or end != len(data) - 4:
            self._hand_over(data)
            return
        self._url = b""
        self._headers = []
        self._refuse = False
        self._complete = False
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._hand_over(data)
            return
        if not self._complete or self._refuse:
            self._hand_over(data)
            return
        url = self._url
        # Origin-form ASCII targets only; uvicorn parses any other (httptools.parse_url).
        if not url.startswith(b"/") or b"#" in url or not url.isascii():
            self._hand_over(data)
            return
        method = self.parser.get_method().decode("ascii")
        request = LeanRequest(self, method, url, self._headers)
        self.request = request
        assert self.handler is not None
        try:
            taken = self.handler(request)
        except Exception:  # an app bug: this request fails, the connection and server do not
            log.exception("direct_handler_failed", path=request.path)
            self.keep_alive = False
            request.respond(500, _INTERNAL_HEADERS, _INTERNAL_BODY)
            return
        if not taken:
            self.request = None
            self._hand_over(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        if self._wheel is not None:
            self._wheel.forget(self)
        request, self.request = self.request, None
        if request is not None and not request.done:
            request.done = True
            callback, request.on_disconnect = request.on_disconnect, None
            if callback is not None:
                callback()

    def eof_received(self) -> bool | None:
        return None  # close, as uvicorn's httptools protocol does

    def pause_writing(self) -> None:
        # Not one more request read until the peer takes what it was sent.
        self.write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.request is None:
            self.transport.resume_reading()

    # httptools callbacks

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _HAND_OVER or (name == _FORWARDED and self.access_logger is not None):
            self._refuse = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        # Asked here, as uvicorn does: once the message is complete the parser has moved on.
        self.keep_alive = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self._complete = True

    # uvicorn's server

    def shutdown(self) -> None:
        """Graceful shutdown: close now when idle, else after the answer."""
        if self.request is None:
            self.transport.close()
        else:
            self.keep_alive = False

    # The deadline wheel

    def deadline_passed(self) -> None:
        transport = self.transport
        if transport.is_closing() or self.request is not None:
            return
        if self._idle:
            transport.close()  # uvicorn's keep-alive timeout
        else:
            transport.write(TIMEOUT_RESPONSE)  # the slowloris guard's 408
            transport.close()

    def _arm(self, timeout: float) -> None:
        if timeout > 0 and self._wheel is not None:
            self._wheel.arm(self, self.loop.time() + timeout)

    # The answer

    def answered(self, request: LeanRequest, status: int) -> None:
        """``request`` was answered (its bytes are written): log it, then close or wait for the
        next request."""
        if self.access_logger is not None:
            path = quote(request.path)
            if request.query_string:
                path = f"{path}?{request.query_string.decode('ascii')}"
            version = self.parser.get_http_version()
            self.access_logger.info(
                ACCESS_LOG_FORMAT, self.client, request.method, path, version, status
            )
        self.server_state.total_requests += 1
        if self.request is request:
            self.request = None
        transport = self.transport
        if not self.keep_alive:
            transport.close()
            return
        if self.held:
            held = b"".join(self.held)
            self.held = []
            if not self.write_paused:
                transport.resume_reading()
            # Later, not inside the caller's write (a fan-out iterating its waiters).
            self.loop.call_soon(self._next, held)
            return
        self._idle = True
        self._arm(self.timeout_keep_alive)

    def _next(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.data_received(data)

    def _hand_over(self, data: bytes) -> None:
        """From now on uvicorn's protocol serves this connection, starting from ``data``."""
        self.server_state.connections.discard(self)
        if self._wheel is not None:
            self._wheel.forget(self)
            self._wheel = None
        transport = self.transport
        protocol = DirectHttpProtocol(
            config=self.config,
            server_state=self.server_state,
            app_state=self.app_state,
            _loop=self.loop,
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.write_paused:
            protocol.pause_writing()
        else:
            transport.resume_reading()
        if data:
            protocol.data_received(data)
