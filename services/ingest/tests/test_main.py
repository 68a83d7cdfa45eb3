"""``relay-ingest`` / ``python -m relay_ingest`` as real processes: config errors, JSON logs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relay_devtools.testing import free_port


def environment(**relay: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update({f"RELAY_{name}": value for name, value in relay.items()})
    return env


def start_ingest(**relay: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "relay_ingest"],
        env=environment(**relay),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Its own process group: with RELAY_WORKERS > 1 the workers must die with it.
        start_new_session=True,
    )


def wait_healthy(url: str, process: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"ingest exited: {process.communicate()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("ingest did not answer /health")


@pytest.fixture
def stop_later() -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        # The whole group: a worker left behind would hold stdout open and hang communicate().
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("INGEST_PORT", "eighty"),
        ("MAX_BODY_BYTES", "lots"),
        ("VALKEY_URL", "http://localhost:6379"),
        ("RATE_LIMIT", "10/fortnight"),
    ],
)
def test_invalid_setting_exits_1_with_one_line_naming_it(variable: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay_ingest"],
        env=environment(**{variable: value}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"RELAY_{variable}" in lines[0]
    assert result.stdout == ""


def test_unreadable_key_file_names_its_variable(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay_ingest"],
        env=environment(
            AUTH="jwt", JWT_PUBLIC_KEY_FILE=str(tmp_path / "missing.pem"), JWT_ALGORITHMS="RS256"
        ),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "RELAY_JWT_PUBLIC_KEY_FILE" in lines[0]


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "relay-ingest"
    result = subprocess.run(
        [str(script)], env=environment(WORKERS="0"), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert "RELAY_WORKERS" in result.stderr


def test_json_logs_every_stdout_line_is_json(
    valkey_url: str, topic: str, stop_later: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    process = start_ingest(
        VALKEY_URL=valkey_url, INGEST_HOST="127.0.0.1", INGEST_PORT=str(port), LOG_FORMAT="json"
    )
    stop_later.append(process)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process)
    secret = "Bearer secret-token-that-must-never-be-logged"
    published = httpx.post(
        url + "/api/v1/messages",
        json={"topic": topic, "payload": {"card": "4111-1111"}},
        headers={"authorization": secret},
    )
    assert published.status_code == 201
    assert "server" not in published.headers
    assert httpx.get(url + "/nowhere").status_code == 404
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=30)
    # uvicorn re-raises the signal once it has shut down, so the exit status says SIGTERM.
    assert process.returncode in (0, -signal.SIGTERM)
    lines = stdout.splitlines()
    events = [json.loads(line) for line in lines]  # every line must parse
    assert all(isinstance(event, dict) for event in events)
    assert any(e["event"].startswith("Finished server process") for e in events)
    access = [e for e in events if e.get("logger") == "uvicorn.access"]
    assert any("POST /api/v1/messages" in e["event"] and "201" in e["event"] for e in access)
    assert "secret-token" not in stdout
    assert "4111-1111" not in stdout


def test_several_workers_and_no_access_log(
    valkey_url: str, topic: str, stop_later: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    process = start_ingest(
        VALKEY_URL=valkey_url,
        INGEST_HOST="127.0.0.1",
        INGEST_PORT=str(port),
        WORKERS="2",
        LOG_FORMAT="json",
        ACCESS_LOG="false",
    )
    stop_later.append(process)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process)
    for n in range(4):
        response = httpx.post(url + "/api/v1/messages", json={"topic": topic, "payload": n})
        assert response.status_code == 201
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=30)
    events = [json.loads(line) for line in stdout.splitlines()]
    assert any(e["event"].startswith("Started server process") for e in events)
    assert not [e for e in events if e.get("logger") == "uvicorn.access"]  # RELAY_ACCESS_LOG
