"""The ingest OpenAPI document: schemas generated from the msgspec wire types, paths listed here."""

from __future__ import annotations

import functools
from typing import Any

from relaycore.http import openapi_document
from relaycore.keys import TOPIC_PATTERN
from relaycore.models import (
    BatchRequest,
    BatchResponse,
    ErrorBody,
    PublishRequest,
    PublishResult,
    TopicInfo,
    encoder,
)

__all__ = ["openapi_json", "openapi_spec"]

_REF = "#/components/schemas/"


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF + name}}}


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": _json("ErrorBody")}
    if retry_after:
        response["headers"] = {
            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
        }
    return response


_PUBLISH_ERRORS = {
    "400": _error("Malformed JSON"),
    "401": _error("Missing or invalid credentials (RELAY_AUTH=jwt)"),
    "403": _error("The token's publish patterns do not cover the topic"),
    "413": _error("Body over RELAY_MAX_BODY_BYTES or payload over RELAY_MAX_MESSAGE_BYTES"),
    "415": _error("Content-Type is not application/json"),
    "422": _error("Schema violation; details list each field path (and batch index)"),
    "429": _error("Over RELAY_RATE_LIMIT for this principal", retry_after=True),
    "503": _error("Valkey unavailable; nothing acknowledged", retry_after=True),
}
# A bearer token with RELAY_AUTH=jwt; none at all with RELAY_AUTH=none (the empty alternative).
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}, {}]


def openapi_spec() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/api/v1/messages": {
            "post": {
                "summary": "Publish one message",
                "operationId": "publishMessage",
                "security": _BEARER,
                "requestBody": {"required": True, "content": _json("PublishRequest")},
                "responses": {
                    "201": {"description": "Written", "content": _json("PublishResult")},
                    "200": {
                        "description": "Duplicate key within RELAY_IDEMPOTENCY_WINDOW: the "
                        "first message's id, duplicate=true; nothing written",
                        "content": _json("PublishResult"),
                    },
                    **_PUBLISH_ERRORS,
                },
            }
        },
        "/api/v1/messages/batch": {
            "post": {
                "summary": "Publish 1..RELAY_MAX_BATCH_ITEMS messages in one round trip",
                "operationId": "publishBatch",
                "security": _BEARER,
                "requestBody": {"required": True, "content": _json("BatchRequest")},
                "responses": {
                    "201": {
                        "description": "All written, results in request order",
                        "content": _json("BatchResponse"),
                    },
                    **_PUBLISH_ERRORS,
                },
            }
        },
        "/api/v1/topics/{topic}": {
            "get": {
                "summary": "A topic's length, first/last id and retention",
                "operationId": "topicInfo",
                "security": _BEARER,
                "parameters": [
                    {
                        "name": "topic",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": TOPIC_PATTERN},
                    }
                ],
                "responses": {
                    "200": {"description": "The topic", "content": _json("TopicInfo")},
                    "401": _error("Missing or invalid credentials"),
                    "403": _error("Not permitted"),
                    "404": _error("The topic never existed"),
                    "422": _error("Invalid topic name"),
                    "503": _error("Valkey unavailable", retry_after=True),
                },
            }
        },
        "/health": {
            "get": {"summary": "Process alive", "responses": {"200": {"description": "ok"}}}
        },
        "/ready": {
            "get": {
                "summary": "Valkey reachable and not loading",
                "responses": {"200": {"description": "ready"}, "503": _error("not ready", True)},
            }
        },
        "/metrics": {
            "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "ok"}}}
        },
    }
    spec = openapi_document(
        title="Pulsar Relay ingest",
        version="1",
        description="Producers publish JSON messages to topics (Valkey Streams).",
        paths=paths,
        types=[PublishRequest, BatchRequest, PublishResult, BatchResponse, TopicInfo, ErrorBody],
    )
    spec["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    }
    return spec


@functools.cache
def openapi_json() -> bytes:
    return encoder.encode(openapi_spec())
