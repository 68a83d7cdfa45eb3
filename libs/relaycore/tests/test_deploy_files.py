"""deploy/: every manifest parses and agrees with the code (ports, probes, users, settings).

The Valkey render script is run for real and the config it writes is started on a real
``valkey-server``, so the passwords the deployment sets are the ones that work.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from relaycore.settings import Settings
from relaycore.testing.servers import ValkeyProcess
from relaycore.valkey import ValkeyDsn, create_client
from relaycore.values import parse_duration

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
RENDER = K8S / "valkey-render.sh"
SETTINGS_VARIABLES = {name for name, _ in Settings.variables()}
SERVICES = {"ingest": 8080, "gateway": 8081}
URL = re.compile(r"^valkey://(?P<user>[a-z]+):(?P<password>[^@]+)@(?P<host>[\w.-]+):(?P<port>\d+)$")


def _yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def _acl_users() -> set[str]:
    conf = (REPO / "valkey.conf").read_text()
    return {line.split()[1] for line in conf.splitlines() if line.startswith("user ")}


def _console_scripts() -> set[str]:
    scripts: set[str] = set()
    for member in ("ingest", "gateway"):
        project = tomllib.loads((REPO / "services" / member / "pyproject.toml").read_text())
        scripts |= set(project["project"].get("scripts", {}))
    return scripts


def _k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects = {}
    for resource in kustomization["resources"]:
        for document in yaml.safe_load_all((K8S / resource).read_text()):
            objects[document["kind"], document["metadata"]["name"]] = document
    return objects


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_parses(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents


def test_deploy_tree_is_complete() -> None:
    assert _yaml_files()
    for required in ("kustomization.yaml", "valkey.yaml", "ingest.yaml", "gateway.yaml"):
        assert (K8S / required).is_file()
    assert COMPOSE.is_file()
    assert DOCKERFILE.is_file()


def test_k8s_valkey_conf_is_the_repo_conf() -> None:
    # kustomize reads only files below deploy/k8s, so it holds a copy: it must not drift.
    assert (K8S / "valkey.conf").read_bytes() == (REPO / "valkey.conf").read_bytes()


def test_kustomization_references_existing_files() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    (generator,) = kustomization["configMapGenerator"]
    assert generator["name"] == "relay-valkey-config"
    for file in generator["files"]:
        assert (K8S / file).is_file(), file
    assert {image["name"] for image in kustomization["images"]} == {"pulsar-relay"}


@pytest.mark.parametrize("service", list(SERVICES))
def test_k8s_service_deployment(service: str) -> None:
    objects = _k8s_objects()
    deployment = objects["Deployment", f"relay-{service}"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "pulsar-relay"
    assert container["command"] == [f"relay-{service}"]
    assert container["command"][0] in _console_scripts()
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": SERVICES[service]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["resources"]["requests"].keys() >= {"cpu", "memory"}

    env = _env(container)
    assert {name for name in env if name.startswith("RELAY_")} <= SETTINGS_VARIABLES
    assert env[f"RELAY_{service.upper()}_PORT"] == str(SERVICES[service])
    url = URL.match(env["RELAY_VALKEY_URL"])
    assert url is not None
    assert url["user"] == service
    assert url["user"] in _acl_users()
    assert url["password"] == "$(VALKEY_PASSWORD)"
    assert (url["host"], url["port"]) == ("relay-valkey", "6379")
    secret = env["VALKEY_PASSWORD"]["secretKeyRef"]
    assert secret["key"] in objects["Secret", secret["name"]]["stringData"]
    # Names in $(...) only expand when defined earlier in the list.
    names = [item["name"] for item in container["env"]]
    assert names.index("VALKEY_PASSWORD") < names.index("RELAY_VALKEY_URL")

    # The kubelet's SIGKILL comes after the preStop pause plus the service's own drain.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = parse_duration(env["RELAY_SHUTDOWN_GRACE"])
    assert pod["spec"]["terminationGracePeriodSeconds"] > int(pre_stop[1]) + drain

    k8s_service = objects["Service", f"relay-{service}"]
    assert k8s_service["spec"]["selector"].items() <= labels.items()
    assert k8s_service["spec"]["ports"] == [
        {"name": "http", "port": SERVICES[service], "targetPort": "http"}
    ]


def test_k8s_gateway_scaling() -> None:
    objects = _k8s_objects()
    labels = objects["Deployment", "relay-gateway"]["spec"]["template"]["metadata"]["labels"]
    hpa = objects["HorizontalPodAutoscaler", "relay-gateway"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "relay-gateway",
    }
    assert 1 < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = objects["PodDisruptionBudget", "relay-gateway"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_k8s_valkey_statefulset() -> None:
    objects = _k8s_objects()
    statefulset = objects["StatefulSet", "relay-valkey"]
    spec = statefulset["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert objects["Service", spec["serviceName"]]["spec"]["selector"].items() <= labels.items()
    (claim,) = spec["volumeClaimTemplates"]
    (container,) = pod["containers"]
    assert container["image"].startswith("valkey/valkey:8")
    assert container["command"] == ["valkey-server", "/etc/valkey/valkey.conf"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data"
    assert container["readinessProbe"]
    assert container["livenessProbe"]
    assert container["resources"]["requests"].keys() >= {"cpu", "memory"}

    (init,) = pod["initContainers"]
    assert init["command"] == ["/bin/sh", "/config/valkey-render.sh"]
    env = _env(init)
    assert env["VALKEY_DATA_DIR"] == "/data"
    assert env["VALKEY_CONF"] == "/etc/valkey/valkey.conf"
    secrets = [value["secretKeyRef"] for value in env.values() if isinstance(value, dict)]
    assert len(secrets) == 3
    for ref in secrets:
        assert ref["key"] in objects["Secret", ref["name"]]["stringData"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "relay-valkey-config"
    # The rendered config holds the passwords: memory-backed scratch only.
    assert volumes["rendered"]["emptyDir"]["medium"] == "Memory"


def test_compose_file() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    valkey = services["valkey"]
    assert valkey["image"].startswith("valkey/valkey:8")
    for volume in valkey["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("."):
            assert (COMPOSE.parent / source).resolve().is_file(), source
    assert "valkey-data:/data" in valkey["volumes"]
    build = services["ingest"]["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    for service, port in SERVICES.items():
        spec = services[service]
        assert spec["command"] == [f"relay-{service}"]
        assert spec["ports"] == [f"{port}:{port}"]
        assert f"http://127.0.0.1:{port}/ready" in " ".join(spec["healthcheck"]["test"])
        assert spec["depends_on"]["valkey"]["condition"] == "service_healthy"
        env = spec["environment"]
        assert {name for name in env if name.startswith("RELAY_")} <= SETTINGS_VARIABLES
        url = re.sub(r"\$\{[A-Z_]+:-([^}]+)\}", r"\1", env["RELAY_VALKEY_URL"])
        match = URL.match(url)
        assert match is not None
        assert (match["user"], match["host"], match["port"]) == (service, "valkey", "6379")
        assert parse_duration(spec["stop_grace_period"]) > parse_duration(
            env["RELAY_SHUTDOWN_GRACE"]
        )
    prometheus = yaml.safe_load((COMPOSE.parent / "prometheus.yml").read_text())
    targets = {
        t for job in prometheus["scrape_configs"] for t in job["static_configs"][0]["targets"]
    }
    assert targets == {f"{service}:{port}" for service, port in SERVICES.items()}


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\w+))?", text, flags=re.MULTILINE)
    assert len(stages) >= 2
    assert "uv sync --frozen --no-dev --all-packages" in text
    assert re.search(r"^USER\s+(?!root|0\b)\S+", text, flags=re.MULTILINE)
    assert re.search(r"^EXPOSE\s+8080\s+8081$", text, flags=re.MULTILINE)
    for source in re.findall(r"^COPY\s+(?!--from)(\S+)\s", text, flags=re.MULTILINE):
        assert (REPO / source).exists(), source
    assert (REPO / ".dockerignore").is_file()


def _render(tmp_path: Path, **passwords: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "VALKEY_CONF_TEMPLATE": str(REPO / "valkey.conf"),
        "VALKEY_CONF": str(tmp_path / "etc" / "valkey.conf"),
        "VALKEY_DATA_DIR": str(tmp_path / "data"),
        **passwords,
    }
    return subprocess.run(
        ["/bin/sh", str(RENDER)], env=env, capture_output=True, text=True, timeout=30
    )


PASSWORDS = {
    "VALKEY_ADMIN_PASSWORD": "admin-0123abcd",
    "VALKEY_INGEST_PASSWORD": "ingest_4567efgh",
    "VALKEY_GATEWAY_PASSWORD": "gw-89abCDEF",
}


def test_render_script_sets_the_deployed_passwords(tmp_path: Path) -> None:
    result = _render(tmp_path, **PASSWORDS)
    assert result.returncode == 0, result.stderr
    rendered = tmp_path / "etc" / "valkey.conf"
    text = rendered.read_text()
    assert ">relay-dev-" not in text
    assert "admin-0123abcd" not in text.split("rendered for deployment")[0]
    assert text.rstrip().endswith("requirepass admin-0123abcd")

    # ValkeyProcess binds loopback and its own dir on the command line; everything else,
    # passwords included, comes from the rendered file.
    with ValkeyProcess(config_file=rendered) as server:

        async def check() -> None:
            for user, password in (("ingest", "ingest_4567efgh"), ("gateway", "gw-89abCDEF")):
                client = await create_client(
                    ValkeyDsn.from_dsn(server.url_for(user, password)), name="t", lazy=False
                )
                try:
                    assert await client.ping() == b"PONG"
                finally:
                    await client.close()
            with pytest.raises(Exception, match=r"(?i)auth|password|WRONGPASS"):
                await create_client(
                    ValkeyDsn.from_dsn(server.url_for("ingest", "relay-dev-ingest")),
                    name="t",
                    lazy=False,
                )
            admin = await create_client(
                ValkeyDsn.from_dsn(server.url_for("default", "admin-0123abcd")),
                name="t",
                lazy=False,
            )
            try:
                config = await admin.custom_command(["CONFIG", "GET", "appendfsync"])
                assert config == {b"appendfsync": b"everysec"}
            finally:
                await admin.close()

        asyncio.run(check())


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        ({"VALKEY_INGEST_PASSWORD": ""}, "VALKEY_INGEST_PASSWORD is not set"),
        ({"VALKEY_GATEWAY_PASSWORD": "a/b"}, "VALKEY_GATEWAY_PASSWORD may only hold"),
        ({"VALKEY_ADMIN_PASSWORD": "x y"}, "VALKEY_ADMIN_PASSWORD may only hold"),
    ],
)
def test_render_script_refuses_bad_passwords(
    tmp_path: Path, override: dict[str, str], complaint: str
) -> None:
    result = _render(tmp_path, **{**PASSWORDS, **override})
    assert result.returncode == 1
    assert complaint in result.stderr
    assert not (tmp_path / "etc" / "valkey.conf").exists()
