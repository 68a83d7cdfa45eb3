"""Graceful shutdown on SIGTERM (contract §9), staged like uvicorn's own ``Server.shutdown``.

1. ``/ready`` answers 503, so load balancers stop routing here.
2. Stop accepting: the listening sockets close; new clients go to the other gateways.
3. End long-polls at once with their cursor and end SSE streams: both reconnect cheaply and
   resume exactly from their cursor / ``Last-Event-ID``.
4. Close WebSockets with 1012 (service restart), spread evenly over ``RELAY_SHUTDOWN_DRAIN``
   (at most half of ``RELAY_SHUTDOWN_GRACE``) so their reconnects do not arrive at the other
   gateways as one stampede.
5. uvicorn's shutdown: close what is left, wait for running tasks at most the rest of
   ``RELAY_SHUTDOWN_GRACE``, then the lifespan shutdown stops the readers and closes Valkey
   clients. The process exits before the grace period ends.

Every stage is idempotent: a second SIGTERM, or the lifespan shutdown of an in-process server
that never saw a signal, finds the work done.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol

import structlog
import uvicorn

from relaycore.settings import Settings

__all__ = ["Drain", "Drainable", "GatewayServer"]

log = structlog.get_logger("relay_gateway.shutdown")

# The WebSocket closes go out in at most this many evenly spaced waves.
_WAVES = 100
# After the last wave, how long the closing handshakes may take before uvicorn's stage.
_SETTLE = 1.0
# Margin kept between the end of uvicorn's graceful wait and the grace deadline.
_EXIT_MARGIN = 1.5


class Drainable(Protocol):
    """A client connection that can be asked to end itself for a shutdown."""

    def drain(self) -> None: ...


class Drain:
    """The registry of open client connections and the drain procedure."""

    def __init__(self, settings: Settings) -> None:
        # At most half the grace period, so uvicorn's own stage and the exit still fit in it.
        self.window = min(settings.shutdown_drain, settings.shutdown_grace / 2)
        self.draining = False
        self.websockets: set[Drainable] = set()
        self.streams: set[Drainable] = set()  # SSE streams and long-polls
        self._done: asyncio.Event | None = None

    def begin(self) -> None:
        """Stage 1: from now on ``/ready`` is 503 and new requests are turned away."""
        self.draining = True

    async def run(self) -> None:
        """Stages 3 and 4; concurrent and repeated calls wait for the first one."""
        self.begin()
        if self._done is not None:
            await self._done.wait()
            return
        self._done = asyncio.Event()
        try:
            streams = list(self.streams)
            for stream in streams:
                stream.drain()
            sockets = list(self.websockets)
            log.info("draining", websockets=len(sockets), streams=len(streams), window=self.window)
            if sockets:
                waves = min(_WAVES, len(sockets))
                pause = self.window / waves
                for wave in range(waves):
                    for connection in sockets[wave::waves]:
                        connection.drain()
                    await asyncio.sleep(pause)
            # Let the last closes finish their handshakes, for at most _SETTLE.
            for _ in range(int(_SETTLE / 0.05)):
                if not self.websockets and not self.streams:
                    break
                await asyncio.sleep(0.05)
        finally:
            self._done.set()


class GatewayServer(uvicorn.Server):
    """uvicorn's server with the gateway's drain stages before uvicorn's own shutdown."""

    def __init__(self, config: uvicorn.Config, drain: Drain, grace: float) -> None:
        # uvicorn gets what remains of the grace period after the drain window, minus a margin.
        remaining = grace - drain.window - _SETTLE - _EXIT_MARGIN
        config.timeout_graceful_shutdown = max(1, int(remaining))
        super().__init__(config)
        self.drain = drain

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Stage 1: not ready any more.
        self.drain.begin()
        # Stage 2: stop accepting new connections.
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        # Stages 3 and 4: end polls and streams, close WebSockets with 1012 over the window.
        await self.drain.run()
        # Stage 5: uvicorn's own shutdown and the lifespan shutdown.
        await super().shutdown(sockets)
