"""Typed errors of the SDK: everything it raises is a :class:`RelayError`.

Errors that retrying cannot fix (bad credentials, a forbidden or invalid topic, a malformed
request) are raised at once. Transient ones (503, 429, connection failures) are retried by
``publish`` and ``subscribe``; they surface as :class:`UnavailableError`,
:class:`RateLimitedError` or :class:`RelayConnectionError` only once the retry budget is spent.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "AuthenticationError",
    "InvalidRequestError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProtocolError",
    "RateLimitedError",
    "RelayConnectionError",
    "RelayError",
    "UnavailableError",
    "error_from_event",
    "error_from_response",
]


class RelayError(Exception):
    """Base of every SDK error: ``status`` (HTTP status, if any), ``code`` (the relay's slug)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        details: list[Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details = details or []

    def __str__(self) -> str:
        prefix = f"{self.status} " if self.status is not None else ""
        code = f"{self.code}: " if self.code else ""
        return f"{prefix}{code}{self.message}"


class AuthenticationError(RelayError):
    """401 / close 4401: no token, or an invalid or expired one."""


class PermissionDeniedError(RelayError):
    """403 / close 4403: the token does not permit this topic (or the origin is not allowed)."""


class NotFoundError(RelayError):
    """404: the topic never existed (topic info) or the path is wrong."""


class InvalidRequestError(RelayError):
    """400 / 415 / 422: a bad topic name, cursor, payload or parameter; ``details`` say which."""


class PayloadTooLargeError(InvalidRequestError):
    """413: the payload or the request body is over the relay's limit."""


class RateLimitedError(RelayError):
    """429 after every retry: over the principal's publish rate."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class UnavailableError(RelayError):
    """503 after every retry: the relay's storage (Valkey) is unavailable or it is draining."""


class RelayConnectionError(RelayError):
    """The service could not be reached (refused, reset, timed out) after every retry."""


class ProtocolError(RelayError):
    """The service answered something the SDK does not understand (or closed 4400/1009)."""


_BY_STATUS: dict[int, type[RelayError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    415: InvalidRequestError,
    422: InvalidRequestError,
    429: RateLimitedError,
    503: UnavailableError,
}

_BY_CODE: dict[str, type[RelayError]] = {
    "unauthorized": AuthenticationError,
    "token_expired": AuthenticationError,
    "forbidden": PermissionDeniedError,
    "invalid_topic": InvalidRequestError,
    "invalid_cursor": InvalidRequestError,
    "bad_request": InvalidRequestError,
    "bad_frame": ProtocolError,
    "unknown_op": ProtocolError,
    "protocol_violation": ProtocolError,
    "too_many_subscriptions": InvalidRequestError,
    "unavailable": UnavailableError,
}


class _ErrorDetail(msgspec.Struct):
    code: str = ""
    message: str = ""
    details: list[Any] = msgspec.field(default_factory=list)


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail


_error_decoder = msgspec.json.Decoder(_ErrorBody)


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds (only the delta-seconds form; HTTP dates are ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def error_from_response(status: int, body: bytes, headers: dict[str, str]) -> RelayError:
    """The typed error for an HTTP error answer with the relay's ``{"error": {...}}`` body."""
    try:
        detail = _error_decoder.decode(body).error
    except msgspec.DecodeError:  # ValidationError is a DecodeError too
        detail = _ErrorDetail(code="", message=body[:200].decode(errors="replace") or "no body")
    cls = _BY_STATUS.get(status, ProtocolError if status < 500 else UnavailableError)
    kwargs: dict[str, Any] = {"status": status, "code": detail.code or None,
                              "details": detail.details}  # fmt: skip
    if cls is RateLimitedError:
        kwargs["retry_after"] = retry_after_seconds(headers.get("retry-after"))
    return cls(detail.message or f"HTTP {status}", **kwargs)


def error_from_event(code: str, message: str) -> RelayError:
    """The typed error for a WebSocket ``error`` event."""
    return _BY_CODE.get(code, ProtocolError)(message, code=code)
