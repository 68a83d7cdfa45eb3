"""Fixtures of the gateway tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from relay_gateway.testing import gateway_settings, run_gateway
from relaycore.testing import UvicornServer
from relaycore.testing.plugin import Backend


@pytest.fixture
def gateway(
    valkey_backend: Backend,
) -> Callable[..., contextlib.AbstractAsyncContextManager[UvicornServer]]:
    """``async with gateway(**settings_overrides) as server`` → a running gateway on the test's
    Valkey backend (the single node, or the cluster for ``@pytest.mark.backends`` tests).

    ``relay_protocols=False`` serves it with uvicorn's own protocols (plain ASGI sends only).
    """

    def start(
        *, relay_protocols: bool = True, **overrides: Any
    ) -> contextlib.AbstractAsyncContextManager[UvicornServer]:
        overrides.setdefault("valkey_cluster", valkey_backend.cluster)
        return run_gateway(
            gateway_settings(valkey_backend.url, **overrides), relay_protocols=relay_protocols
        )

    return start
