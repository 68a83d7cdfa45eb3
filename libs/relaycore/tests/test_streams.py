"""The publish function on a real Valkey: ids, previous-id chain, idempotency, retention."""

from __future__ import annotations

from glide import Batch

from relaycore.ids import StreamId
from relaycore.keys import stream_key
from relaycore.streams import (
    StreamRetention,
    add_publish,
    add_publish_many,
    add_publish_payloads,
    ensure_functions,
    parse_publish_many,
    read_after,
    stream_info,
)
from relaycore.valkey import ValkeyClient

RETAIN = StreamRetention(maxlen=1000, max_age_ms=0, idempotency_ttl_ms=60_000)


async def publish(client: ValkeyClient, topic: str, payloads: list[bytes], key: str | None = None,
                  retention: StreamRetention = RETAIN) -> list[list[object]]:  # fmt: skip
    batch = Batch(is_atomic=False)
    for payload in payloads:
        add_publish(batch, topic, payload, None, key, retention)
    result = await client.exec(batch, raise_on_error=True)
    assert result is not None
    return result  # type: ignore[return-value]  # each fcall result is [id, duplicate]


async def test_each_entry_records_the_previous_id(valkey_client: ValkeyClient, topic: str) -> None:
    await ensure_functions(valkey_client)
    results = await publish(valkey_client, topic, [b'{"n":1}', b'{"n":2}', b"[3]"])
    ids = [StreamId.parse(r[0]) for r in results]  # type: ignore[arg-type]  # bytes id
    assert ids == sorted(ids)
    entries = await read_after(valkey_client, topic, StreamId(0, 0), 10_000)
    assert [e.id for e in entries] == ids
    assert [e.previous for e in entries] == [StreamId(0, 0), ids[0], ids[1]]
    assert [e.payload for e in entries] == [b'{"n":1}', b'{"n":2}', b"[3]"]


async def test_idempotency_key_returns_first_id(valkey_client: ValkeyClient, topic: str) -> None:
    await ensure_functions(valkey_client)
    first, again = await publish(valkey_client, topic, [b"1", b"2"], key="k1")
    assert first[1] == 0
    assert again == [first[0], 1]
    assert await valkey_client.xlen(stream_key(topic)) == 1


async def test_maxlen_trims_and_chain_shows_the_gap(
    valkey_client: ValkeyClient, topic: str
) -> None:
    await ensure_functions(valkey_client)
    small = StreamRetention(maxlen=1, max_age_ms=0, idempotency_ttl_ms=1000)
    # Approximate trimming only drops whole nodes (100 entries by default): write enough.
    results = await publish(valkey_client, topic, [b"0"] * 300, retention=small)
    entries = await read_after(valkey_client, topic, StreamId(0, 0), 10_000)
    assert len(entries) < 300
    oldest = entries[0]
    assert oldest.previous == StreamId.parse(results[299 - len(entries)][0])  # type: ignore[arg-type]  # bytes id


async def test_stream_info(valkey_client: ValkeyClient, topic: str) -> None:
    await ensure_functions(valkey_client)
    assert await stream_info(valkey_client, topic) is None
    results = await publish(valkey_client, topic, [b"1", b"2"])
    info = await stream_info(valkey_client, topic)
    assert info is not None
    assert info.length == 2
    assert info.first_id == StreamId.parse(results[0][0])  # type: ignore[arg-type]  # bytes id
    assert info.last_id == info.last_generated_id == StreamId.parse(results[1][0])  # type: ignore[arg-type]  # bytes id


async def publish_many(
    client: ValkeyClient, topic: str, messages: list[tuple[bytes, bytes | None, str | None]]
) -> list[tuple[bytes, bool]]:
    batch = Batch(is_atomic=False)
    add_publish_many(batch, topic, messages, RETAIN)
    (result,) = await client.exec(batch, raise_on_error=True) or [None]
    return parse_publish_many(result)  # type: ignore[arg-type]  # the function's flat list


async def test_publish_many_keeps_order_and_the_previous_id_chain(
    valkey_client: ValkeyClient, topic: str
) -> None:
    await ensure_functions(valkey_client)
    singles = await publish(valkey_client, topic, [b"1"])
    many = await publish_many(
        valkey_client, topic, [(b"2", None, None), (b"3", b'{"h":"x"}', None), (b"4", None, None)]
    )
    after = await publish(valkey_client, topic, [b"5"])
    ids = [StreamId.parse(singles[0][0])]  # type: ignore[arg-type]  # bytes id
    ids += [StreamId.parse(message_id) for message_id, duplicate in many if not duplicate]
    ids.append(StreamId.parse(after[0][0]))  # type: ignore[arg-type]  # bytes id
    entries = await read_after(valkey_client, topic, StreamId(0, 0), 100)
    assert [e.id for e in entries] == ids
    assert [e.payload for e in entries] == [b"1", b"2", b"3", b"4", b"5"]
    assert [e.previous for e in entries] == [StreamId(0, 0), *ids[:-1]]
    assert [e.headers for e in entries] == [None, None, b'{"h":"x"}', None, None]


async def test_publish_many_idempotency(valkey_client: ValkeyClient, topic: str) -> None:
    await ensure_functions(valkey_client)
    (earlier,) = await publish(valkey_client, topic, [b"0"], key="old")
    results = await publish_many(
        valkey_client,
        topic,
        [(b"1", None, "a"), (b"2", None, "a"), (b"3", None, "old"), (b"4", None, None)],
    )
    assert [duplicate for _, duplicate in results] == [False, True, True, False]
    assert results[1][0] == results[0][0]
    assert results[2][0] == earlier[0]
    assert await valkey_client.xlen(stream_key(topic)) == 3


async def test_publish_payloads_keeps_order_and_the_previous_id_chain(
    valkey_client: ValkeyClient, topic: str
) -> None:
    await ensure_functions(valkey_client)
    (first,) = await publish(valkey_client, topic, [b"1"])
    batch = Batch(is_atomic=False)
    add_publish_payloads(batch, topic, [b"2", b'{"x":3}', b"4"], RETAIN)
    result = await valkey_client.exec(batch, raise_on_error=True)
    assert result is not None
    (raw_ids,) = result
    assert isinstance(raw_ids, list)
    ids = [StreamId.parse(first[0]), *(StreamId.parse(i) for i in raw_ids)]  # type: ignore[arg-type]  # bytes ids
    entries = await read_after(valkey_client, topic, StreamId(0, 0), 100)
    assert [e.id for e in entries] == ids
    assert [e.payload for e in entries] == [b"1", b"2", b'{"x":3}', b"4"]
    assert [e.previous for e in entries] == [StreamId(0, 0), *ids[:-1]]
    assert [e.headers for e in entries] == [None] * 4
