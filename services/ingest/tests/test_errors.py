"""The error boundary on a real uvicorn server: a bug on any path is a §7 500, logged once.

Failures are injected by replacing one handler the path calls with one that raises; everything
else (uvicorn, the app, Valkey) is real. "Logged once" means one ``unhandled_error`` event with
the request id and no second traceback from uvicorn ("Exception in ASGI application").
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest
import structlog

from relay_devtools.testing import UvicornServer
from relay_ingest import fastlane, routes
from relay_ingest.app import create_app
from relaycore.settings import Settings
from relaycore.uvicorn_ext.coalescing import CoalescingHttpToolsProtocol


class Injected(RuntimeError):
    pass


async def _raise(*args: Any) -> Any:
    raise Injected("injected failure")


def _check(response: httpx.Response, rid: str, events: list[Mapping[str, Any]]) -> None:
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"] == rid
    assert response.json() == {
        "error": {"code": "internal", "message": "internal error", "details": []}
    }
    logged = [e for e in events if e["event"] == "unhandled_error"]
    assert len(logged) == 1, events
    assert logged[0]["request_id"] == rid
    assert isinstance(logged[0]["exc_info"], Injected)


@pytest.fixture
async def server(valkey_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    # A single publish fails on both of its paths: the fast lane (no Origin header) and the
    # Starlette route behind the CORS and metrics middleware (browsers, with an Origin).
    monkeypatch.setitem(fastlane._ROUTES, "/api/v1/messages", _raise)  # type: ignore[index]
    monkeypatch.setattr(routes, "publish_single", _raise)
    app = create_app(Settings(valkey_url=valkey_url))
    async with UvicornServer(app, http=CoalescingHttpToolsProtocol).running() as running:
        yield running.url


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        pytest.param("fast lane", {"X-Request-ID": "req-42"}, id="fast-lane"),
        pytest.param("route", {"X-Request-ID": "req-42", "Origin": "http://a.test"}, id="route"),
    ],
)
async def test_a_bug_is_a_500_in_the_error_shape_logged_once(
    server: str, topic: str, path: str, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with structlog.testing.capture_logs() as events, caplog.at_level(logging.ERROR):
        async with httpx.AsyncClient(base_url=server) as client:
            response = await client.post(
                "/api/v1/messages", json={"topic": topic, "payload": 1}, headers=headers
            )
            # The connection stays usable: the next request is answered normally.
            assert (await client.get("/health")).status_code == 200
    _check(response, "req-42", events)
    assert not [r for r in caplog.records if "Exception in ASGI" in r.getMessage()]


async def test_without_a_sane_request_id_one_is_generated(server: str, topic: str) -> None:
    with structlog.testing.capture_logs() as events:
        async with httpx.AsyncClient(base_url=server) as client:
            response = await client.post(
                "/api/v1/messages",
                json={"topic": topic, "payload": 1},
                headers={"X-Request-ID": "no spaces\tor tabs allowed"},
            )
    rid = response.headers["x-request-id"]
    assert len(rid) == 32
    _check(response, rid, events)
