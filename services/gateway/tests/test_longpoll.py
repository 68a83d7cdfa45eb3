"""Long-poll: parameters validated exactly, waiting, cursors, limits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest

from relay_devtools.testing import UvicornServer
from relay_devtools.testing.gateway import publish
from relaycore.valkey import ValkeyClient

# Every case runs on the single node and on the three-primary cluster.
pytestmark = pytest.mark.backends

Gateway = Callable[..., AbstractAsyncContextManager[UvicornServer]]


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"topic": "bad topic"},
        {"topic": "t", "since": "abc"},
        {"topic": "t", "since": "1-2-3"},
        {"topic": "t", "timeout": "56"},
        {"topic": "t", "timeout": "-1"},
        {"topic": "t", "timeout": "soon"},
        {"topic": "t", "timeout": "nan"},
        {"topic": "t", "limit": "0"},
        {"topic": "t", "limit": "1001"},
        {"topic": "t", "limit": "2.5"},
    ],
)
async def test_bad_parameters_get_422_never_clamped(
    gateway: Gateway, query: dict[str, str]
) -> None:
    async with gateway() as server, httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get("/api/v1/poll", params=query)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "validation_error"


async def test_no_since_waits_for_messages_after_the_request(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    await publish(valkey_client, topic, ["old"])
    async with gateway() as server, httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        waiting = asyncio.create_task(
            http.get("/api/v1/poll", params={"topic": topic, "timeout": "10"})
        )
        await asyncio.sleep(0.5)
        assert not waiting.done()
        ids = await publish(valkey_client, topic, ["new"])
        body = (await waiting).json()
        assert [m["id"] for m in body["messages"]] == ids
        assert body["messages"][0]["payload"] == "new"
        assert body["next"] == ids[0]
        assert body["recovered"] is True


async def test_timeout_answers_empty_with_the_cursor(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    ids = await publish(valkey_client, topic, [1])
    async with gateway() as server, httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        body = (
            await http.get(
                "/api/v1/poll", params={"topic": topic, "since": ids[0], "timeout": "0.3"}
            )
        ).json()
        assert body == {"topic": topic, "messages": [], "next": ids[0], "recovered": True}
        body = (await http.get("/api/v1/poll", params={"topic": topic, "timeout": "0.2"})).json()
        assert body["messages"] == []
        assert body["next"] == ids[0]


async def test_limit_pages_through_history(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    ids = await publish(valkey_client, topic, list(range(25)))
    async with gateway() as server, httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        cursor = "0-0"
        received: list[str] = []
        while len(received) < 25:
            body = (
                await http.get(
                    "/api/v1/poll", params={"topic": topic, "since": cursor, "limit": "10"}
                )
            ).json()
            assert len(body["messages"]) <= 10
            received += [m["id"] for m in body["messages"]]
            cursor = body["next"]
        assert received == ids


async def test_cors_on_poll(gateway: Gateway, topic: str) -> None:
    async with gateway() as server, httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get(
            "/api/v1/poll",
            params={"topic": topic, "timeout": "0"},
            headers={"Origin": "https://app.example"},
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "*"
        preflight = await http.options(
            "/api/v1/poll",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
        )
        assert preflight.status_code == 200


async def test_extreme_cursors_are_answered(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    ids = await publish(valkey_client, topic, [1])
    largest = "18446744073709551615-18446744073709551615"
    async with gateway() as server, httpx.AsyncClient(base_url=server.url) as http:
        for since, recovered in ((largest, False), ("18446744073709551615", True), ("0", True)):
            body = (
                await http.get(
                    "/api/v1/poll", params={"topic": topic, "since": since, "timeout": "0"}
                )
            ).json()
            assert body["recovered"] is recovered, since
            expected = ids if since != "18446744073709551615" else []
            assert [m["id"] for m in body["messages"]] == expected, since
        too_big = "18446744073709551616-0"
        response = await http.get("/api/v1/poll", params={"topic": topic, "since": too_big})
        assert response.status_code == 422


async def test_repeated_query_strings_answer_alike_and_stay_validated(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    ids = await publish(valkey_client, topic, [1, 2, 3])
    async with gateway() as server, httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for _ in range(2):  # the second time the validated query string is reused
            two = await http.get(f"/api/v1/poll?topic={topic}&since=0-0&limit=2&timeout=0")
            assert [m["id"] for m in two.json()["messages"]] == ids[:2]
            three = await http.get(f"/api/v1/poll?topic={topic}&since=0-0&limit=3&timeout=0")
            assert [m["id"] for m in three.json()["messages"]] == ids
            bad = await http.get(f"/api/v1/poll?topic={topic}&since=0-0&limit=1001")
            assert bad.status_code == 422


async def test_polls_behind_inside_the_hot_window_page_exactly(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    async with gateway() as server, httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        start = (await http.get("/api/v1/poll", params={"topic": topic, "timeout": "0.1"})).json()
        cursor = start["next"]
        ids: list[str] = []
        for n in range(3):
            # Each message read live (the topic stays active), so all three sit in the window.
            waiting = asyncio.create_task(
                http.get("/api/v1/poll", params={"topic": topic, "since": cursor, "timeout": "20"})
            )
            needle = 'relay_gateway_connections{transport="poll"} 1.0'
            while needle not in (await http.get("/metrics")).text:  # noqa: ASYNC110  # the gauge is the only signal the server gives
                await asyncio.sleep(0.02)
            ids += await publish(valkey_client, topic, [n])
            cursor = (await waiting).json()["next"]
        assert cursor == ids[-1]
        since = start["next"]
        pages = []
        for _ in range(2):
            body = (
                await http.get(
                    "/api/v1/poll", params={"topic": topic, "since": since, "limit": "2"}
                )
            ).json()
            assert body["recovered"] is True
            pages.append([m["id"] for m in body["messages"]])
            since = body["next"]
        assert pages == [ids[:2], ids[2:]]
        assert since == ids[-1]
        everything = await http.get("/api/v1/poll", params={"topic": topic, "since": start["next"]})
        assert [m["id"] for m in everything.json()["messages"]] == ids
        hits = [
            line for line in (await http.get("/metrics")).text.splitlines()
            if line.startswith("relay_hot_tier_hits_total ")
        ]  # fmt: skip
        assert float(hits[0].split()[1]) >= 3
