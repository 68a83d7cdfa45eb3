"""The publisher on real Valkey: one round trip per batch, reloading a missing function."""

from __future__ import annotations

import asyncio

from relay_devtools.testing import ValkeyProcess
from relay_ingest.pipeline import Pipeline
from relay_ingest.publisher import OutgoingMessage, Publisher
from relaycore.ids import StreamId
from relaycore.streams import LIBRARY_NAME, StreamRetention, read_after
from relaycore.valkey import ValkeyClient, ValkeyDsn, create_client

RETENTION = StreamRetention(maxlen=1000, max_age_ms=0, idempotency_ttl_ms=60_000)


async def test_a_batch_is_one_round_trip_and_one_command_per_topic(
    valkey_client: ValkeyClient, topic: str
) -> None:
    commands: list[int] = []
    pipeline = Pipeline(valkey_client, observe_batch=commands.append)
    publisher = Publisher(valkey_client, pipeline, RETENTION)
    await publisher.load_functions()
    topics = [topic, topic + ".b", topic + ".c"]
    messages = [OutgoingMessage(topics[n % 3], b"%d" % n, None, None) for n in range(500)]
    async with asyncio.TaskGroup() as tasks:
        flusher = tasks.create_task(pipeline.run())
        published = await publisher.publish(messages)
        pipeline.close()
        await flusher
    assert pipeline.batches_sent == 1
    assert commands == [3]  # one relay_publish_many per topic
    for name in topics:
        stored = await read_after(valkey_client, name, StreamId(0, 0), 1000)
        sent = [
            (p.id, m.payload) for p, m in zip(published, messages, strict=True) if m.topic == name
        ]
        assert [(str(e.id), e.payload) for e in stored] == sent


async def test_missing_function_is_loaded_once_and_calls_retried(
    valkey_process: ValkeyProcess, topic: str
) -> None:
    client = await create_client(ValkeyDsn.from_dsn(valkey_process.url), name="publisher-test")
    try:
        pipeline = Pipeline(client)
        publisher = Publisher(client, pipeline, RETENTION)
        async with asyncio.TaskGroup() as tasks:
            flusher = tasks.create_task(pipeline.run())
            # A fresh server has no function: ten concurrent publishes notice it together.
            results = await asyncio.gather(
                *(publisher.publish([OutgoingMessage(topic, b"1", None, None)]) for _ in range(10))
            )
            assert len({r[0].id for r in results}) == 10
            assert publisher.function_loads == 1
            await client.function_delete(LIBRARY_NAME)
            (again,) = await publisher.publish([OutgoingMessage(topic, b"2", None, None)])
            assert publisher.function_loads == 2
            pipeline.close()
            await flusher
        stored = await read_after(client, topic, StreamId(0, 0), 100)
        assert len(stored) == 11
        assert str(stored[-1].id) == again.id
    finally:
        await client.close()


async def test_concurrent_single_publishes_to_a_topic_share_one_command(
    valkey_client: ValkeyClient, topic: str
) -> None:
    commands: list[int] = []
    pipeline = Pipeline(valkey_client, observe_batch=commands.append)
    publisher = Publisher(valkey_client, pipeline, RETENTION, merge_limit=20)
    await publisher.load_functions()
    other = topic + ".other"
    messages = [OutgoingMessage(topic, b"%d" % n, None, None) for n in range(50)]
    messages.append(OutgoingMessage(other, b"alone", None, None))
    async with asyncio.TaskGroup() as tasks:
        flusher = tasks.create_task(pipeline.run())
        results = await asyncio.gather(*(publisher.publish([m]) for m in messages))
        pipeline.close()
        await flusher
    # 50 messages of one topic in calls of at most 20, and the other topic's own call.
    assert pipeline.batches_sent == 1
    assert commands == [4]
    stored = await read_after(valkey_client, topic, StreamId(0, 0), 1000)
    # Each request got its own id, and the stream holds the messages in arrival order.
    assert [str(e.id) for e in stored] == [r[0].id for r in results[:50]]
    assert [e.payload for e in stored] == [m.payload for m in messages[:50]]
    (alone,) = await read_after(valkey_client, other, StreamId(0, 0), 10)
    assert (str(alone.id), alone.payload) == (results[50][0].id, b"alone")


async def test_merged_publishes_keep_idempotency_exact(
    valkey_client: ValkeyClient, topic: str
) -> None:
    pipeline = Pipeline(valkey_client)
    publisher = Publisher(valkey_client, pipeline, RETENTION)
    await publisher.load_functions()
    messages = [
        OutgoingMessage(topic, b"1", None, "k"),
        OutgoingMessage(topic, b"2", None, None),
        OutgoingMessage(topic, b"3", None, "k"),
    ]
    async with asyncio.TaskGroup() as tasks:
        flusher = tasks.create_task(pipeline.run())
        (first,), (second,), (third,) = await asyncio.gather(
            *(publisher.publish([m]) for m in messages)
        )
        pipeline.close()
        await flusher
    assert not first.duplicate
    assert not second.duplicate
    assert third.duplicate
    assert third.id == first.id
    stored = await read_after(valkey_client, topic, StreamId(0, 0), 10)
    assert [e.payload for e in stored] == [b"1", b"2"]


async def test_merged_publishes_over_the_queue_limit_are_refused(
    valkey_client: ValkeyClient, topic: str
) -> None:
    pipeline = Pipeline(valkey_client, queue_limit=5)
    publisher = Publisher(valkey_client, pipeline, RETENTION)
    await publisher.load_functions()
    async with asyncio.TaskGroup() as tasks:
        flusher = tasks.create_task(pipeline.run())
        outcomes = await asyncio.gather(
            *(publisher.publish([OutgoingMessage(topic, b"1", None, None)]) for _ in range(8)),
            return_exceptions=True,
        )
        pipeline.close()
        await flusher
    # Queued before the flusher ran: five fit, three are refused with 503's exception.
    assert [type(o).__name__ for o in outcomes] == ["list"] * 5 + ["Unavailable"] * 3
    assert len(await read_after(valkey_client, topic, StreamId(0, 0), 10)) == 5
