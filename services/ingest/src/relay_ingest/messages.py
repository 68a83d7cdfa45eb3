"""Request bodies → validated messages, or the exact §7 error (400, 413, 422) with field paths.

msgspec validates against the wire types in ``relaycore.models`` and names the failing field as
a JSON path (``$.topic``, ``$.headers[...]``). A batch is decoded in two steps, the envelope with
its items kept raw, then each item on its own, so one 422 lists EVERY bad index, each with its
path (``$.messages[3].topic``), and nothing is written unless all items are valid. A valid
batch (the common case) is decoded in one pass first; only a bad one takes the two-step path.

The first pass (single messages too) checks the topic with ``is_valid_topic`` once instead of
letting msgspec run the schema's regex as well (the regex was a third of a batch's decode
time); anything it does not accept is decoded again with the full schema, so errors are
reported exactly as the schema words them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, cast

import msgspec

from relay_ingest.publisher import OutgoingMessage
from relaycore.http import ApiError
from relaycore.keys import is_valid_topic
from relaycore.models import (
    ErrorDetail,
    PublishRequest,
    decode_batch_envelope,
    decode_publish,
)

__all__ = [
    "MessageLimits",
    "decode_batch",
    "decode_single",
    "encode_headers",
    "validation_error",
]

_PATH = re.compile(r"^(?P<message>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.DOTALL)
_headers_encoder = msgspec.json.Encoder()


class _UncheckedTopic(PublishRequest):
    """The publish schema but for the topic's pattern, which ``is_valid_topic`` checks."""

    topic: Annotated[str, msgspec.Meta(max_length=200)]


class _UncheckedBatch(msgspec.Struct, forbid_unknown_fields=True):
    messages: list[_UncheckedTopic]


_single_decoder = msgspec.json.Decoder(_UncheckedTopic)
_batch_decoder = msgspec.json.Decoder(_UncheckedBatch)


class MessageLimits:
    """The limits a message and a batch are checked against (from settings)."""

    __slots__ = ("max_batch_items", "max_message_bytes")

    def __init__(self, max_message_bytes: int, max_batch_items: int) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_batch_items = max_batch_items


def _detail(
    error: msgspec.ValidationError, prefix: str = "", index: int | None = None
) -> ErrorDetail:
    match = _PATH.match(str(error))
    assert match is not None  # the pattern matches any string
    path = match.group("path") or "$"
    return ErrorDetail(
        message=match.group("message"), path=prefix + path[1:] if prefix else path, index=index
    )


def validation_error(message: str, details: list[ErrorDetail]) -> ApiError:
    return ApiError(422, "validation_error", message, details)


def _malformed(error: msgspec.DecodeError) -> ApiError:
    return ApiError(400, "malformed_json", f"request body is not valid JSON: {error}")


def _schema_or_syntax(error: msgspec.ValidationError, body: bytes, message: str) -> ApiError:
    """422 for a schema violation, but 400 when the JSON is also malformed further on.

    msgspec reports the first problem it meets, so ``{} trailing`` fails validation (missing
    fields) before the trailing garbage; a second, untyped parse tells the two apart. It only
    runs on the error path.
    """
    try:
        msgspec.json.decode(body)
    except msgspec.DecodeError as syntax:
        return _malformed(syntax)
    except RecursionError:
        return _too_deep()
    return validation_error(message, [_detail(error)])


def _too_deep() -> ApiError:
    return ApiError(
        422,
        "validation_error",
        "JSON is nested too deeply",
        [ErrorDetail("JSON is nested too deeply", path="$")],
    )


def _check_item(item: PublishRequest, path: str, index: int | None) -> ErrorDetail | None:
    # The schema pattern accepts a trailing newline ("$" in Python regex); the topic must not.
    if not is_valid_topic(item.topic):
        return ErrorDetail("invalid topic name", path=f"{path}.topic", index=index)
    return None


def _too_large(size: int, limit: int, path: str, index: int | None) -> ErrorDetail:
    return ErrorDetail(
        f"payload is {size} bytes, more than RELAY_MAX_MESSAGE_BYTES={limit}",
        path=f"{path}.payload",
        index=index,
    )


def encode_headers(headers: Mapping[str, str]) -> bytes | None:
    return _headers_encoder.encode(headers) if headers else None


def _outgoing(item: PublishRequest) -> OutgoingMessage:
    return OutgoingMessage(item.topic, bytes(item.payload), encode_headers(item.headers), item.key)


def _valid_single(body: bytes) -> PublishRequest | None:
    """A publish request with nothing wrong, or ``None`` (then the full schema reports why)."""
    try:
        item = _single_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    return item if is_valid_topic(item.topic) else None


def decode_single(body: bytes, limits: MessageLimits) -> tuple[PublishRequest, OutgoingMessage]:
    """One publish request; raises the 400/413/422 :class:`ApiError` for a bad one."""
    valid = _valid_single(body)
    if valid is not None:
        message = _outgoing(valid)
        if len(message.payload) <= limits.max_message_bytes:
            return valid, message
    try:
        item = decode_publish(body)
    except msgspec.ValidationError as error:
        raise _schema_or_syntax(error, body, "the message does not match the schema") from None
    except msgspec.DecodeError as error:
        raise _malformed(error) from None
    except RecursionError:
        raise _too_deep() from None
    problem = _check_item(item, "$", None)
    if problem is not None:
        raise validation_error("the message does not match the schema", [problem])
    message = _outgoing(item)
    if len(message.payload) > limits.max_message_bytes:
        detail = _too_large(len(message.payload), limits.max_message_bytes, "$", None)
        raise ApiError(413, "too_large", detail.message, [detail])
    return item, message


def _valid_batch(body: bytes, limits: MessageLimits) -> list[PublishRequest] | None:
    """The items of a batch with nothing wrong, in one C-level pass; ``None`` on any problem."""
    try:
        # An _UncheckedTopic is a PublishRequest; the list is only read.
        items = cast(list[PublishRequest], _batch_decoder.decode(body).messages)
    except (msgspec.DecodeError, RecursionError):
        return None
    if not 1 <= len(items) <= limits.max_batch_items:
        return None
    if not all(is_valid_topic(i.topic) for i in items):
        return None
    return items


def decode_batch(
    body: bytes, limits: MessageLimits
) -> tuple[list[PublishRequest], list[OutgoingMessage]]:
    """A batch request, validated as a whole: every bad item is reported, none is written."""
    items = _valid_batch(body, limits)
    if items is None:
        items = _reported_batch(body, limits)
    messages = [_outgoing(item) for item in items]
    oversized = [
        _too_large(len(m.payload), limits.max_message_bytes, f"$.messages[{i}]", i)
        for i, m in enumerate(messages)
        if len(m.payload) > limits.max_message_bytes
    ]
    if oversized:
        bad = ", ".join(str(detail.index) for detail in oversized)
        raise ApiError(
            413, "too_large", f"payload too large at index {bad}; nothing was written", oversized
        )
    return items, messages


def _reported_batch(body: bytes, limits: MessageLimits) -> list[PublishRequest]:
    """The slow path: the envelope with raw items, then each item alone, so that the 422 names
    every bad index (msgspec stops at the first error of a single pass)."""
    try:
        raw_items = decode_batch_envelope(body)
    except msgspec.ValidationError as error:
        raise _schema_or_syntax(error, body, "the batch does not match the schema") from None
    except msgspec.DecodeError as error:
        raise _malformed(error) from None
    except RecursionError:
        raise _too_deep() from None
    count = len(raw_items)
    if not 1 <= count <= limits.max_batch_items:
        message = f"a batch holds 1 to {limits.max_batch_items} messages, not {count}"
        raise validation_error(message, [ErrorDetail(message, path="$.messages")])
    items: list[PublishRequest] = []
    invalid: list[ErrorDetail] = []
    for index, raw in enumerate(raw_items):
        path = f"$.messages[{index}]"
        try:
            item = decode_publish(raw)
        except msgspec.ValidationError as error:
            invalid.append(_detail(error, path, index))
            continue
        except RecursionError:
            invalid.append(ErrorDetail("JSON is nested too deeply", path=path, index=index))
            continue
        problem = _check_item(item, path, index)
        if problem is not None:
            invalid.append(problem)
            continue
        items.append(item)
    if invalid:
        bad = ", ".join(str(detail.index) for detail in invalid)
        raise validation_error(f"invalid messages at index {bad}; nothing was written", invalid)
    return items
