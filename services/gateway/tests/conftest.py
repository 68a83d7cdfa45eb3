"""Fixtures of the gateway tests."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Generator
from typing import Any

import pytest

from relay_gateway.testing import gateway_settings, run_gateway
from relaycore.testing import UvicornServer

# The transport tests also run on uvicorn's own protocols: what the gateway falls back to when
# the installed uvicorn lacks an internal relaycore.uvicorn_ext uses (plain ASGI sends only).
TRANSPORT_TESTS = {"test_websocket", "test_sse", "test_longpoll", "test_resume", "test_seam"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "served_by" in metafunc.fixturenames and metafunc.definition.path.stem in TRANSPORT_TESTS:
        metafunc.parametrize("served_by", ["uvicorn_ext", "plain_asgi"])


@pytest.fixture
def served_by() -> str:
    """Which protocols serve the ``gateway`` fixture's servers by default."""
    return "uvicorn_ext"


@pytest.fixture
def gateway(
    valkey_url: str, served_by: str
) -> Callable[..., contextlib.AbstractAsyncContextManager[UvicornServer]]:
    """``async with gateway(**settings_overrides) as server`` → a running gateway.

    ``relay_protocols=False`` serves it with uvicorn's own protocols (plain ASGI sends only);
    by default the transport tests run both ways (``served_by``).
    """
    default = served_by == "uvicorn_ext"

    def start(
        *, relay_protocols: bool = default, **overrides: Any
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
