"""deploy/k8s: the base and every overlay render with ``kubectl kustomize``, every object
validates against the Kubernetes schemas (kubernetes-validate, offline, strict), and the
rendered pods meet Pod Security ``restricted`` and the relay's own operating rules.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from relaycore.settings import Settings, parse_duration

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = ("dev", "prod", "cluster")
TREES = {"base": BASE, **{name: K8S / "overlays" / name for name in OVERLAYS}}
SERVICES = {"ingest": 8080, "gateway": 8081}
KUBERNETES_VERSION = kubernetes_validate.latest_version()
NAMESPACE = "pulsar-relay"
SETTINGS_VARIABLES = {name for name, _ in Settings.variables()}
WORKLOADS = {"Deployment", "StatefulSet", "Job", "CronJob", "DaemonSet"}

Object = dict[str, Any]


@functools.cache
def render(tree: str) -> tuple[Object, ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render deploy/k8s"
    result = subprocess.run(
        [kubectl, "kustomize", str(TREES[tree])], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def objects(tree: str) -> dict[tuple[str, str], Object]:
    return {(o["kind"], o["metadata"]["name"]): o for o in render(tree)}


def pod_template(obj: Object) -> Object:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]  # type: ignore[no-any-return]
    return obj["spec"]["template"]  # type: ignore[no-any-return]


def pods(tree: str) -> list[tuple[str, Object]]:
    return [
        (f"{o['kind']}/{o['metadata']['name']}", pod_template(o))
        for o in render(tree)
        if o["kind"] in WORKLOADS
    ]


def env(container: Object) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def test_flat_layout_is_gone() -> None:
    # The manifests live in base/ and overlays/ only.
    assert not list(K8S.glob("*.yaml"))
    assert {p.name for p in (K8S / "overlays").iterdir()} == set(OVERLAYS)


def test_base_valkey_conf_is_the_repo_conf() -> None:
    # kustomize reads only files below a kustomization, so base/ holds a copy: no drift.
    assert (BASE / "valkey.conf").read_bytes() == (REPO / "valkey.conf").read_bytes()


def test_prod_backup_script_is_the_documented_one() -> None:
    script = (K8S / "overlays" / "prod" / "valkey-backup.sh").read_bytes()
    assert script == (REPO / "deploy" / "backup" / "valkey-backup.sh").read_bytes()


@pytest.mark.parametrize("tree", TREES)
def test_every_object_validates_against_the_kubernetes_schemas(tree: str) -> None:
    rendered = render(tree)
    assert rendered
    for obj in rendered:
        # Raises ValidationError (with the path of the bad field) on any schema violation;
        # strict: unknown fields are errors too, so a typo cannot hide.
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("tree", TREES)
def test_namespace_enforces_pod_security_restricted(tree: str) -> None:
    rendered = objects(tree)
    labels = rendered["Namespace", NAMESPACE]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in rendered.values():
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


@pytest.mark.parametrize("tree", TREES)
def test_every_pod_meets_restricted_with_limits(tree: str) -> None:
    for name, template in pods(tree):
        spec = template["spec"]
        pod_ctx = spec.get("securityContext", {})
        assert pod_ctx.get("runAsNonRoot") is True, name
        assert pod_ctx.get("runAsUser", 0) != 0, name
        assert pod_ctx["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        assert not spec.get("hostNetwork"), name
        assert not spec.get("hostPID"), name
        writable = {
            v["name"]
            for v in spec.get("volumes", [])
            if "emptyDir" in v or "persistentVolumeClaim" in v
        }
        writable |= {c["metadata"]["name"] for c in _claims(tree, name)}
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            where = f"{name}:{container['name']}"
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["capabilities"]["drop"] == ["ALL"], where
            assert not ctx["capabilities"].get("add"), where
            assert ctx.get("privileged", False) is False, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx.get("seccompProfile", pod_ctx["seccompProfile"])["type"] == "RuntimeDefault"
            resources = container["resources"]
            assert resources["requests"].keys() >= {"cpu", "memory"}, where
            assert resources["limits"].keys() >= {"cpu", "memory"}, where
            # Writes only go to emptyDirs or volumes, the root filesystem being read-only.
            for mount in container.get("volumeMounts", []):
                if not mount.get("readOnly"):
                    assert mount["name"] in writable | _config_volumes(spec), (where, mount)
            assert ":" in container["image"] or container["image"] == "pulsar-relay", where
            if container["image"].startswith("valkey/"):
                assert container["image"].count(".") >= 2, f"{where}: pin the Valkey image"


def _claims(tree: str, name: str) -> list[Object]:
    kind, _, short = name.partition("/")
    obj = objects(tree)[kind, short]
    return obj["spec"].get("volumeClaimTemplates", []) if kind == "StatefulSet" else []  # type: ignore[no-any-return]


def _config_volumes(spec: Object) -> set[str]:
    return {v["name"] for v in spec.get("volumes", []) if "configMap" in v or "secret" in v}


@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("service", SERVICES)
def test_services_probes_drain_and_scrape_annotations(tree: str, service: str) -> None:
    rendered = objects(tree)
    deployment = rendered["Deployment", f"relay-{service}"]
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["command"] == [f"relay-{service}"]
    port = SERVICES[service]
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"

    variables = env(container)
    assert {name for name in variables if name.startswith("RELAY_")} <= SETTINGS_VARIABLES
    names = [item["name"] for item in container["env"]]
    assert names.index("VALKEY_PASSWORD") < names.index("RELAY_VALKEY_URL")
    secret = variables["VALKEY_PASSWORD"]["secretKeyRef"]
    assert secret["key"] in rendered["Secret", secret["name"]]["stringData"]
    # preStop pause + the service's own drain + 5 s margin before the kubelet's SIGKILL.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = parse_duration(variables["RELAY_SHUTDOWN_GRACE"])
    assert template["spec"]["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + drain + 5

    k8s_service = rendered["Service", f"relay-{service}"]
    assert k8s_service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert (tree == "cluster") == (variables.get("RELAY_VALKEY_CLUSTER") == "true")


def _selects(selector: Object, labels: dict[str, str]) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items()


def _allowed(
    policies: list[Object], direction: str, pod: dict[str, str], peer: dict[str, str], port: int
) -> bool:
    """Whether some policy selecting ``pod`` lets ``peer`` in (or ``pod`` out to ``peer``)."""
    key, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in policies:
        spec = policy["spec"]
        if direction not in spec["policyTypes"] or not _selects(spec["podSelector"], pod):
            continue
        for rule in spec.get(key, []):
            ports = {p["port"] for p in rule.get("ports", [])}
            if ports and port not in ports:
                continue
            targets = rule.get(peers)
            if targets is None or any(
                "podSelector" in t
                and "namespaceSelector" not in t
                and _selects(t["podSelector"], peer)
                for t in targets
            ):
                return True
    return False


def _component(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "pulsar-relay", "app.kubernetes.io/component": name}


@pytest.mark.parametrize("tree", TREES)
def test_network_policies_deny_by_default_and_allow_what_is_needed(tree: str) -> None:
    policies = [o for o in render(tree) if o["kind"] == "NetworkPolicy"]
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny
    assert set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    valkey, ingest, gateway = _component("valkey"), _component("ingest"), _component("gateway")
    for client in (ingest, gateway):
        assert _allowed(policies, "Egress", client, valkey, 6379)
        assert _allowed(policies, "Ingress", valkey, client, 6379)
    assert _allowed(policies, "Ingress", ingest, {"any": "client"}, 8080)
    assert _allowed(policies, "Ingress", gateway, {"any": "client"}, 8081)
    # Nobody else reaches Valkey, and the services do not reach each other.
    assert not _allowed(policies, "Ingress", valkey, {"any": "client"}, 6379)
    assert not _allowed(policies, "Egress", ingest, gateway, 8081)
    if tree == "prod":
        assert _allowed(policies, "Egress", _component("backup"), valkey, 6379)
        assert _allowed(policies, "Ingress", valkey, _component("backup"), 6379)
    if tree == "cluster":
        for port in (6379, 16379):
            assert _allowed(policies, "Egress", valkey, valkey, port)
            assert _allowed(policies, "Ingress", valkey, valkey, port)
        assert _allowed(policies, "Egress", _component("valkey-bootstrap"), valkey, 6379)


def test_dev_is_one_small_replica_each() -> None:
    rendered = objects("dev")
    for service in SERVICES:
        deployment = rendered["Deployment", f"relay-{service}"]
        assert deployment["spec"]["replicas"] == 1
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert parse_memory(container["resources"]["limits"]["memory"]) <= 512 * 2**20
    assert not [k for k in rendered if k[0] in {"HorizontalPodAutoscaler", "CronJob"}]


def parse_memory(value: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(value[:-2]) * units[value[-2:]] if value[-2:] in units else int(value)


def test_prod_scales_spreads_and_backs_up() -> None:
    rendered = objects("prod")
    for service in SERVICES:
        deployment = rendered["Deployment", f"relay-{service}"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        hpa = rendered["HorizontalPodAutoscaler", f"relay-{service}"]
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": f"relay-{service}",
        }
        assert 1 < hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        pdb = rendered["PodDisruptionBudget", f"relay-{service}"]
        assert _selects(pdb["spec"]["selector"], labels)
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} == {
            "topology.kubernetes.io/zone",
            "kubernetes.io/hostname",
        }
        assert all(_selects(c["labelSelector"], labels) for c in spread)
    cronjob = rendered["CronJob", "relay-valkey-backup"]
    template = pod_template(cronjob)
    (container,) = template["spec"]["containers"]
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    script = volumes["scripts"]["configMap"]["name"]
    assert rendered["ConfigMap", script]["data"]["valkey-backup.sh"].startswith("#!/bin/sh")
    claim = volumes["backups"]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in rendered
    variables = env(container)
    assert variables["VALKEY_HOSTS"] == "relay-valkey:6379"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"


def test_cluster_is_a_statefulset_of_primaries_and_replicas_with_a_bootstrap() -> None:
    rendered = objects("cluster")
    statefulset = rendered["StatefulSet", "relay-valkey"]
    job = rendered["Job", "relay-valkey-cluster-bootstrap"]
    (bootstrap,) = job["spec"]["template"]["spec"]["containers"]
    variables = env(bootstrap)
    nodes = variables["VALKEY_NODES"].split()
    replicas = int(variables["REPLICAS_PER_PRIMARY"])
    assert statefulset["spec"]["replicas"] == len(nodes)
    assert nodes == [f"relay-valkey-{n}.relay-valkey:6379" for n in range(len(nodes))]
    assert len(nodes) // (replicas + 1) >= 3  # Valkey Cluster needs at least 3 primaries
    assert bootstrap["command"] == ["/bin/sh", "/scripts/valkey-cluster-bootstrap.sh"]
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    script = rendered["ConfigMap", volumes["scripts"]["configMap"]["name"]]
    local = K8S / "overlays" / "cluster" / "valkey-cluster-bootstrap.sh"
    assert script["data"]["valkey-cluster-bootstrap.sh"] == local.read_text()
    (init,) = statefulset["spec"]["template"]["spec"]["initContainers"]
    assert env(init)["VALKEY_CLUSTER"] == "yes"
    service = rendered["Service", "relay-valkey"]
    assert {p["port"] for p in service["spec"]["ports"]} == {6379, 16379}
    assert service["spec"]["publishNotReadyAddresses"] is True
