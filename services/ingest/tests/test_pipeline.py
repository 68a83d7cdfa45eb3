"""The auto-pipeliner on real Valkey: shared round trips, per-operation results, outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from glide import RequestError

from relay_devtools.testing import ValkeyProcess
from relay_ingest.pipeline import AnyBatch, Pipeline, Unavailable
from relaycore.valkey import ValkeyClient, ValkeyDsn, create_client


def incr(key: str, by: int = 1) -> Callable[[AnyBatch], None]:
    def build(batch: AnyBatch) -> None:
        batch.incrby(key, by)

    return build


@pytest.fixture
def running() -> Callable[..., Any]:
    """Run a pipeline's flusher for the duration of an ``async with``."""

    import contextlib

    @contextlib.asynccontextmanager
    async def run(pipeline: Pipeline) -> AsyncIterator[Pipeline]:
        async with asyncio.TaskGroup() as tasks:
            flusher = tasks.create_task(pipeline.run())
            try:
                yield pipeline
            finally:
                pipeline.close()
                await flusher

    return run


async def test_concurrent_operations_share_round_trips(
    valkey_client: ValkeyClient, topic: str, running: Any
) -> None:
    async with running(Pipeline(valkey_client)) as pipeline:
        results = await asyncio.gather(
            *(pipeline.execute(incr(f"{topic}:n"), 1) for _ in range(200))
        )
    assert sorted(r[0] for r in results) == list(range(1, 201))
    # 200 callers in one tick: one round trip (one more at most for scheduling slack).
    assert pipeline.batches_sent <= 2


async def test_an_operation_gets_only_its_own_results_and_errors(
    valkey_client: ValkeyClient, topic: str, running: Any
) -> None:
    await valkey_client.set(f"{topic}:text", "not a number")

    def two(batch: AnyBatch) -> None:
        batch.incrby(f"{topic}:a", 5)
        batch.incrby(f"{topic}:a", 5)

    async with running(Pipeline(valkey_client)) as pipeline:
        ok, bad, pair = await asyncio.gather(
            pipeline.execute(incr(f"{topic}:b"), 1),
            pipeline.execute(incr(f"{topic}:text"), 1),
            pipeline.execute(two, 2),
        )
    assert ok == [1]
    assert len(bad) == 1
    assert isinstance(bad[0], RequestError)
    assert pair == [5, 10]
    assert pipeline.batches_sent == 1


async def test_batches_are_capped_without_splitting_an_operation(
    valkey_client: ValkeyClient, topic: str, running: Any
) -> None:
    def four(batch: AnyBatch) -> None:
        for _ in range(4):
            batch.incrby(f"{topic}:four", 1)

    async with running(Pipeline(valkey_client, max_commands=10)) as pipeline:
        results = await asyncio.gather(*(pipeline.execute(four, 4) for _ in range(6)))
    # 24 commands, at most two 4-command operations per 10-command batch.
    assert pipeline.batches_sent == 3
    assert sorted(r[-1] for r in results) == [4, 8, 12, 16, 20, 24]


async def test_a_full_queue_refuses_with_unavailable(
    valkey_client: ValkeyClient, topic: str, running: Any
) -> None:
    async with running(Pipeline(valkey_client, queue_limit=5)) as pipeline:
        results = await asyncio.gather(
            *(pipeline.execute(incr(f"{topic}:q"), 1) for _ in range(8)), return_exceptions=True
        )
    refused = [r for r in results if isinstance(r, Unavailable)]
    assert len(refused) == 3
    assert sorted(r[0] for r in results if isinstance(r, list)) == [1, 2, 3, 4, 5]


async def test_close_sends_what_is_queued_then_refuses(
    valkey_client: ValkeyClient, topic: str
) -> None:
    pipeline = Pipeline(valkey_client)
    async with asyncio.TaskGroup() as tasks:
        waiting = [tasks.create_task(pipeline.execute(incr(f"{topic}:c"), 1)) for _ in range(3)]
        await asyncio.sleep(0)  # the three are queued; the flusher has not started
        pipeline.close()
        await pipeline.run()
    assert sorted(task.result()[0] for task in waiting) == [1, 2, 3]
    with pytest.raises(Unavailable):
        await pipeline.execute(incr(f"{topic}:c"), 1)


async def test_outage_fails_fast_then_recovers_by_itself(
    valkey_process: ValkeyProcess, topic: str, running: Any
) -> None:
    client = await create_client(
        ValkeyDsn.from_dsn(valkey_process.url), name="pipeline-test", request_timeout=0.5
    )
    recovered = asyncio.Event()

    async def on_recover() -> None:
        recovered.set()

    try:
        pipeline = Pipeline(client, probe_interval=0.05, on_recover=on_recover)
        async with running(pipeline):
            assert await pipeline.execute(incr(f"{topic}:o"), 1) == [1]
            assert recovered.is_set()  # on_recover also runs once at start
            recovered.clear()
            valkey_process.stop()
            with pytest.raises(Unavailable):
                await pipeline.execute(incr(f"{topic}:o"), 1)
            assert not pipeline.available
            # Refused at once: the call raises on its first step, without ever waiting.
            refused = pipeline.execute(incr(f"{topic}:o"), 1)
            with pytest.raises(Unavailable):
                refused.send(None)
            assert pipeline.pending == 0
            valkey_process.start()
            await asyncio.wait_for(recovered.wait(), timeout=15)
            assert pipeline.available
            # AOF kept the first increment across the restart.
            assert (await pipeline.execute(incr(f"{topic}:o"), 1))[0] >= 2
    finally:
        await client.close()


async def test_a_failing_builder_does_not_stop_the_flusher(
    valkey_client: ValkeyClient, topic: str, running: Any
) -> None:
    def broken(batch: AnyBatch) -> None:
        raise RuntimeError("a bug in a builder")

    async with running(Pipeline(valkey_client)) as pipeline:
        with pytest.raises(Unavailable):
            await pipeline.execute(broken, 1)
        assert await pipeline.execute(incr(f"{topic}:after"), 1) == [1]
        assert pipeline.available
