"""``make run`` (``python -m relay_devtools.devrun``) as a real subprocess on free ports.

The process list is data (``--only``), so these tests run the embedded Valkey alone; the full
stack (ingest + gateway) runs the same code path with more entries.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from glide import Batch, RequestError

from relay_devtools.devrun import DevRunConfig, acl_password, plan
from relay_devtools.testing.servers import free_port
from relaycore.ids import StreamId
from relaycore.streams import StreamRetention, add_publish, ensure_functions, read_after
from relaycore.valkey import ValkeyDsn, create_client

REPO = Path(__file__).resolve().parents[3]
RETAIN = StreamRetention(maxlen=1000, max_age_ms=0, idempotency_ttl_ms=60_000)


def _environ(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(overrides)
    return env


class DevRun:
    """One ``python -m relay_devtools.devrun`` in its own process group, like a terminal job."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "relay_devtools.devrun", *args],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop(self, signum: int) -> int:
        # Ctrl-C in a terminal signals the whole foreground process group.
        os.killpg(self.process.pid, signum)
        return self.process.wait(timeout=20)

    def kill(self) -> None:
        if self.process.poll() is None:
            for child in self.descendants():
                child.kill()
            self.process.kill()
            self.process.wait(timeout=10)


def _wait_for_valkey(port: int, run: DevRun, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run.process.poll() is not None:
            raise AssertionError(f"devrun exited early:\n{run.log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"Valkey did not come up on {port}:\n{run.log.read_text()}")


def _wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        time.sleep(0.05)
    return alive


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def stack_env(tmp_path: Path) -> dict[str, str]:
    return _environ(
        RELAY_VALKEY_PORT=str(free_port()),
        RELAY_INGEST_PORT=str(free_port()),
        RELAY_GATEWAY_PORT=str(free_port()),
        RELAY_DATA_DIR=str(tmp_path / "data"),
    )


def _url(env: dict[str, str], user: str) -> str:
    password = acl_password(REPO / "valkey.conf", user)
    return f"valkey://{user}:{password}@127.0.0.1:{env['RELAY_VALKEY_PORT']}"


async def test_valkey_runs_under_repo_conf_and_sigint_stops_everything(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    port = int(stack_env["RELAY_VALKEY_PORT"])
    run = DevRun(stack_env, tmp_path / "run1.log", "--only", "valkey")
    try:
        _wait_for_valkey(port, run)
        pids = [child.pid for child in run.descendants()]
        names = [child.name() for child in run.descendants()]
        assert "valkey-server" in names
        # The service users of the repo's valkey.conf exist: this is the real config.
        ingest = await create_client(ValkeyDsn.from_dsn(_url(stack_env, "ingest")), name="t")
        try:
            await ensure_functions(ingest)
            batch = Batch(is_atomic=False)
            add_publish(batch, "devrun", b'{"msg":"Hello"}', None, None, RETAIN)
            ((first_id, _),) = await ingest.exec(batch, raise_on_error=True)  # type: ignore[misc]  # one fcall result
            with pytest.raises(RequestError, match="no permissions"):  # ingest is no admin
                await ingest.custom_command(["CONFIG", "GET", "dir"])
        finally:
            await ingest.close()
        assert run.stop(signal.SIGINT) == 0
    finally:
        run.kill()
    assert _wait_gone(pids) == []
    assert (Path(stack_env["RELAY_DATA_DIR"]) / "valkey" / "appendonlydir").is_dir()

    # A second run replays the AOF: the message is still there; SIGTERM stops it the same way.
    again = DevRun(stack_env, tmp_path / "run2.log", "--only", "valkey")
    try:
        _wait_for_valkey(port, again)
        pids = [child.pid for child in again.descendants()]
        gateway = await create_client(ValkeyDsn.from_dsn(_url(stack_env, "gateway")), name="t")
        try:
            entries = await read_after(gateway, "devrun", StreamId(0, 0), 10)
        finally:
            await gateway.close()
        assert [(e.id, e.payload) for e in entries] == [
            (StreamId.parse(first_id), b'{"msg":"Hello"}')
        ]
        assert again.stop(signal.SIGTERM) == 0
    finally:
        again.kill()
    assert _wait_gone(pids) == []


@pytest.mark.parametrize(
    ("variable", "processes"),
    [("RELAY_VALKEY_PORT", "valkey"), ("RELAY_INGEST_PORT", "valkey,ingest")],
)
def test_busy_port_is_one_clear_line(
    stack_env: dict[str, str], variable: str, processes: str
) -> None:
    # Held on loopback: the services bind 0.0.0.0, which collides with it too.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        stack_env[variable] = str(port)
        result = subprocess.run(
            [sys.executable, "-m", "relay_devtools.devrun", "--only", processes],
            cwd=REPO,
            env=stack_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {port}" in lines[0]
    assert variable in lines[0]


def test_invalid_port_variable_is_one_line(stack_env: dict[str, str]) -> None:
    stack_env["RELAY_GATEWAY_PORT"] = "99999"
    result = subprocess.run(
        [sys.executable, "-m", "relay_devtools.devrun"],
        cwd=REPO,
        env=stack_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "RELAY_GATEWAY_PORT" in result.stderr


def test_plan_gives_each_service_its_acl_user(tmp_path: Path) -> None:
    env = _environ(RELAY_VALKEY_PORT="7000", RELAY_INGEST_PORT="7001", RELAY_DATA_DIR="d")
    config = DevRunConfig.from_env(env, REPO)
    processes = {p.name: p for p in plan(config)}
    assert list(processes) == ["valkey", "ingest", "gateway"]
    assert processes["valkey"].port == 7000
    assert str(REPO / "d" / "valkey") in processes["valkey"].command
    assert str(REPO / "valkey.conf") in processes["valkey"].command
    ingest, gateway = processes["ingest"], processes["gateway"]
    assert Path(ingest.command[0]).name == "relay-ingest"
    assert Path(gateway.command[0]).name == "relay-gateway"
    assert ingest.port == 7001
    assert gateway.port == 8081
    assert ingest.env["RELAY_VALKEY_URL"] == "valkey://ingest:relay-dev-ingest@127.0.0.1:7000"
    assert gateway.env["RELAY_VALKEY_URL"] == "valkey://gateway:relay-dev-gateway@127.0.0.1:7000"
    # Dev drain stays below honcho's 5 s SIGKILL unless the user chose a grace.
    assert gateway.env["RELAY_SHUTDOWN_GRACE"] == "4s"
    assert gateway.env["RELAY_SHUTDOWN_DRAIN"] == "1s"
    assert ingest.env["RELAY_SHUTDOWN_GRACE"] == "4s"
    assert "ws://localhost:8081/api/v1/ws" in gateway.urls
    chosen = DevRunConfig.from_env({**env, "RELAY_SHUTDOWN_GRACE": "10s"}, REPO)
    assert "RELAY_SHUTDOWN_GRACE" not in plan(chosen, ["gateway"])[0].env
    with pytest.raises(ValueError, match="unknown process"):
        plan(config, ["valkey", "redis"])


def _wait_ready(url: str, run: DevRun, timeout: float = 40.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run.process.poll() is not None:
            raise AssertionError(f"devrun exited early:\n{run.log.read_text()}")
        try:
            if httpx.get(f"{url}/ready", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never became ready:\n{run.log.read_text()}")


@pytest.mark.slow
def test_full_stack_publish_deliver_and_ctrl_c(stack_env: dict[str, str], tmp_path: Path) -> None:
    """What `make run` promises: all three up under their ACL users, a publish reaches a
    consumer, Ctrl-C leaves nothing running, and the next run still has the message."""
    import httpx

    ingest = f"http://127.0.0.1:{stack_env['RELAY_INGEST_PORT']}"
    gateway = f"http://127.0.0.1:{stack_env['RELAY_GATEWAY_PORT']}"
    run = DevRun(stack_env, tmp_path / "full1.log")
    try:
        _wait_ready(ingest, run)
        _wait_ready(gateway, run)
        pids = [child.pid for child in run.descendants()]
        published = httpx.post(
            f"{ingest}/api/v1/messages", json={"topic": "test", "payload": {"msg": "Hello"}}
        )
        assert published.status_code == 201, published.text
        message_id = published.json()["id"]
        polled = httpx.get(f"{gateway}/api/v1/poll", params={"topic": "test", "since": "0"})
        assert polled.status_code == 200, polled.text
        assert [m["id"] for m in polled.json()["messages"]] == [message_id]
        assert run.stop(signal.SIGINT) == 0
    finally:
        run.kill()
    assert _wait_gone(pids) == []

    again = DevRun(stack_env, tmp_path / "full2.log")
    try:
        _wait_ready(gateway, again)
        polled = httpx.get(f"{gateway}/api/v1/poll", params={"topic": "test", "since": "0"})
        assert [m["payload"] for m in polled.json()["messages"]] == [{"msg": "Hello"}]
        assert again.stop(signal.SIGTERM) == 0
    finally:
        again.kill()
