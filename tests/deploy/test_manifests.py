"""Offline checks of what users deploy with: deploy/docker and deploy/k8s.

No Docker engine, no cluster and no network: the Kubernetes manifests are
rendered by a minimal kustomize (namespace, images, replicas; cross-checked
against ``kubectl kustomize`` when kubectl is installed) and validated against
the Kubernetes JSON schemas of ``kubernetes-validate``; the compose file and
the Dockerfile are checked for the structure the docs promise; the entrypoint
renders real node configs that ``load_node_config`` and the node runtime
accept; make-secrets.sh makes certificates ``certificate_check`` accepts; and
one real node is health-checked over mTLS, directly and through the bridge
the kubelet's plaintext gRPC probes use (loopback only).
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from mesh.crypto import NodeIdentity
from mesh.v1 import peer_pb2
from nodes import pki
from nodes.config import load_node_config

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
K8S = REPO / "deploy" / "k8s"
BIN = Path(sys.executable).parent
MESH_CLI = BIN / "mesh"
LABELS = {"app.kubernetes.io/name": "meshwork", "app.kubernetes.io/component": "node"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding"}


def _load_entrypoint() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mesh_entrypoint", DOCKER / "entrypoint.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module


entrypoint = _load_entrypoint()


# --- a minimal kustomize ---------------------------------------------------------------------


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _split_image(image: str) -> tuple[str, str | None]:
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return image, None
    return name, tag


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    """What ``kubectl kustomize`` makes of the fields our kustomization uses.

    Supports ``resources`` (files), ``namespace``, ``images`` (newName,
    newTag) and ``replicas``; any other field fails the test, so the renderer
    cannot silently fall behind the kustomization.
    """
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    supported = {"apiVersion", "kind", "namespace", "resources", "images", "replicas"}
    assert set(kustomization) <= supported, f"unsupported: {set(kustomization) - supported}"
    docs = [
        doc for resource in kustomization["resources"] for doc in _documents(directory / resource)
    ]
    namespace = kustomization.get("namespace")
    images = {image["name"]: image for image in kustomization.get("images", [])}
    replicas = {item["name"]: item["count"] for item in kustomization.get("replicas", [])}
    for doc in docs:
        if namespace and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = namespace
        if doc["kind"] in ("StatefulSet", "Deployment") and doc["metadata"]["name"] in replicas:
            doc["spec"]["replicas"] = replicas[doc["metadata"]["name"]]
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, tag = _split_image(container["image"])
            if name in images:
                new = images[name]
                container["image"] = f"{new.get('newName', name)}:{new.get('newTag', tag)}"
    return docs


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render_kustomization(K8S)


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _mesh_yaml(docs: list[dict[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(
        _one(docs, "ConfigMap", "mesh-config")["data"]["mesh.yaml"]
    )
    return data


def _containers(statefulset: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in statefulset["spec"]["template"]["spec"]["containers"]}


# --- Kubernetes manifests --------------------------------------------------------------------


def test_every_k8s_yaml_parses_and_is_in_the_kustomization() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert files == sorted(kustomization["resources"])
    for path in K8S.glob("*.yaml"):
        for doc in _documents(path):
            assert isinstance(doc, dict)
            assert "kind" in doc


def test_manifests_validate_against_kubernetes_schemas(rendered: list[dict[str, Any]]) -> None:
    utils = pytest.importorskip(
        "kubernetes_validate.utils", reason="pip install kubernetes-validate"
    )
    # 1.27: native gRPC probes and PVC retention policy on by default; and the newest schemas.
    for version in ("1.27", utils.latest_version()):
        for doc in rendered:
            try:
                utils.validate(doc, version, strict=True)
            except utils.ValidationError as exc:
                where = "/".join(str(p) for p in exc.path)
                what = f"{doc['kind']}/{doc['metadata']['name']}"
                pytest.fail(f"k8s {version}: {what}: {where}: {exc.message}")


def test_kubectl_kustomize_agrees_with_the_renderer(rendered: list[dict[str, Any]]) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the Python renderer alone is checked")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0 and "unknown command" in result.stderr:
        pytest.skip(f"this kubectl has no kustomize: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    built = [d for d in yaml.safe_load_all(result.stdout) if d is not None]

    def key(doc: dict[str, Any]) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    assert sorted(built, key=key) == sorted(rendered, key=key)


def test_size_and_image_come_from_the_kustomization(rendered: list[dict[str, Any]]) -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    statefulset = _one(rendered, "StatefulSet", "mesh")
    (size,) = [r["count"] for r in kustomization["replicas"] if r["name"] == "mesh"]
    assert statefulset["spec"]["replicas"] == size
    # The node renders its neighbours from mesh.yaml's replicas: both must agree.
    assert _mesh_yaml(rendered)["replicas"] == size
    (image,) = kustomization["images"]
    for container in _containers(statefulset).values():
        assert container["image"] == f"{image['newName']}:{image['newTag']}"


def test_headless_service_gives_stable_peer_names(rendered: list[dict[str, Any]]) -> None:
    statefulset = _one(rendered, "StatefulSet")
    service = _one(rendered, "Service", statefulset["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    mesh_yaml = _mesh_yaml(rendered)
    assert mesh_yaml["service"] == service["metadata"]["name"]
    assert mesh_yaml["peer_host"] == "{node}.{service}.{namespace}.svc"
    grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc_port["port"] == mesh_yaml["port"]
    node = _containers(statefulset)["node"]
    assert {"name": "grpc", "containerPort": mesh_yaml["port"], "protocol": "TCP"} in node["ports"]
    env = {e["name"]: e for e in node["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_probes_are_native_grpc_against_the_health_bridge(rendered: list[dict[str, Any]]) -> None:
    containers = _containers(_one(rendered, "StatefulSet"))
    node, bridge = containers["node"], containers["health-bridge"]
    assert node["args"] == ["run"]
    assert bridge["args"] == ["bridge"]
    bridge_ports = {p["name"]: p["containerPort"] for p in bridge["ports"]}
    assert bridge_ports == {
        "health": entrypoint.HEALTH_PORT,
        "metrics": entrypoint.METRICS_RELAY_PORT,
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert node[probe]["grpc"] == {"port": entrypoint.HEALTH_PORT}, probe
    # Liveness must tolerate what readiness acts on at once.
    liveness, readiness = node["livenessProbe"], node["readinessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= 15


def test_pods_are_non_root_limited_and_spread(rendered: list[dict[str, Any]]) -> None:
    statefulset = _one(rendered, "StatefulSet")
    pod = statefulset["spec"]["template"]["spec"]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == security["fsGroup"] == 10001
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    for name, container in _containers(statefulset).items():
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), f"{name}: {kind}"
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["capabilities"]["drop"] == ["ALL"], name
    term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    pdb = _one(rendered, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels(statefulset).items()


def pod_labels(statefulset: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = statefulset["spec"]["template"]["metadata"]["labels"]
    return labels


def test_volumes_secret_config_and_state(rendered: list[dict[str, Any]]) -> None:
    statefulset = _one(rendered, "StatefulSet")
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    secret = volumes["pki"]["secret"]
    assert secret["secretName"] == "mesh-nodes"
    # Nobody but the owner and the pod's fsGroup; no write, no execute.
    assert secret["defaultMode"] & ~0o440 == 0
    assert volumes["config"]["configMap"]["name"] == "mesh-config"
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "state"
    node = _containers(statefulset)["node"]
    mounts = {m["name"]: m for m in node["volumeMounts"]}
    assert mounts["state"]["mountPath"] == str(entrypoint.DEFAULT_STATE_DIR)
    assert mounts["pki"]["mountPath"] == str(entrypoint.DEFAULT_PKI_DIR)
    assert mounts["pki"]["readOnly"] is True
    env = {e["name"]: e.get("value") for e in node["env"]}
    assert env["MESH_DEPLOYMENT"] == f"{mounts['config']['mountPath']}/mesh.yaml"


def test_configmap_renders_a_valid_config_for_every_pod(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    deployment = entrypoint.Deployment.model_validate(_mesh_yaml(rendered))
    assert deployment.topology == "ring"
    for ordinal in range(deployment.replicas):
        config = entrypoint.render_config(
            deployment, f"mesh-{ordinal}", tmp_path / "state", namespace="meshwork"
        )
        left, right = (ordinal - 1) % deployment.replicas, (ordinal + 1) % deployment.replicas
        assert {n.address for n in config.neighbours} == {
            f"mesh-{left}.mesh.meshwork.svc:7000",
            f"mesh-{right}.mesh.meshwork.svc:7000",
        }
        path = tmp_path / f"mesh-{ordinal}.yaml"
        config.dump(path)
        assert load_node_config(path) == config


# --- the entrypoint's rendering ------------------------------------------------------------------


def _neighbours(policy: str, replicas: int, node: str, **extra: Any) -> set[str]:
    deployment = entrypoint.Deployment(topology=policy, replicas=replicas, **extra)
    config = entrypoint.render_config(deployment, node, Path("/state"))
    return {n.node for n in config.neighbours}


def test_topology_policies() -> None:
    assert _neighbours("ring", 5, "mesh-0") == {"mesh-1", "mesh-4"}
    assert _neighbours("ring", 2, "mesh-0") == {"mesh-1"}
    assert _neighbours("ring", 1, "mesh-0") == set()
    assert _neighbours("line", 5, "mesh-0") == {"mesh-1"}
    assert _neighbours("line", 5, "mesh-4") == {"mesh-3"}
    assert _neighbours("full", 4, "mesh-2") == {"mesh-0", "mesh-1", "mesh-3"}
    links = [{"a": "mesh-0", "b": "mesh-2", "cost": 3}, {"a": "mesh-2", "b": "mesh-1"}]
    assert _neighbours("links", 3, "mesh-2", links=links) == {"mesh-0", "mesh-1"}


def test_rendering_refuses_what_cannot_work() -> None:
    with pytest.raises(entrypoint.EntrypointError, match="MESH_REPLICAS"):
        _neighbours("ring", 3, "mesh-3")
    with pytest.raises(entrypoint.EntrypointError, match="-<ordinal>"):
        _neighbours("ring", 3, "mesh")
    with pytest.raises(entrypoint.EntrypointError, match="topology"):
        _neighbours("links", 2, "mesh-0", links=[{"a": "mesh-0", "b": "mesh-7"}])
    with pytest.raises(entrypoint.EntrypointError, match="does not exist"):
        entrypoint.load_deployment({"MESH_DEPLOYMENT": "/nonexistent"})
    with pytest.raises(entrypoint.EntrypointError, match="replicas"):
        entrypoint.load_deployment({"MESH_REPLICAS": "zero"})


def test_environment_overrides_the_deployment_file(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text("mesh: filed\nreplicas: 3\ntopology: line\nsettings: {dead_ms: 1500}\n")
    env = {"MESH_DEPLOYMENT": str(path), "MESH_REPLICAS": "7", "MESH_METRICS_PORT": "none"}
    deployment = entrypoint.load_deployment(env)
    assert (deployment.mesh, deployment.replicas, deployment.topology) == ("filed", 7, "line")
    assert deployment.metrics_port is None
    assert deployment.settings.dead_ms == 1500
    assert entrypoint.node_id_from_env({"POD_NAME": "mesh-3"}) == "mesh-3"
    assert entrypoint.node_id_from_env({"MESH_NODE_ID": "a-1", "POD_NAME": "mesh-3"}) == "a-1"


# --- make-secrets.sh ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not MESH_CLI.exists():
        pytest.skip(f"no mesh CLI at {MESH_CLI}: install the package (make install)")
    if shutil.which("bash") is None or shutil.which("base64") is None:
        pytest.skip("make-secrets.sh needs bash and base64")
    out = tmp_path_factory.mktemp("k8s") / "pki"
    subprocess.run(
        [str(K8S / "make-secrets.sh"), "--out", str(out), "--replicas", "5"],
        env={**os.environ, "MESH_CLI": str(MESH_CLI)},
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def _secrets(out: Path) -> dict[str, dict[str, bytes]]:
    docs = _documents(out / "secrets.yaml")
    return {
        doc["metadata"]["name"]: {k: base64.b64decode(v) for k, v in doc["data"].items()}
        for doc in docs
    }


def test_make_secrets_issues_a_certificate_per_pod(secrets_dir: Path) -> None:
    ca_pem = (secrets_dir / "ca" / "ca.pem").read_bytes()
    check = pki.certificate_check(ca_pem)
    for ordinal in range(5):
        node = f"mesh-{ordinal}"
        folder = secrets_dir / "nodes" / node
        files = pki.node_files(folder / "ca.pem", folder / "node.pem", folder / "node.key")
        assert pki.node_id_from_certificate(files.cert_pem) == node
        for key in ("node.key", "signing.pem", "agreement.pem"):
            assert stat.S_IMODE((folder / key).stat().st_mode) == 0o600
        identity = NodeIdentity.load(node, folder)
        check(
            peer_pb2.IdentityRecord(
                node_id=node,
                signing_key=identity.public.signing_key,
                agreement_key=identity.public.agreement_key,
                certificate=pki.certificate_der(files),
            )
        )
    name = pki.certificate_name((secrets_dir / "ops" / "client.pem").read_bytes())
    assert name is not None and name.role == "client"


def test_make_secrets_writes_valid_secrets_without_the_ca_key(
    secrets_dir: Path, rendered: list[dict[str, Any]]
) -> None:
    assert stat.S_IMODE((secrets_dir / "secrets.yaml").stat().st_mode) == 0o600
    docs = _documents(secrets_dir / "secrets.yaml")
    utils: Any
    try:
        utils = importlib.import_module("kubernetes_validate.utils")
    except ImportError:  # the structure below is still checked
        utils = None
    for doc in docs:
        if utils is not None:
            utils.validate(doc, utils.latest_version(), strict=True)
        assert doc["metadata"]["namespace"] == _one(rendered, "Namespace")["metadata"]["name"]
    secrets = _secrets(secrets_dir)
    assert set(secrets) == {"mesh-ca", "mesh-nodes"}
    assert secrets["mesh-ca"] == {"ca.pem": (secrets_dir / "ca" / "ca.pem").read_bytes()}
    ca_key = (secrets_dir / "ca" / "ca.key").read_bytes()
    for secret in secrets.values():
        assert ca_key not in secret.values()
        assert not any(key.endswith("ca.key") for key in secret)
    expected = {
        f"mesh-{i}.{f}": (secrets_dir / "nodes" / f"mesh-{i}" / f).read_bytes()
        for i in range(5)
        for f in (*entrypoint.TLS_FILES, *entrypoint.KEY_FILES)
    }
    assert secrets["mesh-nodes"] == expected
    # The mesh id the certificates carry is the one the ConfigMap runs.
    name = pki.certificate_name(secrets["mesh-nodes"]["mesh-0.node.pem"])
    assert name is not None and name.mesh_id == _mesh_yaml(rendered)["mesh"]


def _secret_mount(secrets_dir: Path, into: Path) -> Path:
    """The mesh-nodes Secret as the kubelet mounts it: flat keys, group-readable."""
    into.mkdir()
    for key, value in _secrets(secrets_dir)["mesh-nodes"].items():
        (into / key).write_bytes(value)
        (into / key).chmod(0o440)
    return into


def test_pod_2_of_5_renders_and_loads(
    secrets_dir: Path, rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    from nodes.server import build_runtime  # noqa: PLC0415

    deployment_file = tmp_path / "mesh.yaml"
    deployment_file.write_text(_one(rendered, "ConfigMap", "mesh-config")["data"]["mesh.yaml"])
    state = tmp_path / "state"
    env = {
        "POD_NAME": "mesh-2",
        "POD_NAMESPACE": "meshwork",
        "MESH_DEPLOYMENT": str(deployment_file),
        "MESH_PKI_DIR": str(_secret_mount(secrets_dir, tmp_path / "secret")),
        "MESH_STATE_DIR": str(state),
    }
    path = entrypoint.prepare(env)
    assert path == state / "node.yaml"
    config = load_node_config(path)
    assert config.node_id == "mesh-2"
    assert config.mesh == "meshwork"
    assert config.listen == "0.0.0.0:7000"
    assert config.metrics_port == 9101
    assert [(n.node, n.address, n.cost) for n in config.neighbours] == [
        ("mesh-1", "mesh-1.mesh.meshwork.svc:7000", 1),
        ("mesh-3", "mesh-3.mesh.meshwork.svc:7000", 1),
    ]
    assert config.settings.dead_ms == 1200
    for copied in [*(state / "tls").iterdir(), *(state / "keys").iterdir()]:
        assert stat.S_IMODE(copied.stat().st_mode) == 0o600, copied
    # What the node itself does at start: keys from <state>/keys, TLS files checked.
    runtime, credentials = build_runtime(config)
    assert credentials is not None
    assert runtime.node_id == "mesh-2"
    assert runtime.store is not None
    runtime.store.close()
    # Rendering again (a restarted pod) replaces the files in place.
    assert entrypoint.prepare(env) == path


# --- compose ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return data


def _nodes(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if name != "pki"}


def test_compose_runs_five_nodes_after_a_one_shot_pki(compose: dict[str, Any]) -> None:
    services = compose["services"]
    pki_service = services["pki"]
    assert pki_service["command"] == ["init-pki"]
    assert pki_service["healthcheck"] == {"disable": True}
    assert pki_service["restart"] == "no"
    nodes = _nodes(compose)
    assert sorted(nodes) == [f"mesh-{i}" for i in range(5)]
    declared = set(compose["volumes"])
    for name, service in nodes.items():
        env = service["environment"]
        assert env["MESH_NODE_ID"] == name
        assert int(env["MESH_REPLICAS"]) == len(nodes)
        assert env["MESH_ID"] == pki_service["environment"]["MESH_ID"]
        assert service["depends_on"] == {"pki": {"condition": "service_completed_successfully"}}
        assert service["image"] == pki_service["image"]
        mounts = dict(v.split(":", 1) for v in service["volumes"])
        assert mounts["pki"] == "/etc/mesh/pki:ro"
        assert "ca" not in mounts, "the CA key must stay off the nodes"
        assert mounts[f"state-{name[-1]}"] == str(entrypoint.DEFAULT_STATE_DIR)
        assert set(mounts) <= declared
        health = service["healthcheck"]
        assert health["test"][0] == "CMD"
        assert health["test"][-1] == "health"
        assert {"interval", "timeout", "retries", "start_period"} <= set(health)
        assert service["read_only"] is True
    pki_mounts = dict(v.split(":", 1) for v in pki_service["volumes"])
    assert pki_mounts == {"ca": "/etc/mesh/ca", "pki": "/etc/mesh/pki"}


def test_compose_env_renders_a_ring(compose: dict[str, Any], tmp_path: Path) -> None:
    for name, service in _nodes(compose).items():
        # Compose nodes have no deployment file: everything comes from the environment.
        env = {**service["environment"], "MESH_DEPLOYMENT": os.devnull}
        deployment = entrypoint.load_deployment(env)
        config = entrypoint.render_config(deployment, name, tmp_path / name)
        ordinal = int(name[-1])
        assert {n.address for n in config.neighbours} == {
            f"mesh-{(ordinal - 1) % 5}:7000",
            f"mesh-{(ordinal + 1) % 5}:7000",
        }


def test_compose_init_pki_is_idempotent(tmp_path: Path) -> None:
    if not MESH_CLI.exists():
        pytest.skip(f"no mesh CLI at {MESH_CLI}")
    env = {
        "MESH_DEPLOYMENT": os.devnull,
        "MESH_ID": "compose",
        "MESH_REPLICAS": "2",
        "MESH_CA_DIR": str(tmp_path / "ca"),
        "MESH_PKI_DIR": str(tmp_path / "pki"),
        "MESH_CLI": str(MESH_CLI),
    }
    assert entrypoint.init_pki(env) == ["mesh-0", "mesh-1"]
    before = {p: p.read_bytes() for p in (tmp_path / "pki").rglob("*") if p.is_file()}
    assert {p.relative_to(tmp_path / "pki").parts[0] for p in before} == {"mesh-0", "mesh-1", "ops"}
    entrypoint.init_pki(env)  # a restarted init service changes nothing
    assert {p: p.read_bytes() for p in before} == before


# --- Dockerfile -------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = path.read_text().replace("\\\n", " ")
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_dockerfile_is_slim_non_root_with_a_grpc_healthcheck() -> None:
    instructions = _instructions(DOCKER / "Dockerfile")
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert froms and all(rest.startswith("python:3.11-slim") for rest in froms)
    final = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM") :]
    users = [rest for word, rest in final if word == "USER"]
    assert users, "the image must switch to a non-root user"
    assert users[-1].split(":")[0] not in ("root", "0")
    (health,) = [rest for word, rest in final if word == "HEALTHCHECK"]
    assert "CMD" in health and "health" in health
    (entry,) = [rest for word, rest in final if word == "ENTRYPOINT"]
    assert entry.startswith("["), "exec form, so the node is PID 1 and gets SIGTERM"
    assert "mesh-entrypoint" in entry
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "pip install ." in runs
    assert "[dev]" not in runs
    # Every COPY source from the build context exists, and the ignore file keeps it.
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    for word, rest in instructions:
        if word != "COPY" or "--from=" in rest:
            continue
        sources = [part for part in shlex.split(rest) if not part.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), source
            assert f"!{source.rstrip('/')}" in [rule.rstrip("/") for rule in ignore], source


def test_entrypoint_commands_match_the_manifests() -> None:
    # The compose and k8s files name sub-commands; an unknown one would exec a missing program.
    source = (DOCKER / "entrypoint.py").read_text()
    for command in ("run", "render", "init-pki", "health", "bridge", "metrics"):
        assert f'command == "{command}"' in source


# --- health over mTLS, and the bridge the kubelet probes -----------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def running_node(secrets_dir: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    """One real node from the rendered config, via the entrypoint's `run` (exec)."""
    port = _free_port()
    env = {
        **os.environ,
        "MESH_NODE_ID": "mesh-0",
        "MESH_DEPLOYMENT": os.devnull,
        "MESH_ID": "meshwork",
        "MESH_REPLICAS": "1",
        "MESH_PORT": str(port),
        "MESH_LISTEN_HOST": "127.0.0.1",
        "MESH_METRICS_PORT": str(_free_port()),
        "MESH_PKI_DIR": str(_secret_mount(secrets_dir, tmp_path / "secret")),
        "MESH_STATE_DIR": str(tmp_path / "state"),
        "MESH_CLI": str(MESH_CLI),
    }
    log = (tmp_path / "node.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, str(DOCKER / "entrypoint.py"), "run"], env=env, stdout=log, stderr=log
    )
    try:
        upstream = entrypoint.Upstream.from_env(env)
        deadline = time.monotonic() + 30
        while entrypoint.check_health(upstream, timeout=1.0) != "SERVING":
            assert process.poll() is None, (tmp_path / "node.log").read_text()
            assert time.monotonic() < deadline, "node did not serve within 30 s"
            time.sleep(0.2)
        yield {**env, "PID": str(process.pid)}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def test_health_and_bridge_against_a_real_node(running_node: dict[str, str]) -> None:
    import grpc  # noqa: PLC0415
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    env = running_node
    upstream = entrypoint.Upstream.from_env(env)
    assert entrypoint.check_health(upstream) == "SERVING"
    # Without the mesh's client certificate the node's port refuses plaintext probes.
    plaintext = entrypoint.Upstream(upstream.address, upstream.node_id)
    assert entrypoint.check_health(plaintext, timeout=1.0) == "UNREACHABLE"
    metrics_port = int(env["MESH_METRICS_PORT"])
    relay_port = _free_port()

    async def probe() -> list[str]:
        server, port, relay = await entrypoint.serve_bridge(
            upstream, "127.0.0.1:0", ("127.0.0.1", relay_port), ("127.0.0.1", metrics_port)
        )
        statuses = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)

                async def check() -> str:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

                statuses.append(await check())
                reader, writer = await asyncio.open_connection("127.0.0.1", relay_port)
                writer.write(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                await writer.drain()
                body = await asyncio.wait_for(reader.read(), timeout=5)
                writer.close()
                statuses.append("metrics" if b"mesh_routes" in body else body[:200].decode())
                os.kill(int(env["PID"]), signal.SIGTERM)
                for _ in range(100):
                    status = await check()
                    if status != "SERVING":
                        break
                    await asyncio.sleep(0.1)
                statuses.append(status)
        finally:
            assert relay is not None
            relay.close()
            await server.stop(None)
        return statuses

    assert asyncio.run(probe()) == ["SERVING", "metrics", "NOT_SERVING"]
