"""HTTP pieces both services share: error bodies, CORS, OpenAPI from msgspec types, /docs.

Every error anywhere has the body ``{"error": {"code", "message", "details"}}`` (contract §7).
Handlers raise :class:`ApiError`; :func:`exception_handlers` turns it, and anything unexpected
(with :mod:`relaycore.errors`), into that body, so no client input can produce a bare 500 page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from relaycore.errors import internal_error_response
from relaycore.models import ErrorDetail, error_body, json_schema_components
from relaycore.settings import Settings

__all__ = [
    "ApiError",
    "JSONBytesResponse",
    "cors_middleware",
    "docs_page",
    "error_response",
    "exception_handlers",
    "openapi_document",
    "origin_allowed",
]

JSON = "application/json"

_STATUS_CODES = {
    400: "malformed_json",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answer: status, slug, human message, optional details and headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[ErrorDetail] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = dict(headers or {})


class JSONBytesResponse(Response):
    """A response whose body is already-encoded JSON (msgspec), sent as is."""

    media_type = JSON


def error_response(error: ApiError) -> Response:
    return JSONBytesResponse(
        error_body(error.code, error.message, error.details),
        status_code=error.status,
        headers=error.headers,
    )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _STATUS_CODES.get(exc.status_code, "error")
    return error_response(ApiError(exc.status_code, code, str(exc.detail), headers=exc.headers))


def exception_handlers() -> dict[Any, Any]:
    # ``Exception`` goes to Starlette's outermost ServerErrorMiddleware, which answers with it and
    # re-raises to the service's error boundary (relaycore.errors), where it is logged.
    return {
        ApiError: _api_error,
        HTTPException: _http_exception,
        Exception: internal_error_response,
    }


def cors_middleware(settings: Settings, methods: Sequence[str]) -> list[Middleware]:
    """CORS from ``RELAY_ALLOWED_ORIGINS``; unset means any origin while ``RELAY_AUTH=none``."""
    origins = list(settings.allowed_origins)
    if not origins:
        if settings.auth != "none":
            return []
        origins = ["*"]
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=list(methods),
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            expose_headers=["Retry-After"],
            max_age=600,
        )
    ]


def origin_allowed(settings: Settings, origin: str | None) -> bool:
    """Whether a WebSocket/SSE handshake from ``origin`` may proceed."""
    if not settings.allowed_origins:
        return True
    if origin is None:
        # Non-browser clients send no Origin; the list guards browsers against cross-site use.
        return True
    return origin in settings.allowed_origins or "*" in settings.allowed_origins


def openapi_document(
    *,
    title: str,
    version: str,
    description: str,
    paths: dict[str, Any],
    types: list[Any],
) -> dict[str, Any]:
    """An OpenAPI 3.1 document whose schemas come from msgspec types, not written by hand.

    ``paths`` may reference ``#/components/schemas/<TypeName>`` for any type in ``types``.
    """
    _, components = json_schema_components(types)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {"schemas": components},
    }


def docs_page(title: str, openapi_url: str = "/openapi.json") -> HTMLResponse:
    """Swagger UI for the service's OpenAPI document."""
    html = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head><body><div id="swagger-ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({{url: "{openapi_url}", dom_id: "#swagger-ui"}});</script>
</body></html>"""
    return HTMLResponse(html)
