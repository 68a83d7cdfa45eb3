"""Valkey URLs and the client factory against a real server."""

from __future__ import annotations

import pytest

from relaycore.valkey import ValkeyDsn, create_client


def test_full_url() -> None:
    dsn = ValkeyDsn.from_dsn("valkeys://us%40er:p%3Ass@cache.internal:6380/2")
    assert dsn == ValkeyDsn("cache.internal", 6380, "us@er", "p:ss", 2, tls=True)
    assert "p:ss" not in dsn.redacted()


def test_defaults() -> None:
    assert ValkeyDsn.from_dsn("valkey://localhost") == ValkeyDsn("localhost", 6379)


@pytest.mark.parametrize("url", ["http://x", "valkey://h:99999", "valkey://h:1/db"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(ValueError, match=r"expected|port|database"):
        ValkeyDsn.from_dsn(url)


async def test_client_talks_to_real_valkey(valkey_url: str) -> None:
    client = await create_client(ValkeyDsn.from_dsn(valkey_url), name="relay-test", lazy=False)
    try:
        assert await client.ping() == b"PONG"
    finally:
        await client.close()
