"""Topic streams in Valkey: the publish function and the read side shared by both services.

Publishing goes through one Valkey Function, ``relay_publish``, so the idempotency check, the
XADD, the retention trims and the idempotency record happen atomically in one round trip.
``relay_publish_many`` does the same for several messages of one topic in one call (a batch
request's messages per topic), looking the previous id up once. Both store in field ``v`` the id
of the entry written before the new one: a reader that
resumes after cursor ``c`` and finds the first retained entry's ``v`` ≤ ``c`` knows nothing in
between was trimmed. XINFO's ``max-deleted-entry-id`` cannot say that (MAXLEN trimming leaves it
at ``0-0``), and a false "messages were lost" is as wrong as a silent gap.

Every publish function ends by signalling the topic: ``SPUBLISH relay:{<topic>}:w <newest id>``
(sharded pub/sub, same slot as the stream), which wakes the gateways' cluster readers; with no
subscriber it costs nothing measurable (``loadtests/cluster/signal_cost.py``). ``relay_pending``
is the read-only safety check of those readers: which of many streams on one node have entries
after given ids, in one call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from glide import (
    Batch,
    ClusterBatch,
    ExclusiveIdBound,
    GlideClusterClient,
    MaxId,
    RequestError,
)

from relaycore.ids import StreamId
from relaycore.keys import FIELD_HEADERS, FIELD_PAYLOAD, FIELD_PREVIOUS, idempotency_key, stream_key
from relaycore.valkey import ValkeyClient

__all__ = [
    "FUNCTION_LIBRARY",
    "LIBRARY_NAME",
    "PENDING_FUNCTION",
    "PUBLISH_FUNCTION",
    "PUBLISH_MANY_FUNCTION",
    "PUBLISH_PAYLOADS_FUNCTION",
    "StreamEntry",
    "StreamInfo",
    "StreamRetention",
    "add_publish",
    "add_publish_many",
    "add_publish_payloads",
    "ensure_functions",
    "is_missing_function",
    "parse_entries",
    "parse_publish_many",
    "publish_args",
    "read_after",
    "stream_info",
]

LIBRARY_NAME = "relay"
LIBRARY_VERSION = "1"
PUBLISH_FUNCTION = "relay_publish_v" + LIBRARY_VERSION
PUBLISH_MANY_FUNCTION = "relay_publish_many_v" + LIBRARY_VERSION
PUBLISH_PAYLOADS_FUNCTION = "relay_publish_payloads_v" + LIBRARY_VERSION
PENDING_FUNCTION = "relay_pending_v" + LIBRARY_VERSION

# KEYS[1] stream, KEYS[2] idempotency key (optional).
# ARGV: payload, headers JSON ('' when none), maxlen, max age ms (0 = off), idempotency TTL ms.
# Returns {id, duplicate(0|1)}.
FUNCTION_LIBRARY = f"""#!lua name={LIBRARY_NAME}

local function last_id(stream)
  local newest = server.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #newest > 0 then
    return newest[1][1]
  end
  if server.call('EXISTS', stream) == 1 then
    -- Every entry was trimmed: the stream still remembers the last id it generated.
    local info = server.call('XINFO', 'STREAM', stream)
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then
        return info[i + 1]
      end
    end
  end
  return '0-0'
end

-- Wakes the gateways that read the topic (cluster mode): SPUBLISH the newest id on the sharded
-- channel relay:{{<topic>}}:w, which carries the stream's hash tag and so lives in its slot. Only a
-- hint: readers also run a slow safety read, so a lost signal delays delivery, never loses it.
-- Without subscribers (standalone gateways never subscribe) it costs one dictionary lookup.
local function signal(stream, id)
  server.call('SPUBLISH', string.sub(stream, 1, -2) .. 'w', id)
end

-- Drops entries older than max_age ms (approximately, whole nodes); 0 turns it off.
local function trim_by_age(stream, max_age)
  if max_age > 0 then
    local now = server.call('TIME')
    local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - max_age
    if oldest > 0 then
      server.call('XTRIM', stream, 'MINID', '~', oldest)
    end
  end
end

local function publish(keys, args)
  local stream = keys[1]
  local idem = keys[2]
  if idem then
    local first = server.call('GET', idem)
    if first then
      return {{first, 1}}
    end
  end
  local previous = last_id(stream)
  local id
  if args[2] == '' then
    id = server.call('XADD', stream, 'MAXLEN', '~', args[3], '*',
                     'p', args[1], 'v', previous)
  else
    id = server.call('XADD', stream, 'MAXLEN', '~', args[3], '*',
                     'p', args[1], 'h', args[2], 'v', previous)
  end
  trim_by_age(stream, tonumber(args[4]))
  if idem then
    server.call('SET', idem, id, 'PX', args[5])
  end
  signal(stream, id)
  return {{id, 0}}
end

server.register_function('{PUBLISH_FUNCTION}', publish)

-- Several messages of ONE topic in one call, in order (a batch request's messages per topic).
-- KEYS[1] stream, KEYS[2..] the idempotency keys the messages use.
-- ARGV: maxlen, max age ms (0 = off), idempotency TTL ms, then per message three values:
-- payload, headers JSON ('' when none), index of its key in KEYS ('0' when it has none).
-- Returns {{id1, duplicate1, id2, duplicate2, ...}}.
local function publish_many(keys, args)
  local stream = keys[1]
  local previous = nil
  local wrote = false
  local out = {{}}
  for i = 4, #args, 3 do
    local key_index = tonumber(args[i + 2])
    local idem = nil
    local first = false
    if key_index > 0 then
      idem = keys[key_index]
      first = server.call('GET', idem)
    end
    if first then
      out[#out + 1] = first
      out[#out + 1] = 1
    else
      if previous == nil then
        previous = last_id(stream)
      end
      local id
      if args[i + 1] == '' then
        id = server.call('XADD', stream, 'MAXLEN', '~', args[1], '*',
                         'p', args[i], 'v', previous)
      else
        id = server.call('XADD', stream, 'MAXLEN', '~', args[1], '*',
                         'p', args[i], 'h', args[i + 1], 'v', previous)
      end
      if idem then
        server.call('SET', idem, id, 'PX', args[3])
      end
      previous = id
      wrote = true
      out[#out + 1] = id
      out[#out + 1] = 0
    end
  end
  if wrote then
    trim_by_age(stream, tonumber(args[2]))
    signal(stream, previous)
  end
  return out
end

server.register_function('{PUBLISH_MANY_FUNCTION}', publish_many)

-- relay_publish_many for messages with no headers and no idempotency key (the common case),
-- one argument per message instead of three: the client encodes a third of the arguments.
-- KEYS[1] stream. ARGV: maxlen, max age ms (0 = off), then the payloads.
-- Returns {{id1, id2, ...}}.
local function publish_payloads(keys, args)
  local stream = keys[1]
  local previous = last_id(stream)
  local out = {{}}
  for i = 3, #args do
    previous = server.call('XADD', stream, 'MAXLEN', '~', args[1], '*',
                           'p', args[i], 'v', previous)
    out[#out + 1] = previous
  end
  if #out > 0 then
    trim_by_age(stream, tonumber(args[2]))
    signal(stream, previous)
  end
  return out
end

server.register_function('{PUBLISH_PAYLOADS_FUNCTION}', publish_payloads)

-- A gateway's safety read on a cluster: which of the given streams (all on this node) hold
-- entries after the given ids: one call per node instead of one XREAD per hash slot.
-- No KEYS (the streams span slots); ARGV: stream1, id1, stream2, id2, ...
-- Returns per pair 1 (entries after the id), 0 (none) or -1 (not served here: moved, or the
-- node is not this slot's primary any more); the caller re-reads those through slot routing.
local function pending(keys, args)
  local out = {{}}
  for i = 1, #args, 2 do
    local reply = server.pcall('XREAD', 'COUNT', 1, 'STREAMS', args[i], args[i + 1])
    if type(reply) == 'table' and reply.err then
      out[#out + 1] = -1
    elseif reply then
      out[#out + 1] = 1
    else
      out[#out + 1] = 0
    end
  end
  return out
end

server.register_function{{function_name='{PENDING_FUNCTION}', callback=pending,
                          flags={{'no-writes', 'allow-cross-slot-keys'}}}}
"""


@dataclass(frozen=True)
class StreamRetention:
    """Retention applied on every write: an approximate MAXLEN and a max age."""

    maxlen: int
    max_age_ms: int
    idempotency_ttl_ms: int


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One message as stored: its id, payload and headers JSON, and the previous entry's id."""

    id: StreamId
    payload: bytes
    headers: bytes | None
    previous: StreamId


def publish_args(
    topic: str,
    payload: bytes,
    headers: bytes | None,
    key: str | None,
    retention: StreamRetention,
) -> tuple[list[str], list[bytes | str]]:
    """KEYS and ARGV for one ``relay_publish`` call."""
    keys = [stream_key(topic)]
    if key is not None:
        keys.append(idempotency_key(topic, key))
    args: list[bytes | str] = [
        payload,
        headers or b"",
        str(retention.maxlen),
        str(retention.max_age_ms),
        str(retention.idempotency_ttl_ms),
    ]
    return keys, args


def add_publish(
    batch: Batch | ClusterBatch,
    topic: str,
    payload: bytes,
    headers: bytes | None,
    key: str | None,
    retention: StreamRetention,
) -> None:
    """Queue one publish on a (non-atomic) batch; its result is ``[id, duplicate]``."""
    keys, args = publish_args(topic, payload, headers, key, retention)
    batch.fcall(PUBLISH_FUNCTION, keys=keys, arguments=args)


def add_publish_many(
    batch: Batch | ClusterBatch,
    topic: str,
    messages: Sequence[tuple[bytes, bytes | None, str | None]],
    retention: StreamRetention,
) -> None:
    """Queue ONE call that publishes ``messages`` (payload, headers, key) to ``topic`` in order.

    Same effect per message as :func:`add_publish` (idempotency, ``v`` chain, trims), but one
    command: the server looks up the previous id once and trims by age once. Its result is the
    flat list ``[id1, duplicate1, id2, duplicate2, ...]`` (see :func:`parse_publish_many`).
    """
    keys = [stream_key(topic)]
    key_slots: dict[str, int] = {}
    args: list[bytes | str] = [
        str(retention.maxlen),
        str(retention.max_age_ms),
        str(retention.idempotency_ttl_ms),
    ]
    for payload, headers, key in messages:
        slot = 0
        if key is not None:
            slot = key_slots.get(key, 0)
            if not slot:
                keys.append(idempotency_key(topic, key))
                slot = key_slots[key] = len(keys)
        args += [payload, headers or b"", str(slot)]
    batch.fcall(PUBLISH_MANY_FUNCTION, keys=keys, arguments=args)


def add_publish_payloads(
    batch: Batch | ClusterBatch,
    topic: str,
    payloads: Sequence[bytes],
    retention: StreamRetention,
) -> None:
    """Queue ONE call that publishes ``payloads`` (no headers, no idempotency keys) to ``topic``
    in order: :func:`add_publish_many` with one argument per message instead of three. Its
    result is the list of the new ids, in order."""
    args: list[bytes | str] = [str(retention.maxlen), str(retention.max_age_ms)]
    args.extend(payloads)
    batch.fcall(PUBLISH_PAYLOADS_FUNCTION, keys=[stream_key(topic)], arguments=args)


def parse_publish_many(result: Sequence[Any]) -> list[tuple[bytes, bool]]:
    """``[id1, duplicate1, ...]`` from ``relay_publish_many`` → ``[(id, duplicate), ...]``."""
    return [(_as_bytes(result[i]), result[i + 1] == 1) for i in range(0, len(result), 2)]


def is_missing_function(error: BaseException) -> bool:
    return isinstance(error, RequestError) and "function not found" in str(error).lower()


async def ensure_functions(client: ValkeyClient) -> None:
    """Load the relay function library (idempotent: REPLACE keeps one current copy).

    On a cluster the library goes to every primary, since any of them may own a topic's slot.
    """
    if isinstance(client, GlideClusterClient):
        from glide import AllPrimaries

        await client.function_load(FUNCTION_LIBRARY, replace=True, route=AllPrimaries())
    else:
        await client.function_load(FUNCTION_LIBRARY, replace=True)


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def parse_entries(
    raw: Mapping[bytes, Sequence[Sequence[bytes]]] | None,
) -> list[StreamEntry]:
    """GLIDE's XRANGE/XREAD shape ``{id: [[field, value], ...]}`` → entries in id order."""
    if not raw:
        return []
    entries = []
    for entry_id, pairs in raw.items():
        payload = b"null"
        headers = None
        previous = StreamId(0, 0)
        for pair in pairs:
            name, value = pair[0], _as_bytes(pair[1])
            if name == FIELD_PAYLOAD:
                payload = value
            elif name == FIELD_HEADERS:
                headers = value
            elif name == FIELD_PREVIOUS:
                previous = StreamId.parse(value)
        entries.append(StreamEntry(StreamId.parse(entry_id), payload, headers, previous))
    return entries


async def read_after(
    client: ValkeyClient, topic: str, after: StreamId, count: int
) -> list[StreamEntry]:
    """Up to ``count`` retained entries with id > ``after``, oldest first (XRANGE)."""
    raw = await client.xrange(stream_key(topic), ExclusiveIdBound(str(after)), MaxId(), count)
    return parse_entries(raw)


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What XINFO STREAM says about a topic; ``None`` fields when the stream is empty."""

    length: int
    first_id: StreamId | None
    last_id: StreamId | None
    last_generated_id: StreamId


async def stream_info(client: ValkeyClient, topic: str) -> StreamInfo | None:
    """The topic's stream summary, or ``None`` if the stream does not exist."""
    try:
        info = await client.xinfo_stream(stream_key(topic))
    except RequestError as error:
        if "no such key" in str(error).lower():
            return None
        raise
    first = info.get(b"first-entry")
    last = info.get(b"last-entry")
    return StreamInfo(
        length=int(info[b"length"]),
        first_id=StreamId.parse(first[0]) if first else None,
        last_id=StreamId.parse(last[0]) if last else None,
        last_generated_id=StreamId.parse(info[b"last-generated-id"]),
    )
