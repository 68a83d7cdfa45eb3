"""Per-topic retention (``RELAY_RETENTION_RULES``) on a real Valkey through a real ingest app:
first match wins, count and age limits, fallback to the defaults, every write path (single,
merged concurrent singles, batch spanning topics), topic info, and bad rules at start."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import pytest

from relay_devtools.testing import free_port
from relaycore.ids import StreamId
from relaycore.keys import stream_key
from relaycore.settings import Settings
from relaycore.streams import read_after
from relaycore.valkey import ValkeyClient

from .conftest import MakeIngest

MESSAGES = "/api/v1/messages"
BATCH = "/api/v1/messages/batch"


def rules(text: str) -> dict[str, object]:
    """Settings overrides with the rules parsed exactly as ``RELAY_RETENTION_RULES`` is."""
    parsed = Settings.from_env({"RELAY_RETENTION_RULES": text}).retention_rules
    return {"retention_rules": parsed}


async def length(valkey: ValkeyClient, topic: str) -> int:
    return await valkey.xlen(stream_key(topic))


async def batch(ingest: httpx.AsyncClient, messages: list[dict[str, object]]) -> None:
    """Publish in batch requests of at most 1000 (the batch limit), in order."""
    for start in range(0, len(messages), 1000):
        response = await ingest.post(BATCH, json={"messages": messages[start : start + 1000]})
        assert response.status_code == 201, response.text


# MAXLEN ~ trims whole stream nodes (100 entries each): a topic capped at 10 keeps at most
# one node beyond the cap, so after 400 writes it holds between 10 and ~110 (never < the cap).
TRIMMED = range(10, 201)


async def test_first_matching_rule_wins_over_later_and_broader_rules(
    make_ingest: MakeIngest, valkey_client: ValkeyClient, topic: str
) -> None:
    ingest = await make_ingest(
        **rules(f"{topic}.few*:maxlen=10;{topic}.*:maxlen=100000;{topic}.late:maxlen=10")
    )
    few, late = f"{topic}.few.a", f"{topic}.late"
    await batch(ingest, [{"topic": t, "payload": n} for n in range(400) for t in (few, late)])
    assert await length(valkey_client, few) in TRIMMED  # rule 1, although rule 2 matches too
    # Rule 2 matches first: the exact rule 3 after it never applies (first match, not best).
    assert await length(valkey_client, late) == 400


async def test_count_rule_and_fallback_to_the_default_maxlen(
    make_ingest: MakeIngest, valkey_client: ValkeyClient, topic: str
) -> None:
    ingest = await make_ingest(
        retention_maxlen=10, **rules(f"{topic}.keep:maxlen=100000;{topic}.aged:max_age=1h")
    )
    keep, aged, other = f"{topic}.keep", f"{topic}.aged", f"{topic}.other"
    await batch(
        ingest, [{"topic": t, "payload": n} for n in range(400) for t in (keep, aged, other)]
    )
    assert await length(valkey_client, keep) == 400  # the rule's maxlen over the default
    assert await length(valkey_client, aged) in TRIMMED  # no maxlen in its rule: the default
    assert await length(valkey_client, other) in TRIMMED  # no rule: the default


async def test_age_rule_trims_only_its_topics(
    make_ingest: MakeIngest, valkey_client: ValkeyClient, topic: str
) -> None:
    ingest = await make_ingest(**rules(f"{topic}.brief*:max_age=200ms"))
    brief, lasting = f"{topic}.brief", f"{topic}.lasting"
    await batch(ingest, [{"topic": t, "payload": n} for n in range(300) for t in (brief, lasting)])
    await asyncio.sleep(0.4)
    for name in (brief, lasting):
        assert (
            await ingest.post(MESSAGES, json={"topic": name, "payload": "fresh"})
        ).status_code == 201
    # MINID ~ drops whole nodes older than 200 ms: at most the newest node of old ones is left.
    kept = await read_after(valkey_client, brief, StreamId(0, 0), 1000)
    assert len(kept) <= 100
    assert kept[-1].payload == b'"fresh"'
    assert await length(valkey_client, lasting) == 301  # default max age (24h): all kept


async def test_every_write_path_applies_each_topics_own_retention(
    make_ingest: MakeIngest, valkey_client: ValkeyClient, topic: str
) -> None:
    ingest = await make_ingest(**rules(f"{topic}.s*:maxlen=10"))

    async def publish(name: str, n: int, **extra: object) -> None:
        response = await ingest.post(MESSAGES, json={"topic": name, "payload": n, **extra})
        assert response.status_code == 201, response.text

    # One at a time: relay_publish per message.
    small, big = f"{topic}.s.single", f"{topic}.b.single"
    for n in range(250):
        await publish(small, n)
        await publish(big, n)
    assert await length(valkey_client, small) in TRIMMED
    assert await length(valkey_client, big) == 250
    # Concurrent singles to two topics merge into one call per topic (plain payloads, and
    # with headers, i.e. relay_publish_payloads and relay_publish_many).
    for suffix, extra in (("plain", {}), ("headers", {"headers": {"h": "1"}})):
        small, big = f"{topic}.s.merged.{suffix}", f"{topic}.b.merged.{suffix}"
        for _ in range(5):
            await asyncio.gather(
                *(publish(name, n, **extra) for n in range(100) for name in (small, big))
            )
        assert await length(valkey_client, small) in TRIMMED
        assert await length(valkey_client, big) == 500
    # One batch spanning both, plain and with idempotency keys (relay_publish_many).
    small, big = f"{topic}.s.batch", f"{topic}.b.batch"
    plain = [{"topic": t, "payload": n} for n in range(300) for t in (small, big)]
    keyed = [{"topic": t, "payload": n, "key": f"k{n}"} for n in range(300) for t in (small, big)]
    await batch(ingest, plain)
    await batch(ingest, keyed)
    assert await length(valkey_client, small) in TRIMMED
    assert await length(valkey_client, big) == 600


async def test_topic_info_reports_each_topics_effective_retention(
    make_ingest: MakeIngest, topic: str
) -> None:
    ingest = await make_ingest(
        retention_maxlen=5000,
        retention_max_age=3600.0,
        **rules(f"{topic}.audit.*:maxlen=1000000,max_age=30d;{topic}.p*:max_age=2m"),
    )
    expected = {
        f"{topic}.audit.x": {"maxlen": 1_000_000, "max_age_ms": 30 * 86_400_000},
        f"{topic}.presence": {"maxlen": 5000, "max_age_ms": 120_000},  # maxlen: the default
        f"{topic}.other": {"maxlen": 5000, "max_age_ms": 3_600_000},  # no rule: the defaults
    }
    await batch(ingest, [{"topic": name, "payload": 1} for name in expected])
    for name, retention in expected.items():
        info = (await ingest.get(f"/api/v1/topics/{name}")).json()
        assert info["retention"] == retention, name


@pytest.mark.parametrize(
    "value",
    # The parser's every refusal is in libs/relaycore/tests/test_retention.py; here: the process.
    ["audit.*:maxlen=1000000;presence.*:maxlen=0", "orders.*:max_age=soon"],
)
def test_invalid_rules_stop_ingest_at_start_with_one_line(value: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        RELAY_VALKEY_URL="valkey://127.0.0.1:1",
        RELAY_INGEST_HOST="127.0.0.1",
        RELAY_INGEST_PORT=str(free_port()),
        RELAY_RETENTION_RULES=value,
    )
    result = subprocess.run(
        [sys.executable, "-m", "relay_ingest"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "RELAY_RETENTION_RULES" in lines[0]
