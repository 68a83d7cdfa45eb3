"""Parsing INFO persistence into relay_valkey_persistence_ok."""

from __future__ import annotations

import pytest

from relaycore.metrics import persistence_ok

HEALTHY = (
    b"# Persistence\r\nloading:0\r\nrdb_last_bgsave_status:ok\r\naof_enabled:1\r\n"
    b"aof_last_bgrewrite_status:ok\r\naof_last_write_status:ok\r\n"
)


def test_healthy_info_is_ok() -> None:
    assert persistence_ok(HEALTHY)


@pytest.mark.parametrize(
    "field", [b"aof_last_write_status", b"aof_last_bgrewrite_status", b"rdb_last_bgsave_status"]
)
def test_any_failed_background_write_is_not_ok(field: bytes) -> None:
    assert not persistence_ok(HEALTHY.replace(field + b":ok", field + b":err"))
