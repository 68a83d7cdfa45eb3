"""Cursors: stream ids and bare millisecond timestamps."""

from __future__ import annotations

import pytest

from relaycore.ids import MAX_SEQ, StreamId, parse_cursor


def test_ids_order_numerically_not_lexically() -> None:
    assert StreamId.parse("10-0") > StreamId.parse("9-5")
    assert StreamId.parse(b"5-10") > StreamId.parse("5-9")
    assert str(StreamId(7, 3)) == "7-3"


def test_id_cursor_is_exclusive_position() -> None:
    cursor = parse_cursor("1764460800000-3")
    assert cursor.after == StreamId(1764460800000, 3)
    assert not cursor.by_time


def test_timestamp_cursor_includes_that_millisecond() -> None:
    cursor = parse_cursor("1764460800000")
    assert cursor.by_time
    assert cursor.after == StreamId(1764460799999, MAX_SEQ)
    assert StreamId(1764460800000, 0) > cursor.after
    assert parse_cursor("0").after == StreamId(0, 0)


@pytest.mark.parametrize("text", ["", "abc", "1-", "-1", "1-2-3", "1.5", "99999999999999999999999"])
def test_malformed_cursors_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected|64 bits"):
        parse_cursor(text)
