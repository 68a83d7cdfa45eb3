"""Settings: every value format of contract §2 and one clear error per bad variable."""

from __future__ import annotations

import pytest

from relaycore.settings import ConfigError, RateLimit, Settings
from relaycore.values import parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("2s", 2.0), ("10m", 600.0), ("24h", 86400.0), ("30", 30.0), ("1.5", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"), [("65536", 65536), ("64KiB", 65536), ("1MiB", 1048576), ("2GiB", 2 << 30)]
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_defaults_match_the_contract() -> None:
    settings = Settings.from_env({})
    assert settings.valkey_url == "valkey://127.0.0.1:6379"
    assert (settings.ingest_port, settings.gateway_port) == (8080, 8081)
    assert settings.max_message_bytes == 64 * 1024
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.max_queue_bytes == 1024 * 1024
    assert settings.max_subscriptions == 100
    assert settings.retention_maxlen == 100_000
    assert settings.retention_max_age == 24 * 3600
    assert settings.hot_window == 600
    assert settings.idempotency_window == 300
    assert settings.shutdown_grace == 25
    assert settings.auth == "none"
    assert not settings.rate_limit.enabled


def test_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "RELAY_VALKEY_CLUSTER": "1",
            "RELAY_HOT_WINDOW": "5m",
            "RELAY_MAX_QUEUE_BYTES": "2MiB",
            "RELAY_JWT_ALGORITHMS": "HS256, RS256",
            "RELAY_RATE_LIMIT": "100/s",
            "RELAY_LOG_FORMAT": "json",
        }
    )
    assert settings.valkey_cluster is True
    assert settings.hot_window == 300
    assert settings.max_queue_bytes == 2 << 20
    assert settings.jwt_algorithms == ("HS256", "RS256")
    assert settings.rate_limit == RateLimit(100, 1.0)
    assert settings.log_format == "json"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RELAY_INGEST_PORT", "eighty"),
        ("RELAY_GATEWAY_PORT", "70000"),
        ("RELAY_HOT_WINDOW", "soon"),
        ("RELAY_MAX_BODY_BYTES", "1 parsec"),
        ("RELAY_VALKEY_CLUSTER", "maybe"),
        ("RELAY_VALKEY_URL", "http://localhost:6379"),
        ("RELAY_LOG_FORMAT", "xml"),
        ("RELAY_RATE_LIMIT", "10/fortnight"),
        ("RELAY_WORKERS", "0"),
    ],
)
def test_invalid_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    assert caught.value.variable == variable
    assert variable in str(caught.value)
    assert "\n" not in str(caught.value)


def test_jwt_auth_needs_a_key() -> None:
    with pytest.raises(ConfigError, match="RELAY_AUTH"):
        Settings.from_env({"RELAY_AUTH": "jwt"})
