"""Stream ids and cursors.

A message id is its stream entry id ``<ms>-<seq>``; it orders messages within a topic and is the
cursor of every transport. Wherever a cursor is accepted, a bare millisecond timestamp is too:
``since=1764460800000`` delivers every retained message published at or after that instant.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["CURSOR_PATTERN", "MAX_SEQ", "Cursor", "StreamId", "parse_cursor"]

MAX_SEQ = 2**64 - 1
_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
_MS = re.compile(r"^\d{1,20}$")
# What the OpenAPI documents promise for a cursor: an id or a timestamp whose parts fit in 64
# bits (19 digits always do), in JSON Schema's regex dialect.
CURSOR_PATTERN = r"^[0-9]{1,19}(-[0-9]{1,19})?$"


class StreamId(NamedTuple):
    """A parsed ``<ms>-<seq>`` id; tuples compare in stream order."""

    ms: int
    seq: int

    @classmethod
    def parse(cls, text: str | bytes) -> StreamId:
        if isinstance(text, bytes):
            text = text.decode()
        ms, _, seq = text.partition("-")
        return cls(int(ms), int(seq))

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"

    def before(self) -> StreamId:
        """The largest id strictly smaller than this one (``0-0`` stays ``0-0``)."""
        if self.seq > 0:
            return StreamId(self.ms, self.seq - 1)
        if self.ms > 0:
            return StreamId(self.ms - 1, MAX_SEQ)
        return self


ZERO = StreamId(0, 0)


class Cursor(NamedTuple):
    """Where a subscriber resumes: deliver ids strictly greater than ``after``.

    ``by_time`` marks a cursor given as a bare timestamp: it names an instant, not a position in
    the stream, so a time later than the newest message is not a sign of a reset stream.
    """

    after: StreamId
    by_time: bool


def parse_cursor(text: str) -> Cursor:
    """Parse ``<ms>-<seq>`` or a bare millisecond timestamp; raise ``ValueError`` otherwise."""
    match = _ID.match(text)
    if match is not None:
        ms, seq = int(match.group(1)), int(match.group(2))
        if ms > MAX_SEQ or seq > MAX_SEQ:
            raise ValueError("id parts must fit in 64 bits")
        return Cursor(StreamId(ms, seq), by_time=False)
    if _MS.match(text) is not None:
        ms = int(text)
        if ms > MAX_SEQ:
            raise ValueError("timestamp must fit in 64 bits")
        # "At or after ms" is "strictly after the last id of ms - 1".
        return Cursor(StreamId(ms, 0).before(), by_time=True)
    raise ValueError("expected a message id like 1764460800000-0 or a millisecond timestamp")
