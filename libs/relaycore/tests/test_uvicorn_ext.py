"""The fence around uvicorn's internals: all present, loudly named when not, and a fallback."""

from __future__ import annotations

import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import structlog
from packaging.specifiers import SpecifierSet
from uvicorn.supervisors.multiprocess import Multiprocess, Process

import relaycore.uvicorn_ext as uvicorn_ext
from relaycore.uvicorn_ext import server_protocols
from relaycore.uvicorn_ext.internals import REQUIRED, Requirement, missing
from relaycore.uvicorn_ext.responses import ACCESS_LOG_FORMAT
from relaycore.uvicorn_ext.supervisor import SPAWNING_METHODS, Supervisor

ROOT = Path(__file__).resolve().parents[3]
HTTPTOOLS = "uvicorn.protocols.http.httptools_impl"


def test_every_internal_the_extension_uses_is_in_the_installed_uvicorn() -> None:
    # On failure this lists each missing name, e.g. "...RequestResponseCycle.keep_alive".
    assert missing() == [], f"uvicorn {version('uvicorn')} changed: {missing()}"


def test_the_check_names_what_changed() -> None:
    changed = (
        Requirement(HTTPTOOLS, "RequestResponseCycle", attributes=("keep_alive", "no_such")),
        Requirement(HTTPTOOLS, "HttpToolsProtocol", methods=("on_headers_complete", "gone")),
        Requirement(HTTPTOOLS, "NoSuchClass"),
        Requirement("uvicorn.protocols.no_such_module", "Anything"),
        Requirement(HTTPTOOLS, "RequestResponseCycle", source=(("send", "'%s %s' no such"),)),
    )
    assert missing(changed) == [
        f"{HTTPTOOLS}.RequestResponseCycle.no_such",
        f"{HTTPTOOLS}.HttpToolsProtocol.gone()",
        f"{HTTPTOOLS}.NoSuchClass",
        "uvicorn.protocols.no_such_module",
        f"{HTTPTOOLS}.RequestResponseCycle.send() no longer contains '%s %s' no such",
    ]


def test_prepared_answers_log_in_uvicorns_access_log_format() -> None:
    (cycle,) = [r for r in REQUIRED if r.name == "RequestResponseCycle"]
    assert ("send", repr(ACCESS_LOG_FORMAT)) in cycle.source


@pytest.mark.parametrize("member", ["services/ingest", "services/gateway", "libs/relaycore"])
def test_installed_uvicorn_and_starlette_are_in_the_declared_ranges(member: str) -> None:
    project = tomllib.loads((ROOT / member / "pyproject.toml").read_text())["project"]
    declared: dict[str, SpecifierSet] = {}
    for requirement in project["dependencies"]:
        for name in ("uvicorn", "starlette"):
            if requirement.startswith(name + ">"):
                declared[name] = SpecifierSet(requirement[len(name) :])
    assert set(declared) == {"uvicorn", "starlette"}, project["dependencies"]
    for name, specifiers in declared.items():
        assert specifiers.contains(version(name)), (name, version(name), str(specifiers))
        assert any(spec.operator == "<" for spec in specifiers), f"{name} needs an upper bound"


def test_protocols_are_the_extension_when_uvicorn_has_every_internal() -> None:
    gateway = server_protocols(websockets=True, prepared_responses=True)
    ingest = server_protocols(websockets=False, prepared_responses=False)
    assert gateway.extended
    assert ingest.extended
    assert ingest.ws == "none"
    assert {gateway.http.__name__, gateway.ws.__name__, ingest.http.__name__} == {  # type: ignore[union-attr]
        "LeanHttpProtocol",
        "RelayWebSocketProtocol",
        "CoalescingHttpToolsProtocol",
    }


def test_a_changed_uvicorn_falls_back_to_its_own_protocols(monkeypatch: pytest.MonkeyPatch) -> None:
    gone = [f"{HTTPTOOLS}.RequestResponseCycle.keep_alive"]
    monkeypatch.setattr(uvicorn_ext, "missing", lambda: gone)
    with structlog.testing.capture_logs() as events:
        gateway = server_protocols(websockets=True, prepared_responses=True)
        ingest = server_protocols(websockets=False, prepared_responses=False)
    assert (gateway.http, gateway.ws, gateway.extended) == ("httptools", "websockets-sansio", False)
    assert (ingest.http, ingest.ws, ingest.extended) == ("httptools", "none", False)
    warned = [e["missing"] for e in events if e["event"] == "uvicorn_internals_changed"]
    assert warned == [gone, gone]


def test_uvicorn_supervisor_internals_are_the_ones_the_supervisor_overrides() -> None:
    # Tested with uvicorn 0.54; a newer one must be checked against serving.py before use.
    major, minor = (int(part) for part in version("uvicorn").split(".")[:2])
    assert (major, minor) == (0, 54), (
        "re-check relaycore.uvicorn_ext.supervisor against this uvicorn"
    )
    spawning = {
        name
        for name, method in inspect.getmembers(Multiprocess, inspect.isfunction)
        if "Process(" in inspect.getsource(method)
    }
    assert spawning == set(SPAWNING_METHODS)
    for name in SPAWNING_METHODS:
        assert name in Supervisor.__dict__, name
    # The child runs Process.target, which builds Process.server lazily from _server.
    assert "self.server.run(sockets)" in inspect.getsource(Process.target)
    assert "self._server is None" in inspect.getsource(Process.server.fget)  # type: ignore[attr-defined]  # a property
