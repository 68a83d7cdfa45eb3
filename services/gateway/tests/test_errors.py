"""The error boundary on a real gateway: a bug on any path is a §7 500, logged once.

The long-poll handler is replaced by one that raises before the app is built, so both of its
paths fail: the fast path ``GatewayApp`` answers itself (no Origin header) and the Starlette
route behind the CORS middleware (browsers). Everything else is real.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
import structlog

from relay_devtools.testing.gateway import gateway_settings, run_gateway
from relay_gateway import app as gateway_app


class Injected(RuntimeError):
    pass


async def _raise(*args: Any) -> Any:
    raise Injected("injected failure")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X-Request-ID": "req-7"}, id="fast-path"),
        pytest.param({"X-Request-ID": "req-7", "Origin": "http://a.test"}, id="route"),
    ],
)
async def test_a_poll_bug_is_a_500_in_the_error_shape_logged_once(
    valkey_url: str,
    topic: str,
    headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(gateway_app, "poll_endpoint", _raise)
    with structlog.testing.capture_logs() as events, caplog.at_level(logging.ERROR):
        async with (
            run_gateway(gateway_settings(valkey_url)) as server,
            httpx.AsyncClient(base_url=server.url) as client,
        ):
            response = await client.get(
                "/api/v1/poll", params={"topic": topic, "timeout": 0}, headers=headers
            )
            # The connection stays usable: the next request is answered normally.
            assert (await client.get("/health")).status_code == 200
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-7"
    assert response.json() == {
        "error": {"code": "internal", "message": "internal error", "details": []}
    }
    logged = [e for e in events if e["event"] == "unhandled_error"]
    assert len(logged) == 1, events
    assert logged[0]["request_id"] == "req-7"
    assert isinstance(logged[0]["exc_info"], Injected)
    assert not [r for r in caplog.records if "Exception in ASGI" in r.getMessage()]
