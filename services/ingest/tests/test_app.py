"""The app as operators see it: outage behaviour, /health, /ready, /metrics, docs, CORS."""

from __future__ import annotations

import asyncio
import re
import time

import httpx

from relay_devtools.testing import ValkeyProcess, free_port
from relay_ingest.app import create_app
from relaycore.ids import StreamId
from relaycore.settings import Settings
from relaycore.streams import read_after
from relaycore.valkey import ValkeyClient, ValkeyDsn, create_client

from .conftest import MakeIngest

MESSAGES = "/api/v1/messages"


async def test_valkey_outage_is_503_with_retry_after_and_heals_by_itself(
    make_ingest: MakeIngest, valkey_process: ValkeyProcess, topic: str
) -> None:
    ingest = await make_ingest(valkey_url=valkey_process.url, valkey_timeout=0.5)
    before = await ingest.post(MESSAGES, json={"topic": topic, "payload": "before"})
    assert before.status_code == 201

    valkey_process.stop()
    for _ in range(5):
        response = await ingest.post(MESSAGES, json={"topic": topic, "payload": "during"})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "unavailable"
        assert int(response.headers["retry-after"]) >= 1
    batch = await ingest.post(
        MESSAGES + "/batch", json={"messages": [{"topic": topic, "payload": "during"}]}
    )
    assert batch.status_code == 503
    assert (await ingest.get(f"/api/v1/topics/{topic}")).status_code == 503
    assert (await ingest.get("/health")).status_code == 200
    not_ready = await ingest.get("/ready")
    assert not_ready.status_code == 503
    assert "retry-after" in not_ready.headers

    valkey_process.start()
    deadline = time.monotonic() + 20
    while True:
        response = await ingest.post(MESSAGES, json={"topic": topic, "payload": "after"})
        if response.status_code == 201:
            break
        assert response.status_code == 503
        assert time.monotonic() < deadline, "ingest did not recover"
        await asyncio.sleep(0.1)
    assert (await ingest.get("/ready")).status_code == 200
    # Nothing answered 503 was written. ("before" may be gone: SIGKILL can beat the AOF.)
    client = await create_client(ValkeyDsn.from_dsn(valkey_process.url), name="check")
    try:
        stored = await read_after(client, topic, StreamId(0, 0), 100)
    finally:
        await client.close()
    assert b'"during"' not in [entry.payload for entry in stored]
    assert str(stored[-1].id) == response.json()["id"]
    metrics = (await ingest.get("/metrics")).text
    refused = re.search(r'relay_ingest_messages_total\{result="unavailable"\} (\S+)', metrics)
    assert refused is not None
    assert float(refused.group(1)) >= 6  # plus any refused while it was coming back


async def test_starts_and_answers_health_while_valkey_is_unreachable(
    make_ingest: MakeIngest, topic: str
) -> None:
    ingest = await make_ingest(valkey_url=f"valkey://127.0.0.1:{free_port()}", valkey_timeout=0.3)
    assert (await ingest.get("/health")).status_code == 200
    assert (await ingest.get("/ready")).status_code == 503
    response = await ingest.post(MESSAGES, json={"topic": topic, "payload": 1})
    assert response.status_code == 503
    assert "retry-after" in response.headers


async def test_ready_when_valkey_answers(ingest: httpx.AsyncClient) -> None:
    response = await ingest.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_metrics_are_prometheus_text_with_relay_names(
    ingest: httpx.AsyncClient, topic: str
) -> None:
    await ingest.post(MESSAGES, json={"topic": topic, "payload": 1})
    await ingest.post(MESSAGES, json={"topic": topic, "payload": 1, "key": "k"})
    await ingest.post(MESSAGES, json={"topic": topic, "payload": 1, "key": "k"})
    await ingest.post(MESSAGES, json={"topic": 1, "payload": 1})
    response = await ingest.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'relay_ingest_messages_total{result="created"} 2.0' in text
    assert 'relay_ingest_messages_total{result="duplicate"} 1.0' in text
    assert 'relay_ingest_messages_total{result="validation_error"} 1.0' in text
    assert (
        'relay_http_request_duration_seconds_count{method="POST",route="/api/v1/messages",'
        'service="ingest",status="201"} 2.0'
    ) in text
    assert "relay_ingest_pipeline_commands_count" in text
    assert "relay_ingest_valkey_available 1.0" in text
    names = [line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"]
    assert all(name.startswith("relay_") for name in names)


async def test_raw_paths_do_not_become_metric_labels(ingest: httpx.AsyncClient) -> None:
    await ingest.get("/no/such/path/12345")
    await ingest.get("/api/v1/topics/some-topic-name")
    await ingest.request("INVENTED", "/health")
    text = (await ingest.get("/metrics")).text
    assert "12345" not in text
    assert "some-topic-name" not in text
    assert "INVENTED" not in text
    assert 'method="other"' in text
    assert 'route="/api/v1/topics/{topic}"' in text
    assert 'route="unmatched"' in text


async def test_openapi_is_generated_from_the_wire_types(ingest: httpx.AsyncClient) -> None:
    spec = (await ingest.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    schemas = spec["components"]["schemas"]
    assert {"PublishRequest", "BatchRequest", "PublishResult", "TopicInfo", "ErrorBody"} <= set(
        schemas
    )
    assert schemas["PublishRequest"]["required"] == ["topic", "payload"]
    assert schemas["PublishRequest"]["properties"]["key"]["anyOf"][0]["maxLength"] == 128
    for path in ("/api/v1/messages", "/api/v1/messages/batch", "/api/v1/topics/{topic}"):
        assert path in spec["paths"]
    assert set(spec["paths"]["/api/v1/messages"]["post"]["responses"]) >= {
        "200",
        "201",
        "400",
        "401",
        "403",
        "413",
        "415",
        "422",
        "429",
        "503",
    }


async def test_docs_page_points_at_the_openapi_document(ingest: httpx.AsyncClient) -> None:
    response = await ingest.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in response.text


async def test_cors_preflight_and_origin_header(make_ingest: MakeIngest, topic: str) -> None:
    ingest = await make_ingest(allowed_origins=("https://app.example",))
    preflight = await ingest.options(
        MESSAGES,
        headers={
            "origin": "https://app.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type,authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    published = await ingest.post(
        MESSAGES, json={"topic": topic, "payload": 1}, headers={"origin": "https://app.example"}
    )
    assert published.status_code == 201
    assert published.headers["access-control-allow-origin"] == "https://app.example"
    stranger = await ingest.options(
        MESSAGES,
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    assert "access-control-allow-origin" not in stranger.headers


async def test_cors_allows_any_origin_without_auth_or_list(
    ingest: httpx.AsyncClient, topic: str
) -> None:
    published = await ingest.post(
        MESSAGES, json={"topic": topic, "payload": 1}, headers={"origin": "http://localhost:3000"}
    )
    assert published.headers["access-control-allow-origin"] == "*"


async def test_valkey_out_of_memory_is_503_not_500(make_ingest: MakeIngest, topic: str) -> None:
    with ValkeyProcess(
        extra_args=["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]
    ) as full:
        ingest = await make_ingest(valkey_url=full.url, max_message_bytes=65536)
        payload = "x" * 60_000
        statuses = []
        for _ in range(100):
            response = await ingest.post(MESSAGES, json={"topic": topic, "payload": payload})
            statuses.append(response.status_code)
            if response.status_code == 503:
                break
        assert statuses[0] == 201
        assert statuses[-1] == 503
        assert set(statuses) == {201, 503}
        assert response.json()["error"]["code"] == "unavailable"
        assert response.headers["retry-after"] == "1"
        # A refused write is not an outage: the service stays ready.
        assert (await ingest.get("/ready")).status_code == 200
        info = (await ingest.get(f"/api/v1/topics/{topic}")).json()
        assert info["length"] == statuses.count(201)


async def test_retention_max_age_trims_old_messages_on_write(
    make_ingest: MakeIngest, valkey_client: ValkeyClient, topic: str
) -> None:
    ingest = await make_ingest(retention_max_age=0.05)
    old = [{"topic": topic, "payload": n} for n in range(500)]
    assert (await ingest.post(MESSAGES + "/batch", json={"messages": old})).status_code == 201
    await asyncio.sleep(0.1)
    fresh = await ingest.post(MESSAGES, json={"topic": topic, "payload": "fresh"})
    assert fresh.status_code == 201
    # MINID ~ drops whole stream nodes (100 entries) older than the max age.
    stored = await read_after(valkey_client, topic, StreamId(0, 0), 1000)
    assert len(stored) <= 100
    assert str(stored[-1].id) == fresh.json()["id"]


async def test_the_publish_function_is_loaded_at_start(
    make_ingest: MakeIngest, valkey_process: ValkeyProcess
) -> None:
    client = await create_client(ValkeyDsn.from_dsn(valkey_process.url), name="check")
    try:
        assert await client.function_list() == []
        ingest = await make_ingest(valkey_url=valkey_process.url)
        deadline = time.monotonic() + 10
        while not await client.function_list():
            assert time.monotonic() < deadline, "ingest did not load the function"
            await asyncio.sleep(0.02)
        assert (await ingest.get("/ready")).status_code == 200
    finally:
        await client.close()


async def test_shutdown_drains_queued_publishes_and_refuses_new_ones(
    valkey_url: str, valkey_client: ValkeyClient, topic: str
) -> None:
    app = create_app(Settings(valkey_url=valkey_url))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        async with app.router.lifespan_context(app):
            requests = [
                asyncio.create_task(client.post(MESSAGES, json={"topic": topic, "payload": n}))
                for n in range(50)
            ]
            await asyncio.sleep(0)  # let them start; the lifespan now shuts down under them
        responses = await asyncio.gather(*requests)
        late = await client.post(MESSAGES, json={"topic": topic, "payload": "late"})
    codes = [r.status_code for r in responses]
    assert set(codes) <= {201, 503}
    assert late.status_code == 503
    # Every 201 is in the stream, nothing else is.
    stored = await read_after(valkey_client, topic, StreamId(0, 0), 100)
    assert sorted(str(e.id) for e in stored) == sorted(
        r.json()["id"] for r in responses if r.status_code == 201
    )
