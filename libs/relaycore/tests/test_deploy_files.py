"""deploy/: every manifest parses, the k8s base agrees with the code (users, ports), and the
Valkey render script works (deploy/tests/ checks the rendered overlays, compose and image).

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

from relay_devtools.testing.servers import ValkeyProcess
from relaycore.valkey import ValkeyDsn, create_client

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s" / "base"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
RENDER = K8S / "valkey-render.sh"
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
    """The base's own documents, as written (test_k8s.py checks the rendered overlays)."""
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
def test_k8s_service_url_names_its_acl_user(service: str) -> None:
    objects = _k8s_objects()
    (container,) = objects["Deployment", f"relay-{service}"]["spec"]["template"]["spec"][
        "containers"
    ]
    env = _env(container)
    assert container["command"][0] in _console_scripts()
    assert env[f"RELAY_{service.upper()}_PORT"] == str(SERVICES[service])
    url = URL.match(env["RELAY_VALKEY_URL"])
    assert url is not None
    assert url["user"] == service
    assert url["user"] in _acl_users()
    assert url["password"] == "$(VALKEY_PASSWORD)"
    assert (url["host"], url["port"]) == ("relay-valkey", "6379")


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


def test_render_script_cluster_mode_starts_a_cluster_node(tmp_path: Path) -> None:
    # The cluster overlay's nodes: VALKEY_CLUSTER=yes renders a config valkey-server accepts in
    # cluster mode, announcing its stable name, with replicas authenticating as the admin.
    env = {
        **PASSWORDS,
        "VALKEY_CLUSTER": "yes",
        "VALKEY_ANNOUNCE_HOSTNAME": "relay-valkey-0.relay-valkey",
    }
    data = tmp_path / "data"
    result = _render(tmp_path, **env)
    assert result.returncode == 0, result.stderr
    rendered = tmp_path / "etc" / "valkey.conf"
    text = rendered.read_text()
    assert f"cluster-config-file {data}/nodes.conf" in text
    assert "masterauth admin-0123abcd" in text
    with ValkeyProcess(config_file=rendered, data_dir=data) as server:

        async def check() -> None:
            admin = await create_client(
                ValkeyDsn.from_dsn(server.url_for("default", "admin-0123abcd")),
                name="t",
                lazy=False,
            )
            try:
                info = await admin.custom_command(["INFO", "cluster"])
                assert b"cluster_enabled:1" in str(info).encode()
                myself = await admin.custom_command(["CLUSTER", "MYID"])
                assert myself
                hostname = await admin.custom_command(
                    ["CONFIG", "GET", "cluster-announce-hostname"]
                )
                assert hostname == {b"cluster-announce-hostname": b"relay-valkey-0.relay-valkey"}
            finally:
                await admin.close()

        asyncio.run(check())
