"""The Kubernetes manifests (deploy/k8s/): rendered by kustomize (kubectl's built-in), validated offline against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields are errors) for the oldest and newest
Kubernetes versions we support, and cross-checked against each other, the image and the server's own code.

The Prometheus Operator's PodMonitor and PrometheusRule are custom resources the Kubernetes schemas do not cover:
the PodMonitor is checked against the fields of its API we use, the PrometheusRule by promtool
(test_deploy_monitoring.py) and by being generated from the tested rules file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_support import DEPLOY, kubectl, require
from deploy_support import dockerfile_model as dm

from nmtserve.server.app import HEALTH_SERVICES
from nmtserve.server.config import ENV_PREFIX, add_flags, load_config
from nmtserve.server.metrics import ServerMetrics
from nmtserve.server.repository import DirectoryRepository

K8S = DEPLOY / "k8s"
KUSTOMIZATIONS = (
    "base",
    "overlays/gpu",
    "overlays/cpu",
    "overlays/dev-repository",
    "examples/model-volume",
    "examples/model-repository",
)
REPOSITORY_KUSTOMIZATIONS = ("overlays/dev-repository", "examples/model-repository")
# Oldest supported (the preStop sleep action is on by default from 1.30) and newest the schemas know.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
POD_MONITOR_ENDPOINT_FIELDS = {
    "port",
    "portNumber",
    "targetPort",
    "path",
    "scheme",
    "params",
    "interval",
    "scrapeTimeout",
    "honorLabels",
    "honorTimestamps",
    "relabelings",
    "metricRelabelings",
    "tlsConfig",
    "authorization",
    "basicAuth",
    "oauth2",
    "proxyUrl",
    "followRedirects",
    "enableHttp2",
    "filterRunning",
}
RELABEL_ACTIONS = {
    "replace",
    "keep",
    "drop",
    "keepequal",
    "dropequal",
    "hashmod",
    "labelmap",
    "labeldrop",
    "labelkeep",
    "lowercase",
    "uppercase",
}


def render(kustomization: str) -> list[dict[str, Any]]:
    tool = require(kubectl, "kubectl (kustomize)")
    out = subprocess.run(
        [str(tool), "kustomize", str(K8S / kustomization)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"kustomize {kustomization}: {out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(name) for name in KUSTOMIZATIONS}


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (server,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return server


def config_toml(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return tomllib.loads(one(docs, "ConfigMap")["data"]["config.toml"])


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_every_manifest_is_valid_for_kubernetes(rendered) -> None:
    checked = 0
    for name, docs in rendered.items():
        for doc in docs:
            if doc["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # custom resources: see the PodMonitor and PrometheusRule tests
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as error:
                    pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): {error}")
                checked += 1
    kinds = {doc["kind"] for doc in rendered["overlays/gpu"]}
    assert {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "PodMonitor",
        "PrometheusRule",
    } <= kinds
    assert checked >= 40


def test_gpu_overlay_asks_for_one_gpu_on_gpu_nodes(rendered) -> None:
    docs = rendered["overlays/gpu"]
    server = container(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert server["resources"]["requests"].get("nvidia.com/gpu", 1) == 1, "extended resources: requests = limits"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"name": "NMTSERVE_DEVICE", "value": "cuda"} in server["env"]
    assert server["image"].endswith(":0.1.0-gpu")
    cpu = rendered["overlays/cpu"]
    assert "nvidia.com/gpu" not in str(one(cpu, "Deployment")), "the CPU overlay must not ask for a GPU"
    assert container(cpu)["image"].endswith(":0.1.0-cpu")
    settings = config_toml(cpu)
    threads = settings["engine_workers"] * settings["threads"]
    assert str(threads) == container(cpu)["resources"]["requests"]["cpu"], "engine threads = the CPU request"


@pytest.mark.parametrize("name", ["overlays/gpu", "overlays/cpu", *REPOSITORY_KUSTOMIZATIONS])
def test_probes_ports_and_image_agree(rendered, name: str) -> None:
    image = dm.parse(DEPLOY / "docker" / "Dockerfile").stages[
        "cpu" if "cpu" in container(rendered[name])["image"] else "gpu"
    ]
    image_env = image.env
    server = container(rendered[name])
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {
        "grpc": int(image_env["NMTSERVE_PORT"]),
        "metrics": int(image_env["NMTSERVE_METRICS_PORT"]),
        "http": int(image_env["NMTSERVE_HTTP_PORT"]),
    }
    assert set(ports.values()) == image.exposed
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = server[probe]["grpc"]
        assert grpc_probe["port"] == ports["grpc"], f"{probe} must ask the gRPC port's health service"
        assert grpc_probe.get("service", "") in HEALTH_SERVICES
    # "": the whole server, SERVING once every configured model is loaded (a repository's too) and not draining
    assert server["startupProbe"]["grpc"]["service"] == ""
    assert server["readinessProbe"]["grpc"]["service"] == ""
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180, "model load and warm-up need minutes"
    uid, _, gid = image.user.partition(":")
    pod = one(rendered[name], "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (int(uid), int(gid))
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert server["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert any(m["mountPath"] == "/tmp" for m in server["volumeMounts"]), "a writable /tmp on a read-only root"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_config_map_is_a_valid_server_config_and_the_grace_period_covers_the_drain(
    rendered, name: str, tmp_path: Path
) -> None:
    docs = rendered[name]
    server = container(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    config_map = one(docs, "ConfigMap")
    volume = next(v for v in pod["volumes"] if v.get("configMap"))
    assert volume["configMap"]["name"] == config_map["metadata"]["name"], "the Deployment mounts the generated map"
    mount = next(m for m in server["volumeMounts"] if m["name"] == volume["name"])
    env = {e["name"]: e["value"] for e in server["env"]}
    assert env["NMTSERVE_CONFIG"] == f"{mount['mountPath']}/config.toml"
    # The server's own configuration loader, with the image's and the pod's environment: no unknown setting, every
    # value in range, and nothing in the file that the image's variables would silently override.
    path = tmp_path / "config.toml"
    path.write_text(config_map["data"]["config.toml"])
    image_env = dm.parse(DEPLOY / "docker" / "Dockerfile").stages["gpu"].env
    environ = {k: v for k, v in {**image_env, **env}.items() if k.startswith(ENV_PREFIX) and k != "NMTSERVE_MODEL"}
    loaded = load_config(environ=environ, config_file=path)
    overridden = {k[len(ENV_PREFIX) :].lower() for k in environ} & set(tomllib.loads(path.read_text()))
    assert not overridden, f"config.toml sets {overridden}, which NMTSERVE_* variables override"
    drain = loaded.config.drain_timeout_s
    pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + drain + 5, f"grace {grace} s < preStop {pre_stop} s + drain {drain} s + 5 s margin"
    assert pre_stop >= 3, "the pod must leave the endpoints before the server stops taking requests"


def test_services_budget_autoscaler_and_monitor_select_the_pods(rendered) -> None:
    docs = rendered["overlays/gpu"]
    deployment = one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], labels)
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
    port_names = {p["name"] for p in container(docs)["ports"]}
    services = {s["metadata"]["name"]: s for s in docs if s["kind"] == "Service"}
    assert set(services) == {"nmtserve", "nmtserve-headless"}
    for service in services.values():
        assert matches(service["spec"]["selector"], labels)
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
        assert "metrics" not in {p["targetPort"] for p in service["spec"]["ports"]}, "clients never see /metrics"
        http = next(p for p in service["spec"]["ports"] if p["name"] == "http")
        assert (http["targetPort"], http["appProtocol"]) == ("http", "http"), "HTTP beside gRPC, on both Services"
    assert services["nmtserve-headless"]["spec"]["clusterIP"] == "None"
    assert services["nmtserve-headless"]["spec"].get("publishNotReadyAddresses", False) is False
    pdb = one(docs, "PodDisruptionBudget")
    assert matches(pdb["spec"]["selector"]["matchLabels"], labels)
    hpa = one(docs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2, "with the budget's maxUnavailable 1, one replica stays during drains"
    monitor = one(docs, "PodMonitor")
    assert matches(monitor["spec"]["selector"]["matchLabels"], labels)
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert set(endpoint) <= POD_MONITOR_ENDPOINT_FIELDS, set(endpoint) - POD_MONITOR_ENDPOINT_FIELDS
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
        for relabel in endpoint.get("relabelings", []):
            assert relabel.get("action", "replace") in RELABEL_ACTIONS
        job = [r for r in endpoint.get("relabelings", []) if r.get("targetLabel") == "job"]
        assert job and job[0]["replacement"] == "nmtserve", "rules and dashboard select job=nmtserve"
    assert set(monitor["spec"]) <= {
        "selector",
        "podMetricsEndpoints",
        "jobLabel",
        "namespaceSelector",
        "podTargetLabels",
        "sampleLimit",
    }


def test_autoscaler_metrics_are_served_by_the_adapter_from_server_gauges(rendered) -> None:
    hpa = one(rendered["overlays/gpu"], "HorizontalPodAutoscaler")
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert wanted, "the autoscaler scales on per-pod custom metrics"
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())["rules"]["custom"]
    served = {rule["name"]["as"]: rule for rule in adapter}
    assert wanted <= set(served), wanted - set(served)
    gauges = {m.name for m in ServerMetrics().registry.collect() if m.type == "gauge"}
    for name in wanted:
        rule = served[name]
        series = rule["seriesQuery"].split("{", 1)[0]
        assert series in gauges, f"{series} is not a gauge of the server"
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]


def test_model_volume_example_mounts_a_model_read_only(rendered) -> None:
    docs = rendered["examples/model-volume"]
    server = container(docs)
    env = {e["name"]: e["value"] for e in server["env"]}
    mount = next(m for m in server["volumeMounts"] if m["name"] == "models")
    assert mount["readOnly"] is True and env["NMTSERVE_MODEL"].startswith(mount["mountPath"] + "/")
    claim = one(docs, "PersistentVolumeClaim")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert "ReadOnlyMany" in claim["spec"]["accessModes"]
    assert claim["metadata"]["namespace"] == one(docs, "Deployment")["metadata"]["namespace"]


def server_flags(server: dict[str, Any]) -> dict[str, Any]:
    """The container's args as the server's own flag parser reads them (the image's entrypoint is `nmtserve serve`)."""
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return vars(parser.parse_args(server.get("args", [])))


@pytest.mark.parametrize("name", REPOSITORY_KUSTOMIZATIONS)
def test_repository_overlays_serve_a_read_only_model_repository(rendered, name: str) -> None:
    docs = rendered[name]
    server = container(docs)
    flags = server_flags(server)
    mount = next(m for m in server["volumeMounts"] if m["name"] == "models")
    assert mount["readOnly"] is True
    assert flags["model_repository"] == Path(mount["mountPath"]), "--model-repository is the mounted volume"
    env = {e["name"]: e["value"] for e in server["env"]}
    assert "NMTSERVE_MODEL" not in env, "model and model_repository are exclusive"
    path_env = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX) and k != "NMTSERVE_CONFIG"}
    loaded = load_config(flags=flags, environ=path_env)  # the server's own validation of the combination
    assert loaded.config.model_repository == Path("/models") and loaded.config.model is None
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "models")
    if name == "examples/model-repository":  # production: one claim every replica mounts read-only
        claim = one(docs, "PersistentVolumeClaim")
        assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}
        assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
        assert claim["metadata"]["namespace"] == one(docs, "Deployment")["metadata"]["namespace"]
        assert container(docs)["image"].endswith(":0.1.0-gpu")


def test_dev_repository_init_container_fills_a_repository_the_server_can_scan(rendered, tmp_path: Path) -> None:
    """The init container's own command, run here with /models pointing at a temporary directory: it writes
    REPO/<model>/<version>/ exports that the server's repository scanner reads as two models with valid manifests."""
    docs = rendered["overlays/dev-repository"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == container(docs)["image"], "the same image: the exports of the server's own version"
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    mount = next(m for m in init["volumeMounts"] if m["name"] == "models")
    assert not mount.get("readOnly", False) and mount["mountPath"] == "/models"
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == "models")
    command = init["command"]
    assert command[:2] == ["python", "-c"]
    code = command[2].replace("'/models/", f"'{tmp_path}/")
    assert code != command[2]
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    models = DirectoryRepository(tmp_path).scan()
    assert set(models) == {"demo", "demo-int8"}
    for model in models.values():
        (version,) = model.versions
        assert version.manifest is not None and not version.error, version.error
        assert version.languages == ("en", "de")
    assert models["demo"].versions[0].precision == "fp32"
    assert models["demo-int8"].versions[0].precision == "int8"
