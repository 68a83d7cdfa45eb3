"""One typed settings object, read once from ``RELAY_*`` environment variables.

Every service builds a :class:`Settings` with :meth:`Settings.from_env` at start and passes it
to its app factory; nothing else reads the environment. An invalid value raises
:class:`ConfigError` naming the variable, which the entry points turn into one line on stderr and
exit code 1.

Value formats (contract §2): durations ``500ms``, ``2s``, ``10m``, ``24h`` or bare seconds;
sizes ``65536``, ``64KiB``, ``1MiB``; lists comma-separated; booleans ``true/false/1/0``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from relaycore.retention import RetentionRule, parse_retention_rules
from relaycore.values import parse_bool, parse_duration, parse_list, parse_port, parse_size

__all__ = ["ConfigError", "RateLimit", "Settings"]

PREFIX = "RELAY_"


class ConfigError(ValueError):
    """An environment variable holds a value the relay cannot use."""

    def __init__(self, variable: str, value: str, reason: str) -> None:
        self.variable = variable
        self.value = value
        self.reason = reason
        super().__init__(f"invalid configuration: {variable}={value!r}: {reason}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("expected a whole number of at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("expected a whole number of at least 0")
    return value


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return parse


def _retention_rules(text: str) -> tuple[RetentionRule, ...]:
    return parse_retention_rules(text)


def _public_url(text: str) -> str:
    value = text.strip().rstrip("/")
    if value and not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise ValueError("expected an http:// or https:// URL, or empty")
    return value


def _valkey_url(text: str) -> str:
    # Imported here: settings must stay importable without the Valkey client stack.
    from relaycore.valkey import ValkeyDsn

    ValkeyDsn.from_dsn(text)
    return text


@dataclass(frozen=True)
class RateLimit:
    """``N/s``, ``N/m`` or ``N/h`` messages per principal; ``0`` (or unset) disables it."""

    count: int
    per_seconds: float

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        value = text.strip()
        if value in ("", "0", "off", "none"):
            return cls(0, 1.0)
        number, _, unit = value.partition("/")
        periods = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
        if unit not in periods:
            raise ValueError("expected N/s, N/m or N/h, or 0 to disable")
        return cls(_non_negative_int(number), periods[unit])

    @property
    def enabled(self) -> bool:
        return self.count > 0


def _env(name: str, parser: Callable[[str], Any], default: Any) -> Any:
    """A settings field read from ``RELAY_<NAME>`` with ``parser``."""
    return field(default=default, metadata={"env": PREFIX + name, "parse": parser})


KiB = 1024
MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with the defaults documented in the README."""

    # Valkey
    valkey_url: str = _env("VALKEY_URL", _valkey_url, "valkey://127.0.0.1:6379")
    valkey_cluster: bool = _env("VALKEY_CLUSTER", parse_bool, False)
    valkey_timeout: float = _env("VALKEY_TIMEOUT", parse_duration, 2.0)
    # CA bundle (PEM) trusted for valkeys:// instead of the system store
    valkey_tls_ca_file: str = _env("VALKEY_TLS_CA_FILE", str, "")
    # Gateway: a PING this often; unanswered within it, Valkey counts as down (fail fast).
    valkey_probe_interval: float = _env("VALKEY_PROBE_INTERVAL", parse_duration, 0.5)
    # Listeners and processes
    ingest_host: str = _env("INGEST_HOST", str, "0.0.0.0")
    ingest_port: int = _env("INGEST_PORT", parse_port, 8080)
    # Where browsers reach ingest (the gateway's /ui page publishes there); empty: the page's
    # own host on port 8080.
    public_ingest_url: str = _env("PUBLIC_INGEST_URL", _public_url, "")
    gateway_host: str = _env("GATEWAY_HOST", str, "0.0.0.0")
    gateway_port: int = _env("GATEWAY_PORT", parse_port, 8081)
    workers: int = _env("WORKERS", _positive_int, 1)
    # HTTPS/WSS on the services' own ports: both or neither
    tls_cert_file: str = _env("TLS_CERT_FILE", str, "")
    tls_key_file: str = _env("TLS_KEY_FILE", str, "")
    # Longest a client may take to send a request's headers (slowloris); 0 turns it off
    http_header_timeout: float = _env("HTTP_HEADER_TIMEOUT", parse_duration, 10.0)
    # Logging and tracing
    log_level: str = _env("LOG_LEVEL", _choice("debug", "info", "warning", "error"), "info")
    log_format: str = _env("LOG_FORMAT", _choice("json", "console"), "console")
    otlp_endpoint: str = _env("OTLP_ENDPOINT", str, "")
    # One log line per HTTP request (uvicorn's access log); request metrics do not depend on it.
    access_log: bool = _env("ACCESS_LOG", parse_bool, True)
    # Limits (contract §7)
    max_message_bytes: int = _env("MAX_MESSAGE_BYTES", parse_size, 64 * KiB)
    max_body_bytes: int = _env("MAX_BODY_BYTES", parse_size, 1 * MiB)
    max_batch_items: int = _env("MAX_BATCH_ITEMS", _positive_int, 1000)
    max_ws_frame_bytes: int = _env("MAX_WS_FRAME_BYTES", parse_size, 64 * KiB)
    max_subscriptions: int = _env("MAX_SUBSCRIPTIONS", _positive_int, 100)
    max_queue_bytes: int = _env("MAX_QUEUE_BYTES", parse_size, 1 * MiB)
    # A connection the server closes (slow consumer, violation, expiry, drain, dead peer) is
    # aborted at the socket if its close has not completed within this time.
    close_timeout: float = _env("CLOSE_TIMEOUT", parse_duration, 2.0)
    # WebSocket ops (frames) per connection: N/s, N/m or N/h; 0 = off. Over it: error, then 4400.
    ws_op_rate: RateLimit = _env("WS_OP_RATE", RateLimit.parse, RateLimit(100, 1.0))
    # Open WebSocket + SSE connections per principal (JWT sub, or client IP with auth none);
    # 0 = off.
    max_connections_per_principal: int = _env("MAX_CONNECTIONS_PER_PRINCIPAL", _non_negative_int, 0)
    # Retention, applied on every write
    retention_maxlen: int = _env("RETENTION_MAXLEN", _positive_int, 100_000)
    retention_max_age: float = _env("RETENTION_MAX_AGE", parse_duration, 24 * 3600.0)
    # Per-topic overrides of the two above (relaycore.retention): first matching rule wins.
    retention_rules: tuple[RetentionRule, ...] = _env("RETENTION_RULES", _retention_rules, ())
    idempotency_window: float = _env("IDEMPOTENCY_WINDOW", parse_duration, 300.0)
    # Ingest write path: commands per pipelined round trip, and how many may wait for one
    # before new publishes get 503 (bounds memory when Valkey is slow).
    publish_pipeline_size: int = _env("PUBLISH_PIPELINE_SIZE", _positive_int, 256)
    publish_queue_limit: int = _env("PUBLISH_QUEUE_LIMIT", _positive_int, 10_000)
    # Gateway hot tier
    hot_window: float = _env("HOT_WINDOW", parse_duration, 600.0)
    hot_max_messages: int = _env("HOT_MAX_MESSAGES", _positive_int, 10_000)
    hot_max_bytes: int = _env("HOT_MAX_BYTES", parse_size, 256 * MiB)
    # Gateway delivery
    ws_ping_interval: float = _env("WS_PING_INTERVAL", parse_duration, 20.0)
    ws_ping_timeout: float = _env("WS_PING_TIMEOUT", parse_duration, 20.0)
    sse_heartbeat: float = _env("SSE_HEARTBEAT", parse_duration, 15.0)
    reader_pool_size: int = _env("READER_POOL_SIZE", _positive_int, 4)
    reader_block: float = _env("READER_BLOCK", parse_duration, 0.1)
    reader_count: int = _env("READER_COUNT", _positive_int, 1000)
    # Valkey Cluster: readers wake on signals; this slow read per node catches lost ones.
    reader_safety_interval: float = _env("READER_SAFETY_INTERVAL", parse_duration, 2.0)
    topic_linger: float = _env("TOPIC_LINGER", parse_duration, 30.0)
    shutdown_grace: float = _env("SHUTDOWN_GRACE", parse_duration, 25.0)
    shutdown_drain: float = _env("SHUTDOWN_DRAIN", parse_duration, 10.0)
    ws_max_protocol_errors: int = _env("WS_MAX_PROTOCOL_ERRORS", _positive_int, 10)
    # Auth (contract §8)
    auth: str = _env("AUTH", _choice("none", "jwt"), "none")
    jwt_algorithms: tuple[str, ...] = _env("JWT_ALGORITHMS", parse_list, ("HS256",))
    jwt_secret: str = _env("JWT_SECRET", str, "")
    jwt_public_key_file: str = _env("JWT_PUBLIC_KEY_FILE", str, "")
    jwt_jwks_file: str = _env("JWT_JWKS_FILE", str, "")
    jwt_audience: str = _env("JWT_AUDIENCE", str, "")
    jwt_issuer: str = _env("JWT_ISSUER", str, "")
    allowed_origins: tuple[str, ...] = _env("ALLOWED_ORIGINS", parse_list, ())
    rate_limit: RateLimit = _env("RATE_LIMIT", RateLimit.parse, RateLimit(0, 1.0))

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read every ``RELAY_*`` variable; raise :class:`ConfigError` on the first bad one."""
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            name = spec.metadata["env"]
            raw = environ.get(name)
            if raw is None:
                continue
            try:
                values[spec.name] = spec.metadata["parse"](raw)
            except ValueError as exc:
                raise ConfigError(name, raw, str(exc)) from None
        settings = cls(**values)
        settings._check_consistency()
        return settings

    def _check_consistency(self) -> None:
        if self.auth == "jwt" and not (
            self.jwt_secret or self.jwt_public_key_file or self.jwt_jwks_file
        ):
            raise ConfigError(
                "RELAY_AUTH",
                self.auth,
                "jwt needs RELAY_JWT_SECRET, RELAY_JWT_PUBLIC_KEY_FILE or RELAY_JWT_JWKS_FILE",
            )
        self._check_tls()
        if self.max_message_bytes > self.max_body_bytes:
            raise ConfigError(
                "RELAY_MAX_MESSAGE_BYTES",
                str(self.max_message_bytes),
                "must not exceed RELAY_MAX_BODY_BYTES",
            )

    def _check_tls(self) -> None:
        if self.tls_cert_file and not self.tls_key_file:
            raise ConfigError(
                "RELAY_TLS_CERT_FILE", self.tls_cert_file, "needs RELAY_TLS_KEY_FILE too"
            )
        if self.tls_key_file and not self.tls_cert_file:
            raise ConfigError(
                "RELAY_TLS_KEY_FILE", self.tls_key_file, "needs RELAY_TLS_CERT_FILE too"
            )
        for variable, value in (
            ("RELAY_TLS_CERT_FILE", self.tls_cert_file),
            ("RELAY_TLS_KEY_FILE", self.tls_key_file),
            ("RELAY_VALKEY_TLS_CA_FILE", self.valkey_tls_ca_file),
        ):
            if value and not os.access(value, os.R_OK):
                raise ConfigError(variable, value, "no such readable file")
        if self.tls_cert_file:
            try:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
            except (ssl.SSLError, OSError) as error:
                raise ConfigError(
                    "RELAY_TLS_CERT_FILE",
                    self.tls_cert_file,
                    f"certificate and RELAY_TLS_KEY_FILE do not load as a PEM pair: {error}",
                ) from None

    @classmethod
    def variables(cls) -> list[tuple[str, str]]:
        """(variable, default) pairs, for docs and ``--help``."""
        return [(spec.metadata["env"], repr(spec.default)) for spec in dataclasses.fields(cls)]
