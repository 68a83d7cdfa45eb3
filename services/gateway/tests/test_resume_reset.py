"""A cursor from a stream that went back (Valkey restored from an older backup) is a reset.

The restored stream holds A1..A3; a consumer resumes with B3, an id published after the
backup and lost with it; C1 was published after the restore (its ``v`` is A3). Nothing after
B3 looks missing by id alone, but C1 does not follow B3: every transport must say so (a
``reset``, ``recovered: false``) instead of silently jumping. A timestamp cursor between A3 and
C1 names an instant, not a lost id, and stays recovered.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx

from relay_devtools.testing import UvicornServer
from relay_devtools.testing.gateway import publish, ws_client
from relaycore.ids import StreamId
from relaycore.keys import stream_key
from relaycore.valkey import ValkeyClient

Gateway = Callable[..., AbstractAsyncContextManager[UvicornServer]]


async def restored_stream(client: ValkeyClient, topic: str) -> tuple[list[str], str, str]:
    """A1..A3 as a backup holds them, a lost id B3 after them, and C1 published after."""
    base = 1_700_000_000_000
    previous = "0-0"
    restored = []
    for n in range(3):
        entry = f"{base + n}-0"
        fields = ["p", str(n), "v", previous]
        await client.custom_command(["XADD", stream_key(topic), entry, *fields])
        restored.append(entry)
        previous = entry
    lost = f"{base + 10}-0"
    (after,) = await publish(client, topic, [99])
    return restored, lost, after


async def test_poll_and_subscribe_with_a_lost_id_are_a_reset(
    gateway: Gateway, valkey_client: ValkeyClient, topic: str
) -> None:
    restored, lost, after = await restored_stream(valkey_client, topic)
    async with gateway() as server, httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        answer = (
            await http.get("/api/v1/poll", params={"topic": topic, "since": lost, "timeout": "1"})
        ).json()
        assert answer["recovered"] is False
        # Delivery starts again from the oldest retained message.
        assert [m["id"] for m in answer["messages"]] == [*restored, after]

        async with ws_client(server) as ws:
            subscribed = await ws.subscribe(topic, since=lost)
            assert subscribed["recovered"] is False
            assert [m["id"] for m in await ws.messages(4)] == [*restored, after]

        # Asked a second time: the hot window now holds the topic; same answer.
        again = (
            await http.get("/api/v1/poll", params={"topic": topic, "since": lost, "timeout": "1"})
        ).json()
        assert again["recovered"] is False

        # A timestamp between A3 and C1 is an instant, not a lost id: recovered.
        instant = str(StreamId.parse(lost).ms)
        timed = (
            await http.get(
                "/api/v1/poll", params={"topic": topic, "since": instant, "timeout": "1"}
            )
        ).json()
        assert timed["recovered"] is True
        assert [m["id"] for m in timed["messages"]] == [after]
        # And the ids the stream holds are resumed as before.
        exact = (
            await http.get(
                "/api/v1/poll", params={"topic": topic, "since": restored[-1], "timeout": "1"}
            )
        ).json()
        assert exact["recovered"] is True
        assert [m["id"] for m in exact["messages"]] == [after]
