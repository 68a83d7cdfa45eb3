"""Fixtures of the gateway tests."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Generator
from typing import Any

import pytest

from relay_devtools.testing import UvicornServer
from relay_devtools.testing.gateway import gateway_settings, run_gateway
from relay_devtools.testing.plugin import Backend

# The transport tests also run on uvicorn's own protocols: what the gateway falls back to when
# the installed uvicorn lacks an internal relaycore.uvicorn_ext uses (plain ASGI sends only).
TRANSPORT_TESTS = {"test_websocket", "test_sse", "test_longpoll", "test_resume", "test_seam"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "served_by" in metafunc.fixturenames and metafunc.definition.path.stem in TRANSPORT_TESTS:
        metafunc.parametrize("served_by", ["uvicorn_ext", "plain_asgi"])


def _deselect_plain_asgi_on_cluster(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The cluster runs of the transport tests use the relay's own protocols only: the
    protocol layer does not depend on the Valkey backend, so plain ASGI x cluster adds time,
    not coverage."""
    keep, dropped = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        chosen = params.params if params is not None else {}
        if chosen.get("served_by") == "plain_asgi" and chosen.get("valkey_backend") == "cluster":
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture
def served_by() -> str:
    """Which protocols serve the ``gateway`` fixture's servers by default."""
    return "uvicorn_ext"


@pytest.fixture
def gateway(
    valkey_backend: Backend, served_by: str
) -> Callable[..., contextlib.AbstractAsyncContextManager[UvicornServer]]:
    """``async with gateway(**settings_overrides) as server`` → a running gateway on the test's
    Valkey backend (the single node, or the cluster for ``@pytest.mark.backends`` tests).

    ``relay_protocols=False`` serves it with uvicorn's own protocols (plain ASGI sends only);
    by default the transport tests run both ways (``served_by``).
    """
    default = served_by == "uvicorn_ext"

    def start(
        *, relay_protocols: bool = default, **overrides: Any
    ) -> contextlib.AbstractAsyncContextManager[UvicornServer]:
        overrides.setdefault("valkey_cluster", valkey_backend.cluster)
        return run_gateway(
            gateway_settings(valkey_backend.url, **overrides), relay_protocols=relay_protocols
        )

    return start


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> Generator[None, None, None]:
    # Hypothesis scans every loaded module for constants while collecting, which touches
    # GLIDE's deprecated compatibility modules (glide.async_commands.*): they warn on any
    # attribute access, and warnings are errors here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Importing from 'glide", DeprecationWarning)
        result = yield
    _deselect_plain_asgi_on_cluster(config, items)
    return result
