"""Valkey connections on valkey-glide: URL parsing and the client factory.

GLIDE multiplexes every command of one client over one connection, so a blocking XREAD stalls
every other command on that client. Callers therefore ask for ``blocking=True`` clients for
their blocking reads and keep a separate client for everything else.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

from glide import (
    AdvancedGlideClientConfiguration,
    AdvancedGlideClusterClientConfiguration,
    AllPrimaries,
    BackoffStrategy,
    GlideClient,
    GlideClientConfiguration,
    GlideClusterClient,
    GlideClusterClientConfiguration,
    GlideError,
    InfoSection,
    NodeAddress,
    RandomNode,
    ServerCredentials,
    TlsAdvancedConfiguration,
)

__all__ = ["ValkeyClient", "ValkeyDsn", "create_client", "persistence_info"]

ValkeyClient: TypeAlias = GlideClient | GlideClusterClient

_SCHEMES = {"valkey": False, "redis": False, "valkeys": True, "rediss": True}


@dataclass(frozen=True)
class ValkeyDsn:
    """Where and how to connect: ``valkey://[user:pass@]host:port[/db]``, ``valkeys://`` for TLS."""

    host: str = "127.0.0.1"
    port: int = 6379
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: bool = False
    # PEM CA certificates trusted for TLS instead of the system store (RELAY_VALKEY_TLS_CA_FILE).
    tls_ca_pem: bytes | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_dsn(cls, url: str) -> ValkeyDsn:
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES:
            raise ValueError("expected a valkey://, valkeys://, redis:// or rediss:// URL")
        try:
            port = parts.port or 6379
        except ValueError:
            raise ValueError("the port is not a number between 0 and 65535") from None
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError("the database after the host must be a number, e.g. /0")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            db=int(path) if path else 0,
            tls=_SCHEMES[parts.scheme],
        )

    def with_ca_file(self, ca_file: str) -> ValkeyDsn:
        """This DSN trusting the PEM CA certificates in ``ca_file`` (``RELAY_VALKEY_TLS_CA_FILE``)
        instead of the system store; unchanged when ``ca_file`` is empty."""
        if not ca_file:
            return self
        return dataclasses.replace(self, tls_ca_pem=Path(ca_file).read_bytes())

    def redacted(self) -> str:
        """The URL without its password, for logs."""
        scheme = "valkeys" if self.tls else "valkey"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}/{self.db}"


async def create_client(
    dsn: ValkeyDsn,
    *,
    cluster: bool = False,
    name: str,
    request_timeout: float = 2.0,
    lazy: bool = True,
    connection_timeout: float | None = None,
) -> ValkeyClient:
    """A GLIDE client for ``dsn``.

    ``lazy`` defers the first connection to the first command, so a service starts (and answers
    ``/health``) while Valkey is unreachable; GLIDE then reconnects by itself with backoff.
    A client used for ``XREAD BLOCK`` must be dedicated to it (see module docstring); GLIDE
    extends the request timeout of blocking commands by their block time on its own.
    ``connection_timeout`` bounds each (re)connect attempt (GLIDE's default is 2 s), which is
    what a command waits on while the server is unreachable.
    """
    credentials = (
        ServerCredentials(password=dsn.password, username=dsn.username)
        if dsn.password is not None
        else None
    )
    timeout_ms = max(1, int(request_timeout * 1000))
    # Capped exponential backoff: 10 ms doubling up to ~1.3 s, retried forever.
    backoff = BackoffStrategy(num_of_retries=8, factor=10, exponent_base=2)
    addresses = [NodeAddress(dsn.host, dsn.port)]
    connect_ms = None if connection_timeout is None else max(1, int(connection_timeout * 1000))
    tls_config = (
        TlsAdvancedConfiguration(root_pem_cacerts=dsn.tls_ca_pem)
        if dsn.tls and dsn.tls_ca_pem
        else None
    )
    if cluster:
        return await GlideClusterClient.create(
            GlideClusterClientConfiguration(
                addresses,
                advanced_config=AdvancedGlideClusterClientConfiguration(
                    connection_timeout=connect_ms, tls_config=tls_config
                ),
                use_tls=dsn.tls,
                credentials=credentials,
                request_timeout=timeout_ms,
                reconnect_strategy=backoff,
                client_name=name,
                lazy_connect=lazy,
            )
        )
    return await GlideClient.create(
        GlideClientConfiguration(
            addresses,
            advanced_config=AdvancedGlideClientConfiguration(
                connection_timeout=connect_ms, tls_config=tls_config
            ),
            use_tls=dsn.tls,
            credentials=credentials,
            request_timeout=timeout_ms,
            reconnect_strategy=backoff,
            database_id=dsn.db or None,
            client_name=name,
            lazy_connect=lazy,
        )
    )


async def persistence_info(client: ValkeyClient) -> Any:
    """``INFO persistence`` for readiness checks; on a cluster, of the primaries that answer.

    One primary down makes only its topics unavailable (contract §6), so a service stays ready
    while at least one node answers: pulling every replica out of the load balancer for one
    shard would stop all topics. Raises :class:`glide.GlideError` when none answers.
    """
    if not isinstance(client, GlideClusterClient):
        return await client.info([InfoSection.PERSISTENCE])
    try:
        return await client.info([InfoSection.PERSISTENCE], AllPrimaries())
    except GlideError:
        for _ in range(3):
            with contextlib.suppress(GlideError):
                return await client.info([InfoSection.PERSISTENCE], RandomNode())
        raise
