"""Per-topic retention: ``RELAY_RETENTION_RULES`` and the policy that resolves it per topic.

Syntax (contract §2): rules separated by ``;``, each ``<pattern>:maxlen=<n>,max_age=<duration>``.
Either key may be left out and then falls back to ``RELAY_RETENTION_MAXLEN`` /
``RELAY_RETENTION_MAX_AGE``; the pattern is an exact topic name or a prefix ending in ``*``;
the first matching rule wins; topics no rule matches get the defaults. Example::

    audit.*:maxlen=1000000,max_age=30d;presence.*:maxlen=100,max_age=2m

Topic names may contain ``:``, so a rule splits at its *last* ``:`` (options never contain one).

A pure data module. Settings parse the rules at start (an invalid rule stops the process;
``relaycore.settings`` imports this module lazily, since the value parsers live there), and
ingest asks :class:`RetentionPolicy` per topic. Resolving walks the rules once per topic; the
answer is cached (bounded, least recently used first out), so the write path pays a dict lookup.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from relaycore.settings import parse_duration

__all__ = ["Retention", "RetentionPolicy", "RetentionRule", "parse_retention_rules"]

# The characters of a topic name (contract §3); a pattern's prefix may be empty (``*``).
_TOPIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")
_PREFIX = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.:-]{0,198})?$")


@dataclass(frozen=True, slots=True)
class Retention:
    """What is kept of one topic: at most ``maxlen`` messages (approximately), none older than
    ``max_age_ms`` (0 = no age limit)."""

    maxlen: int
    max_age_ms: int


@dataclass(frozen=True, slots=True)
class RetentionRule:
    """One rule; ``None`` for a key the rule leaves to the defaults."""

    pattern: str
    maxlen: int | None = None
    max_age: float | None = None  # seconds

    def matches(self, topic: str) -> bool:
        if self.pattern.endswith("*"):
            return topic.startswith(self.pattern[:-1])
        return topic == self.pattern


def _parse_rule(text: str, position: int) -> RetentionRule:
    where = f"rule {position} ({text!r})"
    pattern, colon, options = text.rpartition(":")
    pattern = pattern.strip()
    if not colon or not pattern:
        raise ValueError(f"{where}: expected <pattern>:maxlen=<n>,max_age=<duration>")
    if pattern.endswith("*"):
        if not _PREFIX.match(pattern[:-1]):
            raise ValueError(f"{where}: {pattern!r} is not a topic name or a prefix ending in *")
    elif not _TOPIC.match(pattern):
        raise ValueError(f"{where}: {pattern!r} is not a topic name or a prefix ending in *")
    values: dict[str, str] = {}
    for option in options.split(","):
        key, equals, value = option.partition("=")
        key, value = key.strip(), value.strip()
        if not equals or key not in ("maxlen", "max_age") or not value:
            raise ValueError(f"{where}: expected maxlen=<n> and/or max_age=<duration>")
        if key in values:
            raise ValueError(f"{where}: {key} given twice")
        values[key] = value
    maxlen = max_age = None
    if "maxlen" in values:
        try:
            maxlen = int(values["maxlen"])
        except ValueError:
            maxlen = 0
        if maxlen < 1:
            raise ValueError(f"{where}: maxlen must be a whole number of at least 1")
    if "max_age" in values:
        try:
            max_age = parse_duration(values["max_age"])
        except ValueError as error:
            raise ValueError(f"{where}: max_age: {error}") from None
    return RetentionRule(pattern, maxlen, max_age)


def parse_retention_rules(text: str) -> tuple[RetentionRule, ...]:
    """``RELAY_RETENTION_RULES`` → rules in order; empty segments (a trailing ``;``) are
    ignored; anything else that is not a valid rule raises :class:`ValueError`."""
    segments = [segment.strip() for segment in text.split(";")]
    return tuple(
        _parse_rule(segment, position)
        for position, segment in enumerate(segments, start=1)
        if segment
    )


class RetentionPolicy:
    """The effective retention of each topic: the first matching rule over the defaults."""

    def __init__(
        self,
        rules: tuple[RetentionRule, ...],
        *,
        default_maxlen: int,
        default_max_age: float,
        cache_size: int = 10_000,
    ) -> None:
        self.rules = rules
        self.default = Retention(default_maxlen, int(default_max_age * 1000))
        # Topics are unbounded (any producer may invent names): the cache is not.
        self._cache: OrderedDict[str, Retention] = OrderedDict()
        self._cache_size = cache_size

    def for_topic(self, topic: str) -> Retention:
        if not self.rules:
            return self.default
        found = self._cache.get(topic)
        if found is not None:
            self._cache.move_to_end(topic)
            return found
        found = self._resolve(topic)
        self._cache[topic] = found
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return found

    def _resolve(self, topic: str) -> Retention:
        for rule in self.rules:
            if rule.matches(topic):
                return Retention(
                    self.default.maxlen if rule.maxlen is None else rule.maxlen,
                    self.default.max_age_ms if rule.max_age is None else int(rule.max_age * 1000),
                )
        return self.default
