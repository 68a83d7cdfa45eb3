"""Fixtures of the gateway tests."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Generator
from typing import Any

import pytest

from relay_gateway.testing import gateway_settings, run_gateway
from relaycore.testing import UvicornServer


@pytest.fixture
def gateway(
    valkey_url: str,
) -> Callable[..., contextlib.AbstractAsyncContextManager[UvicornServer]]:
    """``async with gateway(**settings_overrides) as server`` → a running gateway.

    ``relay_protocols=False`` serves it with uvicorn's own protocols (plain ASGI sends only).
    """

    def start(
        *, relay_protocols: bool = True, **overrides: Any
    ) -> contextlib.AbstractAsyncContextManager[UvicornServer]:
        return run_gateway(
            gateway_settings(valkey_url, **overrides), relay_protocols=relay_protocols
        )

    return start


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection_modifyitems() -> Generator[None, None, None]:
    # Hypothesis scans every loaded module for constants while collecting, which touches
    # GLIDE's deprecated compatibility modules (glide.async_commands.*): they warn on any
    # attribute access, and warnings are errors here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Importing from 'glide", DeprecationWarning)
        return (yield)
