"""The producers' API on a real Valkey: §4 behaviour and every §7 status code ingest can answer."""

from __future__ import annotations

import asyncio
import time

import httpx
import jwt
import msgspec
import pytest

from relay_devtools.testing import ValkeyProcess
from relay_ingest.app import create_app
from relaycore.ids import StreamId
from relaycore.keys import stream_key
from relaycore.models import decode_publish
from relaycore.settings import RateLimit, Settings
from relaycore.streams import read_after
from relaycore.valkey import ValkeyClient

from .conftest import MakeIngest

# Every case runs on the single node and on the three-primary cluster.
pytestmark = pytest.mark.backends

MESSAGES = "/api/v1/messages"
BATCH = "/api/v1/messages/batch"
SECRET = "test-secret-with-enough-bytes-for-hs256"


def token(publish: list[str], *, exp: float | None = None, secret: str = SECRET) -> str:
    claims = {"sub": "producer-1", "exp": exp or time.time() + 60, "topics": {"publish": publish}}
    return jwt.encode(claims, secret, algorithm="HS256")


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    error: dict[str, object] = body["error"]
    return error


# --- 201 / 200: publish, idempotency --------------------------------------------------------


async def test_publish_answers_201_and_stores_the_payload(
    ingest: httpx.AsyncClient, valkey_client: ValkeyClient, topic: str
) -> None:
    raw = (
        b'{"topic": "%s", "payload": {"msg": "Hello", "n": [1, 2.5, null]}, "headers": {"a": "b"}}'
    )
    response = await ingest.post(
        MESSAGES, content=raw % topic.encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "topic", "ts"}
    assert body["topic"] == topic
    assert body["ts"] == int(body["id"].split("-")[0])
    (entry,) = await read_after(valkey_client, topic, StreamId(0, 0), 10)
    assert str(entry.id) == body["id"]
    assert msgspec.json.decode(entry.payload) == {"msg": "Hello", "n": [1, 2.5, None]}
    assert entry.headers is not None
    assert msgspec.json.decode(entry.headers) == {"a": "b"}


async def test_ids_increase_per_topic(ingest: httpx.AsyncClient, topic: str) -> None:
    ids = []
    for n in range(5):
        response = await ingest.post(MESSAGES, json={"topic": topic, "payload": n})
        ids.append(StreamId.parse(response.json()["id"]))
    assert ids == sorted(ids)
    assert len(set(ids)) == 5


async def test_duplicate_key_answers_200_with_the_first_id(
    ingest: httpx.AsyncClient, valkey_client: ValkeyClient, topic: str
) -> None:
    first = await ingest.post(MESSAGES, json={"topic": topic, "payload": 1, "key": "order-7"})
    again = await ingest.post(MESSAGES, json={"topic": topic, "payload": 2, "key": "order-7"})
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json() == {**first.json(), "duplicate": True}
    assert await valkey_client.xlen(stream_key(topic)) == 1


async def test_same_key_on_another_topic_is_not_a_duplicate(
    ingest: httpx.AsyncClient, topic: str
) -> None:
    one = await ingest.post(MESSAGES, json={"topic": topic, "payload": 1, "key": "k"})
    two = await ingest.post(MESSAGES, json={"topic": topic + "-b", "payload": 1, "key": "k"})
    assert (one.status_code, two.status_code) == (201, 201)


async def test_idempotency_holds_across_two_ingest_replicas(
    make_ingest: MakeIngest, valkey_client: ValkeyClient, topic: str
) -> None:
    replica_a = await make_ingest()
    replica_b = await make_ingest()
    first = await replica_a.post(MESSAGES, json={"topic": topic, "payload": "a", "key": "once"})
    second = await replica_b.post(MESSAGES, json={"topic": topic, "payload": "b", "key": "once"})
    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["duplicate"] is True
    assert await valkey_client.xlen(stream_key(topic)) == 1


async def test_key_expires_after_the_idempotency_window(
    make_ingest: MakeIngest, topic: str
) -> None:
    ingest = await make_ingest(idempotency_window=0.05)
    first = await ingest.post(MESSAGES, json={"topic": topic, "payload": 1, "key": "k"})
    await asyncio.sleep(0.1)
    later = await ingest.post(MESSAGES, json={"topic": topic, "payload": 1, "key": "k"})
    assert later.status_code == 201
    assert later.json()["id"] != first.json()["id"]


async def test_retention_maxlen_is_applied_on_write(
    make_ingest: MakeIngest, valkey_client: ValkeyClient, topic: str
) -> None:
    ingest = await make_ingest(retention_maxlen=10)
    messages = [{"topic": topic, "payload": n} for n in range(1000)]
    response = await ingest.post(BATCH, json={"messages": messages})
    assert response.status_code == 201
    # MAXLEN ~ trims whole stream nodes (100 entries by default), never below the limit.
    assert 10 <= await valkey_client.xlen(stream_key(topic)) <= 200


# --- batch --------------------------------------------------------------------------------


async def test_batch_answers_in_request_order_and_keeps_per_topic_order(
    ingest: httpx.AsyncClient, valkey_client: ValkeyClient, topic: str
) -> None:
    other = topic + ".other"
    messages = [{"topic": (topic, other)[n % 2], "payload": {"n": n}} for n in range(40)]
    response = await ingest.post(BATCH, json={"messages": messages})
    assert response.status_code == 201
    results = response.json()["results"]
    assert [r["topic"] for r in results] == [m["topic"] for m in messages]
    for name in (topic, other):
        stored = await read_after(valkey_client, name, StreamId(0, 0), 100)
        posted = [m["payload"] for m in messages if m["topic"] == name]
        assert [msgspec.json.decode(e.payload) for e in stored] == posted
        assert [str(e.id) for e in stored] == [r["id"] for r in results if r["topic"] == name]


async def test_batch_marks_duplicates_inside_the_batch(
    ingest: httpx.AsyncClient, topic: str
) -> None:
    messages = [
        {"topic": topic, "payload": 1, "key": "a"},
        {"topic": topic, "payload": 2, "key": "a"},
        {"topic": topic, "payload": 3},
    ]
    response = await ingest.post(BATCH, json={"messages": messages})
    assert response.status_code == 201
    first, dup, third = response.json()["results"]
    assert "duplicate" not in first
    assert dup == {**first, "duplicate": True}
    assert third["id"] > first["id"]


async def test_batch_with_bad_items_lists_every_index_and_writes_nothing(
    ingest: httpx.AsyncClient, valkey_client: ValkeyClient, topic: str
) -> None:
    messages = [
        {"topic": topic, "payload": 0},
        {"topic": 5, "payload": 1},
        {"topic": topic},
        {"topic": topic, "payload": 3},
        {"topic": "bad topic", "payload": 4},
        {"topic": topic, "payload": 5, "headers": {"x": 1}},
        {"topic": topic, "payload": 6, "extra": True},
    ]
    response = await ingest.post(BATCH, json={"messages": messages})
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "validation_error"
    details = error["details"]
    assert isinstance(details, list)
    assert [d["index"] for d in details] == [1, 2, 4, 5, 6]
    assert [d["path"] for d in details] == [
        "$.messages[1].topic",
        "$.messages[2]",
        "$.messages[4].topic",
        "$.messages[5].headers[...]",
        "$.messages[6]",
    ]
    assert all(d["message"] for d in details)
    assert await valkey_client.exists([stream_key(topic)]) == 0


async def test_batch_size_limits(make_ingest: MakeIngest, topic: str) -> None:
    ingest = await make_ingest(max_batch_items=3)
    empty = await ingest.post(BATCH, json={"messages": []})
    over = await ingest.post(BATCH, json={"messages": [{"topic": topic, "payload": 1}] * 4})
    exact = await ingest.post(BATCH, json={"messages": [{"topic": topic, "payload": 1}] * 3})
    assert (empty.status_code, over.status_code, exact.status_code) == (422, 422, 201)
    assert error_of(over)["details"] == [
        {"message": "a batch holds 1 to 3 messages, not 4", "path": "$.messages"}
    ]


async def test_batch_envelope_errors(ingest: httpx.AsyncClient) -> None:
    not_a_list = await ingest.post(BATCH, json={"messages": {"topic": "a"}})
    missing = await ingest.post(BATCH, json={})
    unknown = await ingest.post(BATCH, json={"messages": [{"topic": "a", "payload": 1}], "x": 1})
    assert [r.status_code for r in (not_a_list, missing, unknown)] == [422, 422, 422]
    assert error_of(not_a_list)["details"] == [
        {"message": "Expected `array`, got `object`", "path": "$.messages"}
    ]
    assert error_of(unknown)["details"] == [
        {"message": "Object contains unknown field `x`", "path": "$"}
    ]


# --- 400, 413, 415, 422 ---------------------------------------------------------------------


async def test_malformed_json_is_400(ingest: httpx.AsyncClient) -> None:
    headers = {"content-type": "application/json"}
    for body in (b'{"topic": "a", "payload": ', b"\xff\xfe", b"{} trailing", b""):
        response = await ingest.post(MESSAGES, content=body, headers=headers)
        assert response.status_code == 400, body
        assert error_of(response)["code"] == "malformed_json"
    response = await ingest.post(BATCH, content=b"[", headers=headers)
    assert response.status_code == 400


async def test_schema_violations_are_422_with_field_paths(ingest: httpx.AsyncClient) -> None:
    cases = {
        '{"payload": 1}': "$",
        '{"topic": 1, "payload": 1}': "$.topic",
        '{"topic": "no spaces", "payload": 1}': "$.topic",
        '{"topic": "orders\\n", "payload": 1}': "$.topic",
        '{"topic": "%s", "payload": 1}' % ("a" * 201): "$.topic",
        '{"topic": "a", "payload": 1, "key": ""}': "$.key",
        '{"topic": "a", "payload": 1, "key": "%s"}' % ("k" * 129): "$.key",
        '{"topic": "a", "payload": 1, "headers": []}': "$.headers",
        '{"topic": "a", "payload": 1, "surprise": 1}': "$",
        "[1, 2]": "$",
    }
    for body, path in cases.items():
        response = await ingest.post(
            MESSAGES, content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, body
        error = error_of(response)
        assert error["code"] == "validation_error"
        assert isinstance(error["details"], list)
        assert error["details"][0]["path"] == path, body


async def test_deeply_nested_payload_is_refused_not_crashed(ingest: httpx.AsyncClient) -> None:
    body = b'{"topic": "a", "payload": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    response = await ingest.post(
        MESSAGES, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


async def test_wrong_or_missing_content_type_is_415(ingest: httpx.AsyncClient, topic: str) -> None:
    body = b'{"topic": "%s", "payload": 1}' % topic.encode()
    for headers in ({}, {"content-type": "text/plain"}, {"content-type": "application/jsonx"}):
        for path in (MESSAGES, BATCH):
            response = await ingest.post(path, content=body, headers=headers)
            assert response.status_code == 415, headers
            assert error_of(response)["code"] == "unsupported_media_type"
    ok = await ingest.post(
        MESSAGES, content=body, headers={"content-type": "Application/JSON; charset=utf-8"}
    )
    assert ok.status_code == 201


async def test_body_over_max_body_bytes_is_413(make_ingest: MakeIngest, topic: str) -> None:
    ingest = await make_ingest(max_body_bytes=1000, max_message_bytes=500)
    body = b'{"topic": "%s", "payload": "%s"}' % (topic.encode(), b"x" * 1000)
    response = await ingest.post(
        MESSAGES, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert error_of(response)["code"] == "too_large"


async def test_payload_over_max_message_bytes_is_413(make_ingest: MakeIngest, topic: str) -> None:
    ingest = await make_ingest(max_message_bytes=100)
    fits = await ingest.post(MESSAGES, json={"topic": topic, "payload": "x" * 98})
    too_big = await ingest.post(MESSAGES, json={"topic": topic, "payload": "x" * 99})
    assert fits.status_code == 201  # "xxx…" with its quotes is exactly 100 bytes
    assert too_big.status_code == 413
    assert error_of(too_big)["details"] == [
        {
            "message": "payload is 101 bytes, more than RELAY_MAX_MESSAGE_BYTES=100",
            "path": "$.payload",
        }
    ]
    batch = await ingest.post(
        BATCH,
        json={"messages": [{"topic": topic, "payload": 1}, {"topic": topic, "payload": "y" * 200}]},
    )
    assert batch.status_code == 413
    details = error_of(batch)["details"]
    assert isinstance(details, list)
    assert [d["index"] for d in details] == [1]


# --- 401, 403 ------------------------------------------------------------------------------


async def test_auth_missing_or_invalid_token_is_401(make_ingest: MakeIngest, topic: str) -> None:
    ingest = await make_ingest(auth="jwt", jwt_secret=SECRET)
    message = {"topic": topic, "payload": 1}
    cases = {
        "none": {},
        "not bearer": {"authorization": "Basic dXNlcjpwYXNz"},
        "garbage": {"authorization": "Bearer not-a-jwt"},
        "wrong key": {
            "authorization": "Bearer " + token(["*"], secret="another-secret-of-32-bytes!!!!!!")
        },
        "expired": {"authorization": "Bearer " + token(["*"], exp=time.time() - 10)},
    }
    for name, headers in cases.items():
        response = await ingest.post(MESSAGES, json=message, headers=headers)
        assert response.status_code == 401, name
        assert error_of(response)["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
        batch = await ingest.post(BATCH, json={"messages": [message]}, headers=headers)
        assert batch.status_code == 401, name


async def test_topic_outside_the_tokens_patterns_is_403(
    make_ingest: MakeIngest, valkey_client: ValkeyClient, topic: str
) -> None:
    ingest = await make_ingest(auth="jwt", jwt_secret=SECRET)
    headers = {"authorization": "Bearer " + token([f"{topic}.*", "exact"])}
    allowed = await ingest.post(
        MESSAGES, json={"topic": f"{topic}.a", "payload": 1}, headers=headers
    )
    denied = await ingest.post(MESSAGES, json={"topic": topic, "payload": 1}, headers=headers)
    assert allowed.status_code == 201
    assert denied.status_code == 403
    assert error_of(denied)["code"] == "forbidden"
    batch = await ingest.post(
        BATCH,
        json={"messages": [{"topic": f"{topic}.b", "payload": 1}, {"topic": topic, "payload": 2}]},
        headers=headers,
    )
    assert batch.status_code == 403
    details = error_of(batch)["details"]
    assert isinstance(details, list)
    assert [(d["index"], d["path"]) for d in details] == [(1, "$.messages[1].topic")]
    assert await valkey_client.exists([stream_key(f"{topic}.b")]) == 0


# --- 429 ------------------------------------------------------------------------------------


async def test_rate_limit_is_429_with_retry_after_and_shared_by_replicas(
    make_ingest: MakeIngest, topic: str
) -> None:
    secret_settings = {"auth": "jwt", "jwt_secret": SECRET, "rate_limit": RateLimit(3, 60.0)}
    replica_a = await make_ingest(**secret_settings)
    replica_b = await make_ingest(**secret_settings)
    claims = {"sub": f"rl-{topic}", "exp": time.time() + 60, "topics": {"publish": ["*"]}}
    headers = {"authorization": "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")}
    message = {"topic": topic, "payload": 1}
    codes = [
        (await replica.post(MESSAGES, json=message, headers=headers)).status_code
        for replica in (replica_a, replica_b, replica_a)
    ]
    assert codes == [201, 201, 201]
    limited = await replica_b.post(MESSAGES, json=message, headers=headers)
    assert limited.status_code == 429
    assert error_of(limited)["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    batch = await replica_a.post(BATCH, json={"messages": [message]}, headers=headers)
    assert batch.status_code == 429


# --- topics ---------------------------------------------------------------------------------


async def test_topic_info(ingest: httpx.AsyncClient, topic: str) -> None:
    first = (await ingest.post(MESSAGES, json={"topic": topic, "payload": 1})).json()
    last = (await ingest.post(MESSAGES, json={"topic": topic, "payload": 2})).json()
    response = await ingest.get(f"/api/v1/topics/{topic}")
    assert response.status_code == 200
    assert response.json() == {
        "topic": topic,
        "length": 2,
        "first_id": first["id"],
        "last_id": last["id"],
        "retention": {"maxlen": 100_000, "max_age_ms": 86_400_000},
    }


async def test_topic_info_404_and_422(ingest: httpx.AsyncClient, topic: str) -> None:
    missing = await ingest.get(f"/api/v1/topics/{topic}")
    invalid = await ingest.get("/api/v1/topics/-starts-with-dash")
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "not_found"
    assert invalid.status_code == 422


async def test_unknown_route_and_method_are_json_errors(ingest: httpx.AsyncClient) -> None:
    missing = await ingest.get("/api/v1/nothing-here")
    wrong_method = await ingest.get(MESSAGES)
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "not_found"
    assert wrong_method.status_code == 405
    assert error_of(wrong_method)["code"] == "method_not_allowed"
    assert wrong_method.headers["allow"] == "POST"


async def test_app_accepts_an_injected_client(valkey_client: ValkeyClient, topic: str) -> None:
    # The URL points nowhere: the injected client is the only way this app reaches Valkey.
    app = create_app(Settings(valkey_url="valkey://127.0.0.1:1"), valkey=valkey_client)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            response = await client.post(MESSAGES, json={"topic": topic, "payload": 1})
    assert response.status_code == 201
    # The app must not close a client it did not create.
    assert await valkey_client.ping() == b"PONG"


async def test_payload_is_stored_byte_for_byte(
    ingest: httpx.AsyncClient, valkey_client: ValkeyClient, topic: str
) -> None:
    payload = b'{ "b" : [1, 2.50, "\\u00e9\xc3\xa9"], "a":null }'
    body = b'{"topic": "%s", "payload": %s}' % (topic.encode(), payload)
    response = await ingest.post(
        MESSAGES, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 201
    (entry,) = await read_after(valkey_client, topic, StreamId(0, 0), 10)
    assert entry.payload == payload
    assert entry.headers is None  # no headers sent, none stored


async def test_rate_limit_applies_to_the_anonymous_principal(
    make_ingest: MakeIngest, valkey_process: ValkeyProcess, topic: str
) -> None:
    # With RELAY_AUTH=none every caller is one principal, "anonymous" (own Valkey: fresh window).
    ingest = await make_ingest(valkey_url=valkey_process.url, rate_limit=RateLimit(2, 60.0))
    codes = [
        (await ingest.post(MESSAGES, json={"topic": topic, "payload": n})).status_code
        for n in range(3)
    ]
    assert codes == [201, 201, 429]


async def test_topic_errors_keep_the_schemas_wording(ingest: httpx.AsyncClient) -> None:
    # The valid-message fast path checks topics itself; a refused one is still worded by the
    # schema (its pattern), single and in a batch, as if only the schema had looked.
    for bad in ("no spaces", "orders\n", "-leading-dash", "a" * 201):
        body = msgspec.json.encode({"topic": bad, "payload": 1})
        expected = "invalid topic name" if bad.endswith("\n") else None
        try:
            decode_publish(body)
        except msgspec.ValidationError as error:
            expected = str(error).partition(" - at ")[0]
        single = error_of(
            await ingest.post(MESSAGES, content=body, headers={"content-type": "application/json"})
        )
        batch = error_of(await ingest.post(BATCH, json={"messages": [msgspec.json.decode(body)]}))
        for error in (single, batch):
            details = error["details"]
            assert isinstance(details, list)
            assert details[0]["message"] == expected, bad
