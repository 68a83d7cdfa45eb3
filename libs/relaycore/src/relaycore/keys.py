"""Valkey key names. Every key of one topic carries the hash tag ``{<topic>}``.

Topic names cannot contain ``{`` or ``}`` (contract §3), so the tag is exactly the topic and all
of a topic's keys land in one hash slot: the publish function touches several of them at once
and works unchanged on Valkey Cluster.

=============================  =========  ==================================================
key                            type       holds
=============================  =========  ==================================================
``relay:{<topic>}:s``          stream     the topic's messages (fields ``p``, ``h``, ``v``)
``relay:{<topic>}:i:<key>``    string     an idempotency key → the first message's id (TTL)
``relay:{<topic>}:w``          channel    sharded pub/sub: the newest id after each publish
``relay:rl:{<principal>}``     string     a principal's publish counter for the rate limit
=============================  =========  ==================================================

Stream entry fields: ``p`` the payload as JSON bytes, ``h`` the headers as a JSON object (only
when there are headers), ``v`` the id of the entry written before this one in the same stream
(``0-0`` for the first), which lets readers tell a trimmed gap from an untouched history exactly.
"""

from __future__ import annotations

import re

__all__ = [
    "KEY_PREFIX",
    "TOPIC_PATTERN",
    "idempotency_key",
    "is_valid_topic",
    "key_slot",
    "rate_limit_key",
    "signal_channel",
    "stream_key",
    "topic_from_stream_key",
]

KEY_PREFIX = "relay:"
TOPIC_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$"
_TOPIC = re.compile(TOPIC_PATTERN)

FIELD_PAYLOAD = b"p"
FIELD_HEADERS = b"h"
FIELD_PREVIOUS = b"v"


def is_valid_topic(topic: str) -> bool:
    # fullmatch: with match(), "$" also accepts a trailing newline ("orders\n").
    return _TOPIC.fullmatch(topic) is not None


def key_slot(topic: str) -> int:
    """The cluster hash slot of every key of ``topic`` (all carry the hash tag ``{topic}``)."""
    return _crc16(topic.encode()) % 16384


def _crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum Valkey Cluster uses for hash slots."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def signal_channel(topic: str) -> str:
    """The sharded pub/sub channel the publish functions signal (same slot as the stream)."""
    return f"relay:{{{topic}}}:w"


def stream_key(topic: str) -> str:
    return f"relay:{{{topic}}}:s"


def idempotency_key(topic: str, key: str) -> str:
    return f"relay:{{{topic}}}:i:{key}"


def rate_limit_key(principal: str) -> str:
    return f"relay:rl:{{{principal}}}"


def topic_from_stream_key(key: str | bytes) -> str:
    text = key.decode() if isinstance(key, bytes) else key
    return text[len("relay:{") : -len("}:s")]
