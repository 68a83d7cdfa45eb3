"""Is the Valkey server process there? Learned in milliseconds, not after a request timeout.

GLIDE does not fail commands fast when its connection breaks: a command sent on the dead
socket waits out the request timeout, and one issued while GLIDE reconnects is queued until the
reconnect succeeds or the timeout passes (measured on valkey-glide 2.6 against a SIGKILLed
``valkey-server``: every PING of the first 2 s took 2 s). So a caller cannot tell "the server is
gone" from "the server is slow" through GLIDE until its timeout ends.

:class:`ServerWatch` learns it another way: it holds one idle raw TCP connection to the server
(no credentials are ever sent on it, only ``PING``, answered ``+PONG`` or ``-NOAUTH``). When the
server process dies the kernel closes that connection at once, the watch reads EOF, and one
fresh connection attempt, refused at once by a dead server, tells an outage from a server that
only dropped this idle client (``timeout``, ``CLIENT KILL``). It then reports ``on_lost`` and
tries to connect again every ``retry_interval``; :attr:`up` turns true when the server answers.
A host that vanished without closing anything (a partition) sends no EOF: for that,
:meth:`reachable` is a fresh TCP connect the caller can run when a request has stalled (a
server that is only slow still completes it).

Standalone servers only: on a cluster, one unreachable node must not make the others look down.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable

from relaycore.logging import get_logger

__all__ = ["ServerWatch"]

log = get_logger("relaycore.liveness")

_PING = b"PING\r\n"


class ServerWatch:
    """Watches one Valkey server through an idle raw connection (see module doc)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: bool = False,
        on_lost: Callable[[str], None] | None = None,
        timeout: float = 0.5,
        retry_interval: float = 0.1,
        keepalive: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self._tls = tls
        self._on_lost = on_lost
        self._timeout = timeout
        self._retry_interval = retry_interval
        # A PING this often keeps a server-side idle `timeout` from closing the connection.
        self._keepalive = keepalive
        self._up: bool | None = None  # None: not known yet (before the first connect)
        self._up_event = asyncio.Event()
        self._closing = asyncio.Event()
        self.losses = 0

    @property
    def up(self) -> bool:
        """True while the watch holds an answered connection to the server."""
        return self._up is True

    async def wait_up(self, within: float) -> bool:
        """Wait until the server answers, at most ``within`` s; whether it does."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up_event.wait(), within)
        return self.up

    def close(self) -> None:
        self._closing.set()

    async def run(self) -> None:
        """Hold the connection until :meth:`close`; report each loss once."""
        while not self._closing.is_set():
            connection = await self._connect()
            if connection is None:
                self._set_down("valkey refused or did not answer a new connection")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self._retry_interval)
                continue
            self._set_up()
            try:
                await self._hold(*connection)
            finally:
                connection[1].close()
            # EOF: connect again at once; only a failed attempt is an outage (see module doc).

    async def reachable(self) -> bool:
        """Whether a fresh TCP connection is accepted within the timeout.

        Only the handshake counts, which the kernel completes even for a server that is busy
        (or stopped): a slow server is not an outage, only an unreachable one is.
        """
        try:
            async with asyncio.timeout(self._timeout):
                _, writer = await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            async with asyncio.timeout(self._timeout):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=_tls_context() if self._tls else None
                )
                try:
                    writer.write(_PING)
                    await writer.drain()
                    reply = await reader.readline()
                except BaseException:
                    writer.close()
                    raise
        except (OSError, TimeoutError, ssl.SSLError):
            return None
        if not reply.startswith((b"+", b"-")):  # EOF or not a RESP server
            writer.close()
            return None
        return reader, writer

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Return when the server closes the connection (or the watch is closed)."""
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            while True:
                read = asyncio.ensure_future(reader.read(4096))
                done, _ = await asyncio.wait(
                    {read, closing}, timeout=self._keepalive, return_when=asyncio.FIRST_COMPLETED
                )
                if read not in done:
                    read.cancel()
                    with contextlib.suppress(asyncio.CancelledError, OSError):
                        await read
                    if closing in done:
                        return
                    writer.write(_PING)
                    continue
                try:
                    data = read.result()
                except OSError:
                    return
                if not data:
                    return
        finally:
            closing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await closing

    def _set_up(self) -> None:
        if self._up is not True:
            log.info("valkey_reachable", host=self.host, port=self.port)
        self._up = True
        self._up_event.set()

    def _set_down(self, reason: str) -> None:
        was = self._up
        self._up = False
        self._up_event.clear()
        if was is not False:
            self.losses += 1
            log.warning("valkey_unreachable", host=self.host, port=self.port, reason=reason)
            if self._on_lost is not None:
                self._on_lost(reason)


def _tls_context() -> ssl.SSLContext:
    # The watch only learns whether a server process answers; it never sends credentials or
    # data on this connection, so it does not verify the certificate (GLIDE's own connection,
    # which carries everything, does).
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
