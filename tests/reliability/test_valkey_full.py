"""Valkey at ``maxmemory`` with ``noeviction``: publishes get 503 + Retry-After at once, nothing
is evicted or half-written, and 201 comes back by itself once memory is freed."""

from __future__ import annotations

import time

import httpx
import pytest

from relay_devtools.testing import ValkeyProcess
from relaycore.ids import StreamId
from relaycore.streams import read_after
from relaycore.valkey import ValkeyDsn, create_client

from .conftest import Service

BALLAST = 4 * 1024 * 1024


def info_field(info: bytes, name: str) -> int:
    for line in info.decode().splitlines():
        if line.startswith(name + ":"):
            return int(line.split(":", 1)[1])
    raise AssertionError(f"{name} not in INFO")


@pytest.mark.timeout(90)
async def test_full_valkey_is_503_evicts_nothing_and_recovers(services: list[Service]) -> None:
    topic = "full"
    args = ["--maxmemory", "16mb", "--maxmemory-policy", "noeviction"]
    with ValkeyProcess(extra_args=args) as valkey:
        admin = await create_client(ValkeyDsn.from_dsn(valkey.url), name="admin", lazy=False)
        try:
            # Someone else's data, which noeviction must keep.
            await admin.set("ballast", b"b" * BALLAST)
            ingest = Service("relay_ingest", valkey.url)
            services.append(ingest)
            ingest.start()
            acked: list[str] = []
            refusals: list[httpx.Response] = []
            payload = "x" * 1000
            async with httpx.AsyncClient(base_url=ingest.url, timeout=10) as http:
                for _ in range(400):
                    batch = [{"topic": topic, "payload": payload} for _ in range(50)]
                    started = time.monotonic()
                    response = await http.post("/api/v1/messages/batch", json={"messages": batch})
                    elapsed = time.monotonic() - started
                    if response.status_code == 201:
                        acked += [r["id"] for r in response.json()["results"]]
                        continue
                    refusals.append(response)
                    assert elapsed < 1.0  # refused by Valkey at once, not a timeout
                    if len(refusals) == 3:
                        break
                # Batches no longer fit; single messages fill what is left, then are refused too.
                for _ in range(2000):
                    single = {"topic": topic, "payload": payload}
                    response = await http.post("/api/v1/messages", json=single)
                    if response.status_code != 201:
                        refusals.append(response)
                        break
                    acked.append(response.json()["id"])
                assert acked, "nothing fitted before maxmemory"
                for refused in refusals:
                    assert refused.status_code == 503
                    assert refused.json()["error"]["code"] == "unavailable"
                    assert int(refused.headers["retry-after"]) >= 1
                # A full Valkey is not an outage: ingest stays ready, reads still answer.
                assert (await http.get("/ready")).status_code == 200
                info = (await http.get(f"/api/v1/topics/{topic}")).json()
                assert info["length"] == len(acked)  # every acknowledged one, nothing more

                memory = await admin.info()
                assert info_field(memory, "evicted_keys") == 0
                assert await admin.strlen("ballast") == BALLAST
                stored = await read_after(admin, topic, StreamId(0, 0), 100_000)
                assert [str(e.id) for e in stored] == acked

                await admin.delete(["ballast"])  # memory freed
                again = await http.post("/api/v1/messages", json={"topic": topic, "payload": 2})
                assert again.status_code == 201
                batch = [{"topic": topic, "payload": n} for n in range(10)]
                more = await http.post("/api/v1/messages/batch", json={"messages": batch})
                assert more.status_code == 201
            stored = await read_after(admin, topic, StreamId(0, 0), 100_000)
            assert len(stored) == len(acked) + 11
            print(
                f"\nmaxmemory 16mb noeviction: {len(acked)} acknowledged, then "
                f"{len(refusals)} refusals (503 + Retry-After), 0 evicted, 201 after freeing"
            )
        finally:
            await admin.close()
