"""Fixtures of the SDK and CLI tests: real ingest and gateway servers on the real Valkey.

``services(**settings)`` starts an in-process ingest and gateway (real uvicorn on free ports)
with the same settings; ``gateway_process(**env)`` runs ``python -m relay_gateway`` as its own
process, for tests that SIGTERM and restart it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt
import pytest

from relay_devtools.testing import ServiceProcess, UvicornServer
from relay_devtools.testing.gateway import gateway_settings, run_gateway
from relay_ingest.app import create_app as create_ingest
from relaycore.settings import Settings

SECRET = "sdk-test-secret-with-enough-bytes-for-hs256"


def make_token(*, publish: list[str], subscribe: list[str], lifetime: float = 300.0) -> str:
    claims: dict[str, Any] = {
        "sub": "sdk-tests",
        "exp": int(time.time() + lifetime),
        "topics": {"publish": publish, "subscribe": subscribe},
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


@dataclasses.dataclass
class Services:
    ingest: UvicornServer
    gateway: UvicornServer

    @property
    def ingest_url(self) -> str:
        return self.ingest.url

    @property
    def gateway_url(self) -> str:
        return self.gateway.url


@contextlib.asynccontextmanager
async def run_ingest(settings: Settings) -> AsyncIterator[UvicornServer]:
    server = UvicornServer(create_ingest(settings))
    async with server.running():
        yield server


ServicesFactory = Callable[..., contextlib.AbstractAsyncContextManager[Services]]


@pytest.fixture
def jwt_secret() -> str:
    return SECRET


@pytest.fixture
def make_jwt() -> Callable[..., str]:
    """``make_jwt(publish=[...], subscribe=[...])`` → an HS256 token signed with ``jwt_secret``."""
    return make_token


@pytest.fixture
def services(valkey_url: str) -> ServicesFactory:
    """``async with services(**settings) as s``: ingest + gateway sharing ``settings``."""

    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Services]:
        url = overrides.pop("valkey_url", valkey_url)
        ingest_settings = dataclasses.replace(Settings(valkey_url=url), **overrides)
        async with (
            run_ingest(ingest_settings) as ingest,
            run_gateway(gateway_settings(url, **overrides)) as gateway,
        ):
            yield Services(ingest, gateway)

    return start


@pytest.fixture
async def gateway_process(valkey_url: str) -> AsyncIterator[Callable[..., Any]]:
    """``await gateway_process(**RELAY_env)`` → a started :class:`ServiceProcess`."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**env: str) -> ServiceProcess:
            return await stack.enter_async_context(ServiceProcess("gateway", valkey_url, **env))

        yield start
