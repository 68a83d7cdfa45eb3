"""Query parameters: the fast query-string parser reads exactly what Starlette would."""

from __future__ import annotations

import random

from starlette.datastructures import QueryParams

from relay_gateway.params import parse_query

_ALPHABET = "ab=&%+;2F0-9.:_ \u00e9"


def test_parse_query_matches_starlette() -> None:
    # Seeded (hypothesis' collection hook trips over glide's deprecated module aliases here).
    rng = random.Random(20261130)
    for _ in range(3000):
        query = "".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(40)))
        raw = query.encode("utf-8")
        expected = QueryParams(raw)
        parsed = parse_query(raw)
        assert set(parsed) == set(expected.keys()), query
        for name, value in parsed.items():
            assert value == expected[name], query


def test_parse_query_long_poll_loop() -> None:
    raw = b"topic=orders.eu&timeout=20&limit=1000&since=1764460800000-3&limit=5"
    assert parse_query(raw) == {
        "topic": "orders.eu", "timeout": "20", "limit": "5", "since": "1764460800000-3"
    }  # fmt: skip
    assert parse_query(b"topic=a%2Eb&since=&x") == {"topic": "a.b", "since": "", "x": ""}
    assert parse_query(b"") == {}
