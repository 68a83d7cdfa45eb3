"""Wire types: msgspec Structs for requests, envelopes and error bodies, and their codecs.

Encoders and decoders are built once here and reused; constraints live on the types
(``Annotated[..., Meta(...)]``) so the OpenAPI schema is generated from the same source.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

from relaycore.keys import TOPIC_PATTERN

__all__ = [
    "BatchRequest",
    "BatchResponse",
    "Envelope",
    "ErrorBody",
    "ErrorDetail",
    "ErrorInfo",
    "PublishRequest",
    "PublishResult",
    "RetentionInfo",
    "Topic",
    "TopicInfo",
    "decode_batch_envelope",
    "decode_publish",
    "encoder",
]

Topic = Annotated[
    str,
    Meta(
        pattern=TOPIC_PATTERN,
        max_length=200,
        description="Topic name: letters, digits and _ . : - (first a letter or digit), 1-200.",
        examples=["orders.eu"],
    ),
]
IdempotencyKey = Annotated[
    str,
    Meta(min_length=1, max_length=128, description="Publishing the same topic+key again within "
         "RELAY_IDEMPOTENCY_WINDOW returns the first message's id and writes nothing."),
]  # fmt: skip
MessageId = Annotated[
    str, Meta(description="Stream entry id <ms>-<seq>", examples=["1764460800000-0"])
]
Headers = Annotated[dict[str, str], Meta(description="String headers delivered with the message")]


class PublishRequest(Struct, forbid_unknown_fields=True):
    """One message to publish."""

    topic: Topic
    payload: Annotated[Raw, Meta(description="Any JSON value, delivered back unchanged")]
    key: IdempotencyKey | None = None
    headers: Headers = msgspec.field(default_factory=dict)


class BatchRequest(Struct, forbid_unknown_fields=True):
    """Up to RELAY_MAX_BATCH_ITEMS messages, any topics, written in order."""

    messages: Annotated[list[PublishRequest], Meta(min_length=1)]


class _BatchEnvelope(Struct, forbid_unknown_fields=True):
    # Items are kept raw so every one can be validated on its own and all bad indexes reported.
    messages: list[Raw]


class PublishResult(Struct, omit_defaults=True):
    id: MessageId
    topic: str
    ts: Annotated[int, Meta(description="Milliseconds since the epoch: the id's first part")]
    duplicate: bool = False


class BatchResponse(Struct):
    results: list[PublishResult]


class Envelope(Struct, omit_defaults=True):
    """A message as delivered to consumers."""

    topic: str
    id: MessageId
    ts: int
    payload: Raw
    headers: dict[str, str] | UnsetType = UNSET


class RetentionInfo(Struct):
    maxlen: int
    max_age_ms: int


class TopicInfo(Struct):
    topic: str
    length: int
    first_id: str | None
    last_id: str | None
    retention: RetentionInfo


class ErrorDetail(Struct, omit_defaults=True):
    message: str
    path: str | None = None
    index: int | None = None


class ErrorInfo(Struct):
    code: str
    message: str
    details: list[ErrorDetail] = msgspec.field(default_factory=list)


class ErrorBody(Struct):
    error: ErrorInfo


encoder = msgspec.json.Encoder()
_publish_decoder = msgspec.json.Decoder(PublishRequest)
_batch_decoder = msgspec.json.Decoder(_BatchEnvelope)
_headers_decoder = msgspec.json.Decoder(dict[str, str])


def decode_publish(data: bytes | Raw) -> PublishRequest:
    return _publish_decoder.decode(data)


def decode_batch_envelope(data: bytes) -> list[Raw]:
    return _batch_decoder.decode(data).messages


def decode_headers(data: bytes) -> dict[str, str]:
    return _headers_decoder.decode(data)


def error_body(code: str, message: str, details: list[ErrorDetail] | None = None) -> bytes:
    return encoder.encode(ErrorBody(ErrorInfo(code, message, details or [])))


def json_schema_components(types: list[Any]) -> tuple[tuple[dict[str, Any], ...], dict[str, Any]]:
    """JSON Schema for ``types`` with OpenAPI-style ``#/components/schemas`` references."""
    return msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
