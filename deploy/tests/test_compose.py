"""deploy/compose: the compose file validates against the compose-spec schema and agrees with
the code; its nginx config, run on a real nginx in front of two real gateways, upgrades
WebSockets, streams SSE unbuffered and spreads connections over both replicas.

(No Docker engine here: the stack itself cannot be started; this checks what it is made of.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.resources
import json
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from relay_devtools.testing import UvicornServer, free_port
from relay_devtools.testing.gateway import (
    SseReader,
    gateway_settings,
    publish,
    run_gateway,
    ws_client,
)
from relaycore.settings import Settings, parse_duration
from relaycore.valkey import ValkeyClient

from .conftest import AptTool

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
SETTINGS_VARIABLES = {name for name, _ in Settings.variables()}
URL = re.compile(r"^valkey://(?P<user>[a-z]+):(?P<password>[^@]+)@(?P<host>[\w.-]+):(?P<port>\d+)$")
PINNED = re.compile(r"^[\w./-]+:v?\d+\.\d+\.\d+[\w.-]*$")


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def test_compose_validates_against_the_compose_spec() -> None:
    # The compose-spec JSON schema as vendored by check-jsonschema (offline).
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendor / "compose-spec.json").read_text())
    jsonschema.validate(compose(), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"services": {"x": {"image": 5, "restart": "sometimes"}}}, schema)


def test_every_image_is_pinned_and_every_mount_exists() -> None:
    services = compose()["services"]
    for name, spec in services.items():
        assert PINNED.match(spec["image"]) or spec["image"] == "pulsar-relay:dev", (name, spec)
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).resolve().exists(), (name, source)


def test_relay_services_agree_with_the_code() -> None:
    services = compose()["services"]
    build = services["ingest"]["build"]
    assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert services["valkey"]["image"].startswith("valkey/valkey:8")
    assert "valkey-data:/data" in services["valkey"]["volumes"]
    for service, port in (("ingest", 8080), ("gateway", 8081)):
        spec = services[service]
        assert spec["command"] == [f"relay-{service}"]
        assert f"http://127.0.0.1:{port}/ready" in " ".join(spec["healthcheck"]["test"])
        assert spec["depends_on"]["valkey"]["condition"] == "service_healthy"
        assert spec["read_only"] is True
        assert spec["cap_drop"] == ["ALL"]
        env = spec["environment"]
        assert {name for name in env if name.startswith("RELAY_")} <= SETTINGS_VARIABLES
        url = re.sub(r"\$\{[A-Z_]+:-([^}]+)\}", r"\1", env["RELAY_VALKEY_URL"])
        match = URL.match(url)
        assert match is not None
        assert (match["user"], match["host"], match["port"]) == (service, "valkey", "6379")
        assert parse_duration(spec["stop_grace_period"]) > parse_duration(
            env["RELAY_SHUTDOWN_GRACE"]
        )
    # The quickstart: publish on :8080, consume on :8081 (the proxy in front of 2 gateways).
    assert services["ingest"]["ports"] == ["8080:8080"]
    assert services["gateway"]["deploy"]["replicas"] == 2
    assert "ports" not in services["gateway"]
    assert services["gateway-proxy"]["ports"] == ["8081:8081"]


def test_monitoring_profile() -> None:
    services = compose()["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
    for name in ("valkey", "ingest", "gateway", "gateway-proxy"):
        assert "profiles" not in services[name]
    prometheus = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert (
        "../prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro"
        in services["prometheus"]["volumes"]
    )
    # Service discovery by DNS: one target per replica, whatever the replica count.
    jobs = {job["job_name"]: job["dns_sd_configs"] for job in prometheus["scrape_configs"]}
    assert jobs["relay-ingest"] == [
        {"names": ["ingest"], "type": "A", "port": 8080, "refresh_interval": "15s"}
    ]
    assert jobs["relay-gateway"][0]["names"] == ["gateway"]
    assert jobs["relay-gateway"][0]["port"] == 8081

    provisioning = COMPOSE_DIR / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "relay.yml").read_text())[
        "providers"
    ]
    mounts = dict(v.rsplit(":", 2)[:2] for v in services["grafana"]["volumes"] if ":" in v)
    dashboard_mount = mounts["../grafana/relay-dashboard.json"]
    assert Path(dashboard_mount).parent == Path(provider["options"]["path"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


@contextlib.contextmanager
def nginx_in_front(nginx: str, tmp: Path, upstreams: list[int]) -> Iterator[int]:
    """The compose nginx.conf, pointed at local gateways and a free port, running for real."""
    port = free_port()
    conf = (COMPOSE_DIR / "nginx.conf").read_text()
    servers = "\n".join(
        f"        server 127.0.0.1:{p} max_fails=3 fail_timeout=5s;" for p in upstreams
    )
    conf, count = re.subn(r"^\s*server gateway:8081[^;]*;", servers, conf, flags=re.MULTILINE)
    assert count == 1
    conf, count = re.subn(r"listen 8081;", f"listen 127.0.0.1:{port};", conf)
    assert count == 1
    conf = conf.replace("/tmp/", f"{tmp}/")
    conf = conf.replace("worker_processes auto;", "worker_processes 1;\nuser root;")
    (tmp / "nginx.conf").write_text(conf)
    command = [nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", "stderr"]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen([*command, "-g", "daemon off;"], stderr=subprocess.PIPE)
    try:
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


@dataclasses.dataclass
class Proxy:
    """The nginx address, shaped like a server for the test clients (``url``, ``ws_url``)."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@pytest.fixture
async def proxied(
    apt_tool: AptTool, valkey_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Proxy, list[UvicornServer]]]:
    nginx = apt_tool("nginx", "nginx-light")
    settings = gateway_settings(valkey_url)
    async with run_gateway(settings) as one, run_gateway(settings) as two:
        with nginx_in_front(nginx, tmp_path, [one.port, two.port]) as port:
            proxy = Proxy(port)
            async with httpx.AsyncClient(base_url=proxy.url) as http:
                for _ in range(100):
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get("/ready")).status_code == 200:
                            break
                    await asyncio.sleep(0.05)
            yield proxy, [one, two]


async def ws_connections(server: UvicornServer) -> float:
    async with httpx.AsyncClient(base_url=server.url) as http:
        text = (await http.get("/metrics")).text
    line = next(
        x for x in text.splitlines() if x.startswith('relay_gateway_connections{transport="ws"}')
    )
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.slow
async def test_nginx_proxies_websockets_and_unbuffered_sse_to_both_gateways(
    proxied: tuple[Proxy, list[UvicornServer]], valkey_client: ValkeyClient, topic: str
) -> None:
    proxy, gateways = proxied
    async with contextlib.AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(ws_client(proxy))  # type: ignore[arg-type]  # url-shaped
            for _ in range(4)
        ]
        for ws in sockets:
            await ws.subscribe(topic)
        # Round-robin: both replicas hold some of the connections.
        assert [await ws_connections(g) for g in gateways] == [2, 2]
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=proxy.url, timeout=20))
        stream = await stack.enter_async_context(
            http.stream("GET", "/api/v1/sse", params={"topic": topic})
        )
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        sse = SseReader(stream)
        # One small event must arrive on its own, not when some buffer fills.
        (message_id,) = await publish(valkey_client, topic, [{"n": 1}])
        (event,) = await sse.messages(1, wait=5)
        assert event["id"] == message_id
        for ws in sockets:
            (message,) = await ws.messages(1, wait=5)
            assert message["id"] == message_id
