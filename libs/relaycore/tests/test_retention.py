"""``RELAY_RETENTION_RULES`` parsing and per-topic resolution (first match wins, fallback)."""

from __future__ import annotations

import pytest

from relaycore.retention import Retention, RetentionPolicy, RetentionRule
from relaycore.settings import ConfigError, Settings

DAY_MS = 86_400_000


def policy(text: str, *, maxlen: int = 100_000, max_age: float = 86_400.0) -> RetentionPolicy:
    rules = Settings.from_env({"RELAY_RETENTION_RULES": text}).retention_rules
    return RetentionPolicy(rules, default_maxlen=maxlen, default_max_age=max_age)


EXAMPLE = "audit.*:maxlen=1000000,max_age=30d;presence.*:maxlen=100,max_age=2m"


def test_the_contract_example() -> None:
    rules = Settings.from_env({"RELAY_RETENTION_RULES": EXAMPLE}).retention_rules
    assert rules == (
        RetentionRule("audit.*", 1_000_000, 30 * 86_400.0),
        RetentionRule("presence.*", 100, 120.0),
    )


def test_unset_and_empty_mean_no_rules() -> None:
    assert Settings.from_env({}).retention_rules == ()
    assert Settings.from_env({"RELAY_RETENTION_RULES": ""}).retention_rules == ()
    assert Settings.from_env({"RELAY_RETENTION_RULES": " a:maxlen=1 ; "}).retention_rules == (
        RetentionRule("a", 1, None),
    )


def test_first_match_wins_and_missing_keys_fall_back() -> None:
    rules = policy("orders.eu:maxlen=5;orders.*:max_age=1h;*:maxlen=7", maxlen=50, max_age=60)
    assert rules.for_topic("orders.eu") == Retention(5, 60_000)  # exact, before the prefix
    assert rules.for_topic("orders.us") == Retention(50, 3_600_000)  # maxlen: the default
    assert rules.for_topic("orders") == Retention(7, 60_000)  # "orders.*" needs the dot
    assert policy("a.*:maxlen=3").for_topic("b") == Retention(100_000, DAY_MS)  # no rule


def test_topic_names_may_contain_colons() -> None:
    assert policy("tenant:1:*:maxlen=9").for_topic("tenant:1:chat") == Retention(9, DAY_MS)
    assert policy("a:max_age=0").for_topic("a") == Retention(100_000, 0)  # 0 = no age limit


def test_the_cache_is_bounded_and_answers_stay_right() -> None:
    rules = Settings.from_env({"RELAY_RETENTION_RULES": "hot.*:maxlen=3"}).retention_rules
    small = RetentionPolicy(rules, default_maxlen=10, default_max_age=1, cache_size=4)
    for n in range(100):
        assert small.for_topic(f"hot.{n}") == Retention(3, 1000)
        assert small.for_topic(f"cold.{n}") == Retention(10, 1000)
    assert len(small._cache) == 4


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("orders.*", "expected <pattern>:maxlen=<n>,max_age=<duration>"),
        ("orders.*:", "expected maxlen=<n> and/or max_age=<duration>"),
        (":maxlen=5", "expected <pattern>"),
        ("orders.*:maxlen=0", "maxlen must be a whole number of at least 1"),
        ("orders.*:maxlen=ten", "maxlen must be a whole number"),
        ("orders.*:max_age=soon", "max_age: expected a duration"),
        ("orders.*:ttl=5s", "expected maxlen=<n> and/or max_age=<duration>"),
        ("orders.*:maxlen=5,maxlen=6", "maxlen given twice"),
        ("or*ders:maxlen=5", "not a topic name or a prefix ending in *"),
        ("-bad:maxlen=5", "not a topic name"),
        ("a:maxlen=1;b", "rule 2 ('b')"),
    ],
)
def test_invalid_rules_name_the_variable_and_the_rule(value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"RELAY_RETENTION_RULES": value})
    assert raised.value.variable == "RELAY_RETENTION_RULES"
    assert reason in str(raised.value)
