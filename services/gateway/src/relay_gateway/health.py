"""Whether Valkey answers, known before a client has to wait for it (fail fast).

A command to a Valkey that is down does not fail at once: GLIDE keeps it until the request
timeout (``RELAY_VALKEY_TIMEOUT``, 2 s). So the gateway keeps a verdict, :class:`StorageHealth`:

* it is *down* as soon as any command (a reader's XREAD, a resume's XRANGE, a probe) fails
  with a connection error, a closed client or a timeout, or a probe — a ``PING`` every
  ``RELAY_VALKEY_PROBE_INTERVAL`` (500 ms) — goes unanswered for that long;
* while down, every operation that needs Valkey (starting a topic, a resume outside the hot
  tier, a history read) raises :class:`~relay_gateway.hub.Unavailable` at once — the
  transports answer ``error`` ``unavailable`` (WebSocket; the connection stays) or 503 with
  ``Retry-After`` (long-poll, SSE) — and the ones already waiting when the verdict flips fail
  at that moment instead of at their timeout;
* it is up again at the first command or probe that succeeds (probes run every interval).

Live delivery does not depend on the verdict: readers keep retrying on their own and resume
from the last id they saw. What the verdict costs when wrong (a Valkey slower than the probe
interval) is an ``unavailable`` that the client retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import structlog
from glide import ClosingError, GlideError
from glide import ConnectionError as GlideConnectionError
from glide import TimeoutError as GlideTimeoutError

from relaycore.valkey import ValkeyClient

__all__ = ["StorageDown", "StorageHealth", "is_outage"]

log = structlog.get_logger("relay_gateway.health")

T = TypeVar("T")


class StorageDown(Exception):
    """Valkey is known to be unreachable (or became so while this operation waited)."""


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` says Valkey cannot be reached (not: the command was refused)."""
    return isinstance(error, GlideConnectionError | GlideTimeoutError | ClosingError)


class StorageHealth:
    """The gateway's verdict on Valkey, fed by every command's outcome and a probe."""

    def __init__(self, client: ValkeyClient, *, probe_interval: float) -> None:
        self.client = client
        self.probe_interval = probe_interval
        self.down = False
        self._went_down: asyncio.Future[None] | None = None

    def failed(self, error: BaseException) -> None:
        """A command failed: an outage-class error makes the verdict *down*."""
        if is_outage(error):
            self.mark_down(str(error))

    def mark_down(self, reason: str) -> None:
        if not self.down:
            log.warning("valkey_down", reason=reason[:200])
        self.down = True
        waiter, self._went_down = self._went_down, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def mark_up(self) -> None:
        if self.down:
            log.info("valkey_up")
        self.down = False

    def check(self) -> None:
        if self.down:
            raise StorageDown("storage unavailable")

    async def call(self, operation: Awaitable[T]) -> T:
        """Await ``operation`` unless Valkey is down, or until it goes down meanwhile.

        Raises :class:`StorageDown` (fail fast) or the operation's own :class:`GlideError`.
        """
        if self.down:
            if asyncio.iscoroutine(operation):
                operation.close()
            raise StorageDown("storage unavailable")
        task = asyncio.ensure_future(operation)
        if self._went_down is None:
            self._went_down = asyncio.get_running_loop().create_future()
        went_down = self._went_down
        try:
            await asyncio.wait((task, went_down), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        if not task.done():
            task.cancel()
            raise StorageDown("storage became unavailable")
        try:
            result = task.result()
        except GlideError as error:
            self.failed(error)
            raise
        self.mark_up()
        return result

    async def probe(self) -> bool:
        """One ``PING`` bounded by the probe interval; updates the verdict."""
        try:
            async with asyncio.timeout(self.probe_interval):
                await self.client.ping()
        except (GlideError, TimeoutError) as error:
            self.mark_down(f"probe failed: {error!r}")
            return False
        self.mark_up()
        return True

    async def watch_forever(self) -> None:
        """Probe every interval, so an outage is known before a client command waits on it."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.probe()
            await asyncio.sleep(max(0.0, self.probe_interval - (loop.time() - started)))
