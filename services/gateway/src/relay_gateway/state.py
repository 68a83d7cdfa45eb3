"""The gateway's typed application state, built in the lifespan and read by every handler."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from relay_gateway.hub import Hub
from relay_gateway.limits import ConnectionCap
from relay_gateway.metrics import GatewayMetrics
from relay_gateway.shutdown import Drain
from relaycore.auth import Authenticator, Principal, bearer_token
from relaycore.settings import Settings
from relaycore.valkey import ValkeyClient

__all__ = ["GatewayState", "authenticate", "credentials", "gateway_state"]


@dataclass
class GatewayState:
    settings: Settings
    client: ValkeyClient
    hub: Hub
    metrics: GatewayMetrics
    auth: Authenticator
    drain: Drain
    # Open WebSocket + SSE connections per principal (RELAY_MAX_CONNECTIONS_PER_PRINCIPAL).
    connection_cap: ConnectionCap = field(default_factory=lambda: ConnectionCap(0))


def gateway_state(connection: HTTPConnection) -> GatewayState:
    state: GatewayState = connection.app.state.gateway
    return state


def credentials(connection: HTTPConnection) -> str | None:
    """A consumer's token: ``Authorization: Bearer`` or, for browsers, the ``token`` query."""
    return bearer_token(connection.headers.get("authorization")) or connection.query_params.get(
        "token"
    )


def authenticate(state: GatewayState, connection: HTTPConnection) -> Principal:
    """The caller's principal; raises :class:`relaycore.auth.AuthError`."""
    return state.auth.authenticate(credentials(connection))
