"""deploy/grafana and deploy/prometheus on a real Prometheus (Debian's ``prometheus``).

Prometheus scrapes a real ingest and gateway that just carried traffic, with the alert rules
loaded. Every dashboard query and every alert expression must evaluate without error, name only
metrics the services export, and every rule must report healthy evaluations. ``promtool check
rules`` passes on the rules file.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from relay_devtools.testing import ValkeyProcess, free_port
from relay_devtools.testing.gateway import SseReader, ws_client

from .conftest import AptTool, RelayStack, StartStack

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "relay-dashboard.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
# Grafana's variables, as Grafana would expand them for "All instances".
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$instance": ".*"}
# Words in PromQL that are not metric names.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "rate", "increase", "irate",
    "histogram_quantile", "clamp_min", "clamp_max", "le", "bool", "and", "or", "unless",
    "on", "ignoring", "group_left", "group_right", "offset", "absent", "label_values",
}  # fmt: skip


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def dashboard_queries() -> list[tuple[str, str]]:
    queries = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            queries.append((panel["title"], target["expr"]))
    return queries


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def expand(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers and strings stripped first)."""
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}", "", bare)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)
    names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", bare))
    return {n for n in names - PROMQL_WORDS if not re.fullmatch(r"e\d+|\d.*", n)}


def test_promtool_check_rules(apt_tool: AptTool) -> None:
    promtool = apt_tool("promtool", "prometheus")
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_dashboard_shape() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["includeAll"] is True
    titles = " | ".join(p["title"].lower() for p in board["panels"])
    # The panels contract §11 names.
    for wanted in (
        "publish rate by result", "request latency", "connections by transport",
        "deliveries", "end-to-end delivery lag", "hot-tier hit ratio",
        "slow-consumer disconnects", "valkey errors",
    ):  # fmt: skip
        assert wanted in titles, wanted
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'instance=~"$instance"' in target["expr"], target["expr"]
    assert sum("by (instance" in expr for _, expr in dashboard_queries()) >= 5
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_alerts_cover_the_operating_risks() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert "relay_valkey_up" in exprs["RelayValkeyUnreachable"]
    assert 'status="503"' in exprs["RelayIngestUnavailable"]
    assert 'status=~"5.."' in exprs["RelayHttp5xx"]
    assert "relay_delivery_lag_seconds_bucket" in exprs["RelayDeliveryLagHigh"]
    assert "relay_slow_consumer_disconnects_total" in exprs["RelaySlowConsumerSpike"]
    assert 'relay_ready{service="gateway"}' in exprs["RelayGatewayNotReady"]
    assert "relay_valkey_persistence_ok" in exprs["RelayValkeyPersistenceFailing"]
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"]


class Prometheus:
    def __init__(self, binary: str, tmp: Path, targets: dict[str, str]) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (tmp / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.log.close()


@pytest.fixture
def prometheus_binary(apt_tool: AptTool) -> str:
    return apt_tool("prometheus", "prometheus")


async def _traffic(stack: RelayStack, topic: str) -> None:
    """Publishes, every transport, a resume from memory and one from Valkey, a 404."""
    async with (
        httpx.AsyncClient(base_url=stack.ingest.url, timeout=20) as ingest,
        httpx.AsyncClient(base_url=stack.gateway.url, timeout=20) as gateway,
        ws_client(stack.gateway) as ws,
        gateway.stream("GET", "/api/v1/sse", params={"topic": topic}) as stream,
    ):
        sse = SseReader(stream)
        await ws.subscribe(topic)
        ids = []
        for n in range(5):
            response = await ingest.post("/api/v1/messages", json={"topic": topic, "payload": n})
            assert response.status_code == 201
            ids.append(response.json()["id"])
        await ws.messages(5)
        await sse.messages(5)
        poll = await gateway.get("/api/v1/poll", params={"topic": topic, "since": ids[2]})
        assert poll.status_code == 200
        assert (await ingest.get("/api/v1/topics/never-published-here")).status_code == 404
        assert (
            await ingest.post("/api/v1/messages", json={"topic": "bad topic"})
        ).status_code == 422


async def _get(http: httpx.AsyncClient, path: str, **params: str) -> Any:
    response = await http.get(path, params=params)
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "success", body
    return body["data"]


async def _wait_for(check: Any, what: str, limit: float = 30.0) -> Any:
    deadline = time.monotonic() + limit
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.25)


@pytest.fixture
async def scraped(
    prometheus_binary: str,
    relay_stack: StartStack,
    valkey_process: ValkeyProcess,
    tmp_path: Path,
    topic: str,
) -> AsyncIterator[httpx.AsyncClient]:
    """A Prometheus that has scraped a real ingest and gateway after traffic, rules evaluated."""
    async with relay_stack(valkey_url=valkey_process.url, valkey_timeout=0.5) as stack:
        await _traffic(stack, topic)
        targets = {
            "relay-ingest": f"127.0.0.1:{stack.ingest.port}",
            "relay-gateway": f"127.0.0.1:{stack.gateway.port}",
        }
        server = Prometheus(prometheus_binary, tmp_path, targets)
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:

                async def ready() -> bool:
                    if server.process.poll() is not None:
                        raise AssertionError((tmp_path / "prometheus.log").read_text())
                    try:
                        return (await http.get("/-/ready")).status_code == 200
                    except httpx.TransportError:
                        return False

                await _wait_for(ready, "Prometheus to start")

                async def targets_up() -> bool:
                    data = await _get(http, "/api/v1/targets")
                    healths = [t["health"] for t in data["activeTargets"]]
                    return healths == ["up", "up"]

                await _wait_for(targets_up, "both targets up")

                async def rates_exist() -> bool:
                    # Two scrapes of the lag histogram: rate() over it has a value.
                    data = await _get(
                        http, "/api/v1/query", query="count_over_time(relay_ready[1m])"
                    )
                    return bool(data["result"]) and all(
                        float(r["value"][1]) >= 3 for r in data["result"]
                    )

                await _wait_for(rates_exist, "three scrapes of each target")

                async def rules_evaluated() -> bool:
                    data = await _get(http, "/api/v1/rules")
                    rules = [r for g in data["groups"] for r in g["rules"]]
                    return len(rules) == len(alert_rules()) and all(
                        not r["lastEvaluation"].startswith("0001") for r in rules
                    )

                await _wait_for(rules_evaluated, "every rule evaluated once")
                yield http
        finally:
            server.close()


@pytest.mark.slow
async def test_every_query_evaluates_over_exported_metrics(
    scraped: httpx.AsyncClient, valkey_process: ValkeyProcess
) -> None:
    exported = set(await _get(scraped, "/api/v1/label/__name__/values"))
    assert {"relay_ready", "relay_delivery_lag_seconds_bucket"} <= exported

    board = dashboard()
    queries = [(title, expand(expr)) for title, expr in dashboard_queries()]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["definition"])
            assert inner is not None, variable["definition"]
            values = await _get(
                scraped, f"/api/v1/label/{inner[2]}/values", **{"match[]": inner[1]}
            )
            assert len(values) == 2, (variable["name"], values)  # one per service instance
    queries += [(rule["alert"], rule["expr"]) for rule in alert_rules()]

    for title, expr in queries:
        missing = metric_names(expr) - exported
        assert not missing, f"{title}: {expr} names metrics nobody exports: {missing}"
        # Evaluates without error (a syntax or type error is a 400 with status "error").
        await _get(scraped, "/api/v1/query", query=expr)

    # The core panels have data after the traffic (not just "no error").
    for title, expr in queries:
        if title in {
            "Publish rate by result", "Connections by transport", "Deliveries by transport",
            "End-to-end delivery lag (publish → send)", "Ready (per instance)",
        }:  # fmt: skip
            data = await _get(scraped, "/api/v1/query", query=expr)
            assert data["result"], f"{title}: {expr} is empty after traffic"

    data = await _get(scraped, "/api/v1/rules")
    for group in data["groups"]:
        for rule in group["rules"]:
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
            # A healthy stack fires nothing.
            assert rule["state"] == "inactive", (rule["name"], rule["alerts"])

    # And they mean something: with Valkey gone, the outage alerts' conditions hold (their
    # `for:` clause aside) for both services.
    valkey_process.stop()
    conditions = {rule["alert"]: rule["expr"] for rule in alert_rules()}

    async def outage_seen() -> bool:
        for name in ("RelayValkeyUnreachable", "RelayGatewayNotReady", "RelayIngestNotReady"):
            data = await _get(scraped, "/api/v1/query", query=conditions[name])
            if not data["result"]:
                return False
        data = await _get(scraped, "/api/v1/query", query=conditions["RelayValkeyUnreachable"])
        return {r["metric"]["service"] for r in data["result"]} == {"ingest", "gateway"}

    await _wait_for(outage_seen, "the outage alert conditions", limit=30)
