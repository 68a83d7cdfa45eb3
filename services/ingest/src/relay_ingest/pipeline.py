"""Auto-pipelining: concurrent requests share one GLIDE ``Batch`` round trip.

A request never awaits its own command. It queues an *operation* (a function that adds its
commands to a batch, and how many it adds) and awaits a future. One long-lived flusher task takes
everything queued since its last round trip (up to ``RELAY_PUBLISH_PIPELINE_SIZE`` commands,
never splitting an operation), sends it as ONE non-atomic batch with ``raise_on_error=False`` and
hands every operation the slice of results that belongs to it: a failed command fails only the
request that sent it.

An operation's commands are added when the flusher takes it, so work can join a queued
operation until then (:meth:`Pipeline.grow`; the publisher merges concurrent single publishes
to one topic that way). The queue limit and the per-round-trip size count that work (its
*weight*, e.g. messages), not just commands.

While one batch is in flight the next one fills up, so under load the batches grow and the
per-command cost falls toward the server's; with one request in flight the added latency is one
event-loop tick.

When the connection fails or times out the pipeline marks Valkey *unavailable* (on a cluster
only when the whole round trip fails: a command routed to a dead primary fails alone): queued and
new operations fail at once with :class:`Unavailable` (503 + ``Retry-After``) instead of each
waiting out the request timeout, and the flusher probes with PING until Valkey answers again,
then runs ``on_recover`` (e.g. reloading the publish function after a restart without data) and
resumes. ``on_recover`` also runs once when the flusher starts.

GLIDE itself reports a dead server only when a command times out, so with a
:class:`~relaycore.liveness.ServerWatch` (standalone Valkey) the pipeline learns it sooner: the
watch's idle connection reads EOF the moment the server process dies, and a batch in flight for
longer than ``stall_check`` makes the pipeline try a fresh connection (a host that vanished
without closing anything). Either way, what is *queued* (never sent) fails at once and new
operations are refused; the batch already handed to GLIDE keeps waiting for its answer up to
the request timeout, because its outcome is unknown: Valkey may have written it before dying,
and GLIDE may still send it once it reconnects. While down, the flusher waits for the watch to
see the server answer before it PINGs through GLIDE, so no probe waits out a timeout either.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from glide import (
    Batch,
    ClosingError,
    ClusterBatch,
    GlideClusterClient,
    GlideError,
)
from glide import ConnectionError as GlideConnectionError
from glide import TimeoutError as GlideTimeoutError

from relaycore.liveness import ServerWatch
from relaycore.logging import get_logger
from relaycore.metrics import CommonMetrics
from relaycore.valkey import ValkeyClient

__all__ = ["AnyBatch", "BatchBuilder", "Pipeline", "Queued", "Unavailable"]

AnyBatch: TypeAlias = Batch | ClusterBatch
BatchBuilder: TypeAlias = Callable[[AnyBatch], None]
"""Adds an operation's commands, in order, to a batch."""

log = get_logger("relay_ingest.pipeline")

# Errors that mean "the connection is gone or hung", as opposed to a command the server refused.
_CONNECTION_ERRORS = (GlideConnectionError, GlideTimeoutError, ClosingError)


class Unavailable(Exception):
    """Valkey cannot take the command now; the client should retry after ``retry_after`` s."""

    def __init__(self, reason: str, retry_after: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(slots=True)
class Queued:
    """An operation waiting for its round trip.

    ``size`` is how many commands ``build`` adds (and results the future gets); ``weight`` is
    how much of the queue limit and of a round trip's size it takes: the messages it carries,
    which :meth:`Pipeline.grow` raises while the operation waits.
    """

    build: BatchBuilder
    size: int
    weight: int
    future: asyncio.Future[list[Any]]
    waiting: bool = True


class Pipeline:
    """Batches the commands of concurrent callers into shared round trips."""

    def __init__(
        self,
        client: ValkeyClient,
        *,
        max_commands: int = 256,
        queue_limit: int = 10_000,
        probe_interval: float = 0.25,
        metrics: CommonMetrics | None = None,
        on_recover: Callable[[], Awaitable[None]] | None = None,
        observe_batch: Callable[[int], None] | None = None,
        watch: ServerWatch | None = None,
        stall_check: float = 0.2,
    ) -> None:
        self._client = client
        self._cluster = isinstance(client, GlideClusterClient)
        self._max_commands = max_commands
        self._queue_limit = queue_limit
        self._probe_interval = probe_interval
        self._metrics = metrics
        self._on_recover = on_recover
        self._observe_batch = observe_batch
        self._watch = watch
        self._stall_check = stall_check
        self._pending: list[Queued] = []
        self._pending_commands = 0
        self._wakeup = asyncio.Event()
        self._closing = asyncio.Event()
        self._available = True
        self.batches_sent = 0

    @property
    def available(self) -> bool:
        """False from a connection failure until a PING answers again."""
        return self._available

    @property
    def pending(self) -> int:
        """Commands queued and not yet sent."""
        return self._pending_commands

    async def execute(self, build: BatchBuilder, size: int) -> list[Any]:
        """Run ``size`` commands (added by ``build``) in the next shared batch.

        Returns their results in order; a command the server refused is a ``RequestError``
        instance in that list. Raises :class:`Unavailable` when Valkey cannot be reached.
        """
        return await self.submit(build, size).future

    def submit(self, build: BatchBuilder, size: int) -> Queued:
        """Queue ``size`` commands for the next shared batch; their results arrive on the
        returned operation's ``future``. Raises :class:`Unavailable` like :meth:`execute`.

        ``build`` runs when the flusher takes the operation, so it may add commands for
        work that joined the operation (:meth:`grow`) after it was queued.
        """
        self._admit(size)
        queued = Queued(build, size, size, asyncio.get_running_loop().create_future())
        self._pending.append(queued)
        self._pending_commands += size
        if not self._wakeup.is_set():
            self._wakeup.set()
        return queued

    def grow(self, queued: Queued, weight: int) -> bool:
        """Count ``weight`` more toward a queued operation (messages that joined it).

        False when the operation is no longer waiting (taken for a round trip, or failed):
        nothing can join it then. Raises :class:`Unavailable` like :meth:`execute`.
        """
        if not queued.waiting:
            return False
        self._admit(weight)
        queued.weight += weight
        self._pending_commands += weight
        return True

    def _admit(self, weight: int) -> None:
        if self._closing.is_set():
            raise Unavailable("the service is shutting down")
        if not self._available:
            raise Unavailable("storage is unavailable")
        if self._pending_commands + weight > self._queue_limit and self._pending:
            raise Unavailable("too many publishes waiting for storage")

    def close(self) -> None:
        """Refuse new operations; :meth:`run` sends what is queued, then returns."""
        self._closing.set()
        self._wakeup.set()

    def mark_down(self, reason: str) -> None:
        """The server is known to be gone: fail what is queued, refuse new operations.

        What is in flight keeps waiting for GLIDE's answer (its outcome is unknown).
        """
        if self._closing.is_set() and not self._pending:
            return
        self._mark_unavailable(ConnectionError(reason))
        self._fail_pending(Unavailable("storage is unavailable"))
        self._wakeup.set()  # an idle flusher must start probing: nothing else will wake it

    async def run(self) -> None:
        """The flusher (and the server watch, if any) until closed and drained."""
        if self._watch is None:
            await self._run_flusher()
            return
        watch = self._watch
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(watch.run(), name="relay-valkey-watch")
            try:
                await self._run_flusher()
            finally:
                watch.close()

    async def _run_flusher(self) -> None:
        """One batch in flight at a time, until closed and drained."""
        try:
            await self._warm_up()
            while True:
                if not self._available:
                    # Probe even with nothing queued: new operations are refused meanwhile,
                    # so nothing else would wake the flusher up.
                    self._fail_pending(Unavailable("storage is unavailable"))
                    if self._closing.is_set():
                        return
                    await self._probe()
                    continue
                if not self._pending:
                    if self._closing.is_set():
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                operations = self._take()
                try:
                    await self._flush(operations)
                except Exception:
                    # A bug here must not end the flusher: every later publish would hang.
                    log.exception("pipeline_flush_failed")
                    _fail(operations, Unavailable("the write failed"))
        finally:
            # Cancelled (shutdown grace over) or crashed: nobody may wait forever.
            self._fail_pending(Unavailable("the service is shutting down"))

    def _take(self) -> list[Queued]:
        taken = 0
        count = 0
        for operation in self._pending:
            if count and taken + operation.weight > self._max_commands:
                break
            taken += operation.weight
            count += 1
            operation.waiting = False
        operations = self._pending[:count]
        del self._pending[:count]
        self._pending_commands -= taken
        return operations

    async def _flush(self, operations: list[Queued]) -> None:
        batch: AnyBatch = ClusterBatch(is_atomic=False) if self._cluster else Batch(is_atomic=False)
        commands = 0
        for operation in operations:
            operation.build(batch)
            commands += operation.size
        if self._observe_batch is not None:
            self._observe_batch(commands)
        try:
            # The cluster client routes each command of a non-atomic batch to its slot's node.
            results = await self._sent(self._client.exec(batch, raise_on_error=False))
        except GlideError as error:
            # A command the server refuses comes back in the results; an exception means the
            # batch as a whole failed: no connection (GLIDE raises a plain RequestError for a
            # failed connect), a timeout, a closed client. Treat all of them as an outage.
            self._mark_unavailable(error)
            _fail(operations, Unavailable("storage is unavailable"))
            return
        self.batches_sent += 1
        if results is None:  # only a WATCHed transaction returns None; never for a pipeline
            _fail(operations, Unavailable("storage returned no result"))
            return
        failed = next((r for r in results if isinstance(r, _CONNECTION_ERRORS)), None)
        if failed is not None:
            if self._cluster:
                # One primary down fails only the commands routed to it (their requests get
                # 503); the other primaries' topics keep flowing, so no pipeline-wide outage.
                self._count_error()
            else:
                self._mark_unavailable(failed)
        offset = 0
        for operation in operations:
            end = offset + operation.size
            if not operation.future.done():
                operation.future.set_result(results[offset:end])
            offset = end

    async def _sent(self, request: Awaitable[Any]) -> Any:
        """Await a round trip; while it stalls, check the server is still reachable.

        The common round trip costs one timer: a checker task starts only once the round trip
        has taken ``stall_check`` (a task and an ``asyncio.wait`` per round trip cost a quarter
        of the batch publish rate), and it is cancelled and awaited when the answer comes.
        """
        watch = self._watch
        if watch is None:
            return await request
        loop = asyncio.get_running_loop()
        checker: asyncio.Task[None] | None = None

        def stalled() -> None:
            nonlocal checker
            checker = loop.create_task(self._check_while_stalled(watch), name="relay-stall-check")

        timer = loop.call_later(self._stall_check, stalled)
        try:
            return await request
        finally:
            timer.cancel()
            if checker is not None:
                checker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await checker

    async def _check_while_stalled(self, watch: ServerWatch) -> None:
        """Until cancelled (the answer came): is the server still taking connections?"""
        while True:
            if self._available and not await watch.reachable():
                self.mark_down("valkey stopped answering new connections")
            await asyncio.sleep(self._stall_check)

    def _mark_unavailable(self, error: BaseException) -> None:
        self._count_error()
        if self._available:
            log.warning("valkey_unavailable", error=str(error) or type(error).__name__)
        self._available = False

    def _count_error(self) -> None:
        if self._metrics is not None:
            self._metrics.valkey_errors.labels(self._metrics.service, "pipeline").inc()

    async def _warm_up(self) -> None:
        """Run ``on_recover`` once at start (load the function before the first publish).

        Failure is not fatal: Valkey may be down (the first round trip then starts the outage
        handling) or the function already loaded by an operator.
        """
        if self._on_recover is None:
            return
        try:
            await self._on_recover()
        except Exception as error:
            log.warning("valkey_warm_up_failed", error=str(error) or type(error).__name__)

    async def _probe(self) -> None:
        """PING until Valkey answers (then ``on_recover``), or until closed."""
        while not self._closing.is_set():
            if self._watch is not None and not await self._watch.wait_up(self._probe_interval):
                # Not even a raw connection is answered: no GLIDE PING would be either.
                self._fail_pending(Unavailable("storage is unavailable"))
                continue
            try:
                await self._client.ping()
                if self._on_recover is not None:
                    await self._on_recover()
            except Exception as error:  # GlideError, Unavailable from on_recover, or a bug
                self._count_error()
                log.debug("valkey_probe_failed", error=str(error) or type(error).__name__)
                self._fail_pending(Unavailable("storage is unavailable"))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self._probe_interval)
                continue
            self._available = True
            log.info("valkey_available")
            return

    def _fail_pending(self, error: Unavailable) -> None:
        operations, self._pending = self._pending, []
        self._pending_commands = 0
        _fail(operations, error)


def _fail(operations: list[Queued], error: Exception) -> None:
    for operation in operations:
        operation.waiting = False
        if not operation.future.done():
            operation.future.set_exception(error)
