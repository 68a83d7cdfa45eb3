"""Hypothesis: no body, header or query string a client can send yields a 500.

One app (real lifespan, real Valkey) behind a real uvicorn server, run in a thread of its own so
the synchronous Hypothesis examples can call it; example counts are bounded so the module runs
in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.types import ASGIApp

from relay_devtools.testing import free_port
from relay_ingest.app import create_app
from relaycore.settings import RateLimit, Settings

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)


def json_values() -> st.SearchStrategy[Any]:
    # A fresh strategy per use: one recursive strategy drawn nested inside itself misbehaves.
    scalars = (
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    )
    return st.recursive(
        scalars | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )


def message_like(prefix: str) -> st.SearchStrategy[dict[str, Any]]:
    """Objects shaped almost like a message, so validation goes deep, not just the first check."""
    return st.fixed_dictionaries(
        {"topic": st.one_of(st.text(max_size=12).map(lambda t: prefix + t), json_values())},
        optional={
            "payload": json_values(),
            "key": st.one_of(st.text(max_size=140), json_values()),
            "headers": st.one_of(
                st.dictionaries(st.text(max_size=5), st.text(max_size=5)), json_values()
            ),
            "extra": json_values(),
        },
    )


# Framing headers are the client's to compute: h11 refuses to send a request whose
# content-length contradicts its body (raw framing is fuzzed by the raw-bytes cases instead).
_FRAMING = {"content-length", "transfer-encoding"}
header_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=16).filter(
    lambda name: name not in _FRAMING
)
# h11 (httpx) refuses to send values with surrounding whitespace; servers strip them anyway.
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
).map(str.strip)


@contextlib.contextmanager
def serve_in_thread(app: ASGIApp) -> Iterator[httpx.Client]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, http="httptools", log_level="warning")
    )
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "uvicorn stopped before it started"
            threading.Event().wait(0.01)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def assert_no_server_error(response: Any) -> None:
    """No 5xx, except the documented 503 (+ Retry-After) should Valkey stall on a loaded box."""
    acceptable = response.status_code < 500 or (
        response.status_code == 503 and "retry-after" in response.headers
    )
    assert acceptable, (response.status_code, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert set(body["error"]) == {"code", "message", "details"}


# Hypothesis scans every loaded module for constants, which touches GLIDE's deprecated
# compatibility modules (glide.exceptions, ...) and makes them warn.
@pytest.mark.filterwarnings("ignore:Importing from 'glide:DeprecationWarning")
def test_no_input_yields_a_500(valkey_url: str, topic: str) -> None:
    # A generous Valkey timeout: a loaded CI box must not turn examples into 503s.
    app = create_app(
        Settings(valkey_url=valkey_url, valkey_timeout=10.0, rate_limit=RateLimit(1_000_000, 1.0))
    )
    with serve_in_thread(app) as client:

        @FUZZ
        @given(body=json_values(), batch=st.booleans())
        def arbitrary_json(body: Any, batch: bool) -> None:
            path = "/api/v1/messages/batch" if batch else "/api/v1/messages"
            assert_no_server_error(client.post(path, json=body))

        @FUZZ
        @given(message=message_like(topic), wrap=st.booleans())
        def message_shapes(message: dict[str, Any], wrap: bool) -> None:
            if wrap:
                response = client.post("/api/v1/messages/batch", json={"messages": [message]})
            else:
                response = client.post("/api/v1/messages", json=message)
            assert_no_server_error(response)

        @FUZZ
        @given(
            body=st.binary(max_size=300),
            content_type=st.sampled_from(
                ["application/json", "text/plain", "", "application/json; charset=latin-1"]
            ),
        )
        def raw_bytes(body: bytes, content_type: str) -> None:
            headers = {"content-type": content_type} if content_type else {}
            assert_no_server_error(client.post("/api/v1/messages", content=body, headers=headers))

        @FUZZ
        @given(
            headers=st.dictionaries(header_names, header_values, max_size=5),
            method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]),
            path=st.sampled_from(
                [
                    "/api/v1/messages",
                    "/api/v1/messages/batch",
                    "/health",
                    "/ready",
                    "/api/v1/topics/x",
                    "/metrics",
                    "/nope",
                ]
            ),
        )
        def arbitrary_headers(headers: dict[str, str], method: str, path: str) -> None:
            body = json.dumps({"topic": topic, "payload": 1}).encode() if method == "POST" else None
            response = client.request(method, path, headers=headers, content=body)
            assert response.status_code != 500, (response.status_code, response.text)
            assert response.status_code < 500 or "retry-after" in response.headers

        @FUZZ
        @given(name=st.text(max_size=40), query=st.text(max_size=40))
        def topic_paths_and_queries(name: str, query: str) -> None:
            url = f"/api/v1/topics/{quote(name, safe='')}?{quote(query, safe='=&')}"
            if not name:
                url = "/api/v1/topics/?" + quote(query, safe="=&")
            response = client.get(url)
            assert response.status_code < 500 or "retry-after" in response.headers, response.text
            published = client.post(
                "/api/v1/messages?" + quote(query, safe="=&"), json={"topic": topic, "payload": 1}
            )
            assert published.status_code in (201, 503)  # a query string never breaks it

        arbitrary_json()
        message_shapes()
        raw_bytes()
        arbitrary_headers()
        topic_paths_and_queries()


SECRET = "fuzz-secret-of-at-least-thirty-two-bytes"


@pytest.mark.filterwarnings("ignore:Importing from 'glide:DeprecationWarning")
def test_no_token_or_claims_yield_a_500(valkey_url: str, topic: str) -> None:
    app = create_app(
        Settings(valkey_url=valkey_url, valkey_timeout=10.0, auth="jwt", jwt_secret=SECRET)
    )
    message = {"topic": topic, "payload": 1}
    with serve_in_thread(app) as client:

        @FUZZ
        @given(value=header_values)
        def arbitrary_authorization(value: str) -> None:
            for header in (value, "Bearer " + value):
                response = client.post(
                    "/api/v1/messages", json=message, headers={"authorization": header.strip()}
                )
                assert response.status_code == 401, response.text

        @FUZZ
        @given(
            claims=st.dictionaries(
                st.sampled_from(["sub", "topics", "aud", "iss", "nbf"]), json_values(), max_size=4
            ),
            topics=st.one_of(
                json_values(),
                st.fixed_dictionaries(
                    {}, optional={"publish": json_values(), "subscribe": json_values()}
                ),
            ),
            exp=st.one_of(
                st.integers(-(2**40), 2**40),
                st.floats(allow_nan=False, allow_infinity=False),
                st.text(max_size=5),
            ),
        )
        def signed_claims(claims: dict[str, Any], topics: Any, exp: Any) -> None:
            # Signed as raw JWS: pyjwt's encode() refuses some of the claims a forger could send.
            payload = json.dumps({**claims, "topics": topics, "exp": exp}).encode()
            token = jwt.api_jws.encode(payload, SECRET, algorithm="HS256")
            for path, body in (
                ("/api/v1/messages", message),
                ("/api/v1/messages/batch", {"messages": [message]}),
            ):
                response = client.post(
                    path, json=body, headers={"authorization": "Bearer " + token}
                )
                assert_no_server_error(response)
            assert_no_server_error(
                client.get(f"/api/v1/topics/{topic}", headers={"authorization": "Bearer " + token})
            )

        arbitrary_authorization()
        signed_claims()
