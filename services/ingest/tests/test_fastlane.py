"""The ASGI fast lane answers publishes exactly as the regular Starlette path does."""

from __future__ import annotations

from typing import Any

import httpx

from .conftest import MakeIngest

MESSAGES = "/api/v1/messages"
BATCH = "/api/v1/messages/batch"
ORIGIN = {"origin": "https://app.example"}  # any Origin sends a publish down the regular path


def cases(topic: str) -> list[tuple[str, dict[str, str], bytes]]:
    json_type = {"content-type": "application/json"}
    return [
        (MESSAGES, json_type, b'{"topic": "%s", "payload": 1, "key": "k"}' % topic.encode()),
        (MESSAGES, json_type, b'{"topic": "%s", "payload": 1, "key": "k"}' % topic.encode()),
        (MESSAGES, json_type, b'{"topic": "a", "payload": '),
        (MESSAGES, json_type, b'{"topic": 1, "payload": 1}'),
        (MESSAGES, {}, b'{"topic": "a", "payload": 1}'),
        (MESSAGES, json_type, b'{"topic": "a", "payload": "%s"}' % (b"x" * 300)),
        (MESSAGES, json_type, b"x" * 2000),
        (BATCH, json_type, b'{"messages": [{"topic": "%s", "payload": 1}]}' % topic.encode()),
        (BATCH, json_type, b'{"messages": [{"topic": 1}, {"payload": 2}]}'),
        (BATCH, json_type, b'{"messages": []}'),
    ]


def comparable(response: httpx.Response) -> tuple[int, Any, str | None]:
    body = response.json()
    if "id" in body:  # ids and times differ between the two runs; the shape must not
        body = {**body, "id": "<id>", "ts": "<ts>", "topic": "<topic>"}
    if "results" in body:
        body = {"results": len(body["results"])}
    return response.status_code, body, response.headers.get("content-type")


async def test_both_lanes_give_the_same_answers(make_ingest: MakeIngest, topic: str) -> None:
    ingest = await make_ingest(
        max_message_bytes=256, max_body_bytes=1024, allowed_origins=("https://app.example",)
    )
    fast = [
        comparable(await ingest.post(path, content=body, headers=headers))
        for path, headers, body in cases(topic + "-fast")
    ]
    regular = [
        comparable(await ingest.post(path, content=body, headers={**headers, **ORIGIN}))
        for path, headers, body in cases(topic + "-regular")
    ]
    assert fast == regular
    assert [status for status, _, _ in fast] == [201, 200, 400, 422, 415, 413, 413, 201, 422, 422]


async def test_fast_lane_answers_vary_by_origin_when_cors_is_on(
    make_ingest: MakeIngest, topic: str
) -> None:
    ingest = await make_ingest(allowed_origins=("https://app.example",))
    response = await ingest.post(MESSAGES, json={"topic": topic, "payload": 1})
    assert response.status_code == 201
    assert response.headers["vary"] == "Origin"
    assert "access-control-allow-origin" not in response.headers


async def test_fast_lane_keeps_retry_after_and_auth_headers(
    make_ingest: MakeIngest, topic: str
) -> None:
    ingest = await make_ingest(auth="jwt", jwt_secret="a-secret-of-at-least-32-bytes-long!")
    response = await ingest.post(MESSAGES, json={"topic": topic, "payload": 1})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_fast_lane_records_request_durations(ingest: httpx.AsyncClient, topic: str) -> None:
    await ingest.post(MESSAGES, json={"topic": topic, "payload": 1})
    await ingest.post(BATCH, json={"messages": []})
    text = (await ingest.get("/metrics")).text
    assert (
        'relay_http_request_duration_seconds_count{method="POST",route="/api/v1/messages",'
        'service="ingest",status="201"} 1.0'
    ) in text
    assert 'route="/api/v1/messages/batch",service="ingest",status="422"} 1.0' in text


async def test_other_methods_and_paths_pass_through(ingest: httpx.AsyncClient) -> None:
    assert (await ingest.get(MESSAGES)).status_code == 405
    assert (await ingest.put(BATCH, json={})).status_code == 405
    assert (await ingest.post(MESSAGES + "/other", json={})).status_code == 404


async def test_repeated_headers_read_the_same_in_both_lanes(
    make_ingest: MakeIngest, topic: str
) -> None:
    ingest = await make_ingest(allowed_origins=("https://app.example",))
    body = b'{"topic": "%s", "payload": 1}' % topic.encode()
    for first, second, status in (
        ("application/json", "text/plain", 201),
        ("text/plain", "application/json", 415),
    ):
        headers = [("content-type", first), ("content-type", second)]
        fast = await ingest.post(MESSAGES, content=body, headers=headers)
        regular = await ingest.post(
            MESSAGES, content=body, headers=[*headers, ("origin", "https://app.example")]
        )
        assert fast.status_code == regular.status_code == status
