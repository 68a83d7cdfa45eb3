"""Fixtures of the deploy/ checks: Debian tools installed on demand, and a real relay stack.

``apt_tool(binary, package)`` returns the path of a tool, installing its Debian package first
when it is missing (as root, once per machine, like every fixture that needs a system package).
``relay_stack`` runs a real ingest (uvicorn + httptools, as ``relay-ingest`` does) and a real
gateway on free ports against the session's Valkey.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from relay_devtools.testing import UvicornServer
from relay_devtools.testing.gateway import gateway_settings, run_gateway
from relay_ingest.app import create_app as create_ingest
from relaycore.settings import Settings

AptTool = Callable[[str, str], str]
_APT_LOCK = Path("/tmp/pulsar-relay-apt.lock")


def _apt_install(package: str) -> None:
    if os.geteuid() != 0:
        pytest.fail(f"{package} is missing and only root may apt-get install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # One installer at a time across this machine's test processes (dpkg has its own lock too).
    with _APT_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lists = Path("/var/lib/apt/lists")
        if not any(lists.glob("*Packages*")):
            subprocess.run(["apt-get", "update"], check=True, env=env, timeout=600)
        subprocess.run(
            ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y",
             "--no-install-recommends", package],
            check=True, env=env, timeout=900,
        )  # fmt: skip


@pytest.fixture(scope="session")
def apt_tool() -> AptTool:
    def find(binary: str, package: str) -> str:
        path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin:/sbin")
        if path is None:
            _apt_install(package)
            path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin:/sbin")
        assert path, f"{binary} not found after installing {package}"
        return path

    return find


@dataclasses.dataclass
class RelayStack:
    ingest: UvicornServer
    gateway: UvicornServer


StartStack = Callable[..., contextlib.AbstractAsyncContextManager[RelayStack]]


@pytest.fixture
def relay_stack(valkey_url: str) -> StartStack:
    """``async with relay_stack(**settings) as stack``: ingest and gateway, both serving."""

    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[RelayStack]:
        url = overrides.pop("valkey_url", valkey_url)
        ingest_app = create_ingest(Settings(valkey_url=url, **overrides))
        ingest = UvicornServer(ingest_app, http="httptools", server_header=False)
        async with (
            ingest.running(),
            run_gateway(gateway_settings(url, **overrides)) as gateway,
        ):
            yield RelayStack(ingest=ingest, gateway=gateway)

    return start
