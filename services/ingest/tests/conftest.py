"""Ingest test fixtures: apps on the session's real Valkey, driven in-process through httpx.

``ingest`` is an httpx client for an app with default settings; ``make_ingest(**overrides)``
starts more apps (other settings, a second replica, a Valkey of the test's own). Each app runs
its real lifespan (GLIDE client, pipeline flusher), which ``ASGITransport`` alone would skip.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from relay_devtools.testing.plugin import Backend
from relay_ingest.app import create_app
from relaycore.settings import Settings

MakeIngest = Callable[..., Awaitable[httpx.AsyncClient]]


def ingest_settings(valkey_url: str, **overrides: Any) -> Settings:
    return Settings(valkey_url=valkey_url, **overrides)


@contextlib.asynccontextmanager
async def running_ingest(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            yield client


@pytest.fixture
async def make_ingest(valkey_backend: Backend) -> AsyncIterator[MakeIngest]:
    """Apps on the test's Valkey backend (the cluster for ``@pytest.mark.backends`` runs)."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(**overrides: Any) -> httpx.AsyncClient:
            url = overrides.pop("valkey_url", valkey_backend.url)
            if url == valkey_backend.url:
                overrides.setdefault("valkey_cluster", valkey_backend.cluster)
            return await stack.enter_async_context(
                running_ingest(ingest_settings(url, **overrides))
            )

        yield make


@pytest.fixture
async def ingest(make_ingest: MakeIngest) -> httpx.AsyncClient:
    return await make_ingest()
