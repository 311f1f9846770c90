"""The kustomize base and overlays, rendered by the real `kubectl kustomize`, and the
PrometheusRule generated from prometheus/*.yml, checked by `promtool check rules`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .harness import require_tool, run_tool

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parent.parent
KUSTOMIZE = ROOT / "deploy" / "kustomize"
BASE = KUSTOMIZE / "base"
SHARDED = KUSTOMIZE / "overlays" / "sharded"
GENERATOR = ROOT / "scripts" / "gen-prometheusrule"
NAME = "qoder-exporter"
LABELS = {"app.kubernetes.io/name": NAME}
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def overlays() -> list[Path]:
    """Every kustomization: the base and each overlay (a new one is tested by being there)."""
    return [BASE, *sorted(p for p in (KUSTOMIZE / "overlays").iterdir() if p.is_dir())]


def render(directory: Path) -> dict[str, dict[str, Any]]:
    """kubectl kustomize's objects, by kind (one object per kind here)."""
    result = run_tool("kubectl", "kustomize", str(directory))
    assert result.returncode == 0, result.stderr
    objects: dict[str, dict[str, Any]] = {}
    for doc in yaml.safe_load_all(result.stdout):
        assert doc["kind"] not in objects, f"two {doc['kind']} objects"
        objects[doc["kind"]] = doc
    return objects


def pod_spec(objects: dict[str, dict[str, Any]], kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = objects[kind]["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("directory", overlays(), ids=lambda p: p.name)
def test_every_kustomization_renders_consistent_objects(directory: Path) -> None:
    objects = render(directory)
    workload = "Deployment" if directory == BASE else "StatefulSet"
    assert set(objects) == {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        workload,
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
    }
    for kind, obj in objects.items():
        assert obj["metadata"]["labels"] == LABELS, kind
        assert obj["metadata"]["name"].startswith(NAME), kind
    # Every selector selects the workload's pods.
    work = objects[workload]
    pod_labels = work["spec"]["template"]["metadata"]["labels"]
    for selector in (
        work["spec"]["selector"]["matchLabels"],
        objects["Service"]["spec"]["selector"],
        objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items()
    assert objects["ServiceMonitor"]["apiVersion"] == "monitoring.coreos.com/v1"
    monitor = objects["ServiceMonitor"]["spec"]
    assert (
        monitor["selector"]["matchLabels"].items()
        <= objects["Service"]["metadata"]["labels"].items()
    )
    port_names = {p["name"] for p in objects["Service"]["spec"]["ports"]}
    assert [e["port"] for e in monitor["endpoints"]] == ["http"]
    assert "http" in port_names
    assert objects["PodDisruptionBudget"]["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": LABELS},
    }

    pod = pod_spec(objects, workload)
    assert pod["securityContext"] == POD_SECURITY
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == objects["ServiceAccount"]["metadata"]["name"]
    assert objects["ServiceAccount"]["automountServiceAccountToken"] is False
    [container] = pod["containers"]
    assert container["securityContext"] == CONTAINER_SECURITY
    assert container["image"] == f"{NAME}:0.1.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 7637}]
    # The generated ConfigMap's hashed name is what the pods mount, and it is a valid config.
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    assert volumes["token"]["secret"]["secretName"] == "qoder-exporter-token"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config = yaml.safe_load(objects["ConfigMap"]["data"]["config.yml"])
    assert config["api"]["token_file"].startswith(mounts["token"] + "/")
    assert container["args"][:2] == ["--config", mounts["config"] + "/config.yml"]


def test_base_runs_one_process() -> None:
    objects = render(BASE)
    deployment = objects["Deployment"]["spec"]
    assert deployment["replicas"] == 1
    assert deployment["strategy"] == {"type": "Recreate"}
    assert objects["Service"]["spec"].get("clusterIP") is None
    args = pod_spec(objects, "Deployment")["containers"][0]["args"]
    assert not [a for a in args if "shard" in a or a.startswith("--pod")]


def test_sharded_overlay_runs_automatic_shards_behind_a_headless_service() -> None:
    base = render(BASE)
    objects = render(SHARDED)
    sts = objects["StatefulSet"]["spec"]
    service = objects["Service"]
    assert sts["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert sts["podManagementPolicy"] == "Parallel"
    [container] = pod_spec(objects, "StatefulSet")["containers"]
    # kube-state-metrics' automatic sharding: the shard from the pod name's ordinal.
    assert container["env"] == [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    ]
    assert "--pod=$(POD_NAME)" in container["args"]
    assert f"--total-shards={sts['replicas']}" in container["args"]
    assert sts["replicas"] > 1
    assert not [a for a in container["args"] if a.startswith("--shard=")]
    # Apart from the shard flags, the pod is the base Deployment's: no drift.
    base_pod = pod_spec(base, "Deployment")
    shard_pod = pod_spec(objects, "StatefulSet")
    [base_container] = base_pod["containers"]
    shard_args = [a for a in container["args"] if not a.startswith(("--pod=", "--total-shards="))]
    assert shard_args == base_container["args"]
    strip = {"args", "env"}
    assert {k: v for k, v in container.items() if k not in strip} == {
        k: v for k, v in base_container.items() if k not in strip
    }
    assert {k: v for k, v in shard_pod.items() if k != "containers"} == {
        k: v for k, v in base_pod.items() if k != "containers"
    }


def test_prometheusrule_is_the_fresh_generation_of_prometheus_rule_files() -> None:
    fresh = subprocess.run(
        [sys.executable, str(GENERATOR), "--stdout"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    committed = (BASE / "prometheusrule.yaml").read_text()
    assert committed == fresh, "run scripts/gen-prometheusrule and commit the result"
    check = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stderr
    # Same groups, same rules, same order as the files a plain Prometheus loads.
    rule = yaml.safe_load(committed)
    groups = [
        g
        for name in ("rules.yml", "thresholds.yml", "alerts.yml")
        for g in yaml.safe_load((ROOT / "prometheus" / name).read_text())["groups"]
    ]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == groups


def test_prometheusrule_check_fails_when_a_rule_file_changes(tmp_path: Path) -> None:
    """--check is the drift alarm: a copy of the repository with one edit must fail it."""
    for part in ("scripts/gen-prometheusrule", "deploy/kustomize/base/prometheusrule.yaml"):
        (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / part).write_text((ROOT / part).read_text())
    (tmp_path / "prometheus").mkdir()
    for name in ("rules.yml", "thresholds.yml", "alerts.yml"):
        text = (ROOT / "prometheus" / name).read_text()
        if name == "rules.yml":
            text = text.replace("+ 0.25)", "+ 0.3)")
        (tmp_path / "prometheus" / name).write_text(text)
    check = subprocess.run(
        [sys.executable, str(tmp_path / "scripts" / "gen-prometheusrule"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 1
    assert "out of date" in check.stderr


@pytest.mark.parametrize("directory", overlays(), ids=lambda p: p.name)
def test_rendered_prometheusrule_groups_pass_promtool(directory: Path, tmp_path: Path) -> None:
    require_tool("promtool")
    groups = render(directory)["PrometheusRule"]["spec"]["groups"]
    rules = tmp_path / "groups.yml"
    rules.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    result = run_tool("promtool", "check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
