"""Query parameters shared by long-poll and SSE: validated exactly, never clamped (contract §7)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import parse_qsl

from starlette.requests import Request

from relay_gateway.state import GatewayState, authenticate
from relaycore.auth import ANONYMOUS, AuthError, Principal
from relaycore.http import ApiError
from relaycore.ids import Cursor, parse_cursor
from relaycore.keys import is_valid_topic
from relaycore.models import ErrorDetail

__all__ = [
    "check_access",
    "cursor_param",
    "draining",
    "integer_param",
    "invalid",
    "number_param",
    "parse_query",
    "topic_param",
    "unavailable",
]

# Plain decimals and exponent notation (what JSON number syntax allows), bounded in length.
_DECIMAL = re.compile(r"^-?[0-9]{1,6}(\.[0-9]{1,17})?([eE][-+]?[0-9]{1,3})?$")
_INTEGER = re.compile(r"^\d{1,9}$")


def invalid(name: str, message: str) -> ApiError:
    return ApiError(
        422, "validation_error", f"invalid query parameter {name}: {message}",
        [ErrorDetail(message, path=f"query.{name}")],
    )  # fmt: skip


def parse_query(raw: bytes) -> dict[str, str]:
    """A query string as ``{name: value}``, the last value of a repeated name winning.

    The same as Starlette's ``request.query_params`` (``parse_qsl`` of the latin-1 text, blank
    values kept), without building a multi-dict: without ``%`` or ``+`` nothing needs
    unquoting and splitting is all there is to do — the common case of a long-poll loop.
    """
    text = raw.decode("latin-1")
    if "%" in text or "+" in text:
        return dict(parse_qsl(text, keep_blank_values=True))
    query: dict[str, str] = {}
    for pair in text.split("&"):
        if pair:
            name, _, value = pair.partition("=")
            query[name] = value
    return query


def topic_param(query: Mapping[str, str]) -> str:
    topic = query.get("topic")
    if topic is None:
        raise invalid("topic", "required")
    if not is_valid_topic(topic):
        raise invalid("topic", "must match ^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")
    return topic


def cursor_param(name: str, value: str | None) -> Cursor | None:
    if value is None:
        return None
    try:
        return parse_cursor(value)
    except ValueError as error:
        raise invalid(name, str(error)) from None


def number_param(
    query: Mapping[str, str], name: str, default: float, low: float, high: float
) -> float:
    text = query.get(name)
    if text is None:
        return default
    if _DECIMAL.match(text) is None or not low <= float(text) <= high:
        raise invalid(name, f"expected a number of seconds from {low:g} to {high:g}")
    return float(text)


def integer_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    if _INTEGER.match(text) is None or not low <= int(text) <= high:
        raise invalid(name, f"expected a whole number from {low} to {high}")
    return int(text)


def check_access(state: GatewayState, request: Request, topic: str) -> Principal:
    """401 without valid credentials, 403 when the token does not permit the topic."""
    if not state.auth.enabled:
        # RELAY_AUTH=none: everyone may subscribe to everything; no credentials to look up.
        return ANONYMOUS
    try:
        principal = authenticate(state, request)
    except AuthError as error:
        raise ApiError(
            401, "unauthorized", str(error), headers={"WWW-Authenticate": "Bearer"}
        ) from None
    if not principal.may_subscribe(topic):
        raise ApiError(403, "forbidden", "not permitted to subscribe to this topic")
    return principal


def unavailable() -> ApiError:
    return ApiError(503, "unavailable", "storage unavailable", headers={"Retry-After": "1"})


def draining() -> ApiError:
    return ApiError(503, "draining", "the gateway is shutting down", headers={"Retry-After": "1"})
