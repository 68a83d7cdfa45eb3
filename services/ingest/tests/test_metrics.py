"""Ingest's Valkey health gauges and error counter follow a real outage (contract §9)."""

from __future__ import annotations

import asyncio

import httpx

from relay_devtools.testing import ValkeyProcess

from .conftest import MakeIngest


async def scrape(ingest: httpx.AsyncClient) -> dict[str, float]:
    text = (await ingest.get("/metrics")).text
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


async def test_valkey_gauges_and_errors_move_with_an_outage(
    make_ingest: MakeIngest, valkey_process: ValkeyProcess, topic: str
) -> None:
    ingest = await make_ingest(valkey_url=valkey_process.url, valkey_timeout=0.5)
    body = {"topic": topic, "payload": 1}
    assert (await ingest.post("/api/v1/messages", json=body)).status_code == 201
    healthy = await scrape(ingest)
    assert healthy['relay_valkey_up{service="ingest"}'] == 1
    assert healthy['relay_valkey_persistence_ok{service="ingest"}'] == 1
    assert healthy['relay_ready{service="ingest"}'] == 1
    assert healthy['relay_ingest_messages_total{result="created"}'] == 1
    valkey_process.stop()
    assert (await ingest.post("/api/v1/messages", json=body)).status_code == 503
    down = await scrape(ingest)
    assert down['relay_valkey_up{service="ingest"}'] == 0
    assert down['relay_ready{service="ingest"}'] == 0
    assert down['relay_ingest_messages_total{result="unavailable"}'] >= 1
    errors = {k: v for k, v in down.items() if k.startswith("relay_valkey_errors_total")}
    assert errors['relay_valkey_errors_total{operation="info",service="ingest"}'] >= 1
    assert sum(errors.values()) >= 2  # the refused publish's own operation too
    valkey_process.start()
    for _ in range(100):
        if (await scrape(ingest))['relay_valkey_up{service="ingest"}'] == 1:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("relay_valkey_up never returned to 1")
