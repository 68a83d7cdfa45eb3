"""Reading a JSON request body within ``RELAY_MAX_BODY_BYTES`` (415 / 413 / 400 otherwise).

The size is checked twice: a declared ``Content-Length`` over the limit is refused before a byte
of the body is read, and a chunked body (no length) is counted while it streams in and refused
as soon as it passes the limit, so no request can make the service buffer more than the limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from starlette.requests import ClientDisconnect
from starlette.types import Receive

from relaycore.http import ApiError

__all__ = ["asgi_body", "read_json_body", "require_json"]


def require_json(headers: Mapping[str, str]) -> None:
    """415 unless the request says its body is ``application/json`` (parameters allowed)."""
    content_type = headers.get("content-type")
    if content_type is None:
        raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected Content-Type application/json, got {media_type or 'nothing'}",
        )


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large", f"request body exceeds RELAY_MAX_BODY_BYTES={limit} bytes")


async def asgi_body(receive: Receive) -> AsyncIterator[bytes]:
    """The body chunks of an ASGI HTTP request, as Starlette's ``Request.stream()`` gives them."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def read_json_body(
    headers: Mapping[str, str], chunks: AsyncIterator[bytes], limit: int
) -> bytes:
    """The whole body, at most ``limit`` bytes; raises 413/400 :class:`ApiError` otherwise.

    ``headers`` is case-insensitive (Starlette's ``Headers``); ``chunks`` yields the body.
    """
    require_json(headers)
    declared = headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ApiError(400, "bad_request", "Content-Length is not a number") from None
        if length > limit:
            raise _too_large(limit)
    parts: list[bytes] = []
    total = 0
    try:
        async for chunk in chunks:
            total += len(chunk)
            if total > limit:
                raise _too_large(limit)
            if chunk:
                parts.append(chunk)
    except ClientDisconnect:
        # Nobody is left to read the answer; 400 keeps it out of the 5xx numbers.
        raise ApiError(400, "client_disconnected", "the client went away mid-request") from None
    if not total:
        raise ApiError(400, "malformed_json", "the request body is empty")
    return parts[0] if len(parts) == 1 else b"".join(parts)
