"""The value formats of ``RELAY_*`` settings (contract §2), for every module that reads one.

Durations ``500ms``, ``2s``, ``10m``, ``24h``, ``1d`` or bare seconds; sizes ``65536``,
``64KiB``, ``1MiB``; lists comma-separated; booleans ``true/false/1/0``. Each parser raises
``ValueError`` with what it expected; :mod:`relaycore.settings` names the variable.
"""

from __future__ import annotations

import re

__all__ = ["parse_bool", "parse_duration", "parse_list", "parse_port", "parse_size"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
    "k": 1024, "K": 1024, "M": 1024**2, "G": 1024**3,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3,
}  # fmt: skip


def parse_duration(text: str) -> float:
    """``500ms`` / ``2s`` / ``10m`` / ``24h`` / ``1d`` / bare seconds → seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError("expected a duration such as 500ms, 2s, 10m, 24h or a number of seconds")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size(text: str) -> int:
    """``65536`` / ``64KiB`` / ``1MiB`` → bytes."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError("expected a size such as 65536, 64KiB or 1MiB")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError("expected true, false, 1 or 0")


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse_port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError("expected a TCP port between 0 and 65535")
    return port
