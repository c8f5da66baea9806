"""Every manifest under deploy/ validates offline, and the objects agree with one another."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from k8s_manifests import (
    CRD_SCHEMAS,
    K8S,
    K8S_VERSIONS,
    ROOT,
    base_docs,
    find,
    kubectl,
    kustomize,
    load_docs,
    manifest_files,
    server_container,
    validate,
)

needs_kubectl = pytest.mark.skipif(kubectl() is None, reason="kubectl (for kustomize) not installed")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_manifest_validates(path: Path, version: str) -> None:
    docs = load_docs(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        validate(doc, version)


def test_every_crd_kind_we_ship_has_a_schema() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for p in manifest_files() for d in load_docs(p)}
    custom = {k for k in kinds if not re.match(r"^(v1|[a-z]+(\.k8s\.io)?/v[0-9a-z]+)$", k[0])}
    assert custom == set(CRD_SCHEMAS), "a custom resource without a schema would go unchecked"


def _deployment() -> dict:
    return find(base_docs(), "Deployment", "abstain")


def _kserve(kind: str) -> dict:
    return find([d for p in manifest_files() for d in load_docs(p)], kind)


def _set(doc: dict, path: str, value: object) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(last) if last.isdigit() else last] = value
    return doc


@pytest.mark.parametrize(("kind", "path", "value"), [
    ("Deployment", "spec.template.spec.containers.0.livenessProbe.httpGett", {"path": "/"}),
    ("Deployment", "spec.template.spec.containers.0.ports.0.containerPort", "eight thousand"),
    ("Deployment", "spec.template.spec.securityContext.runAsUser", "abstain"),
    ("ServingRuntime", "spec.containers", []),
    ("ServingRuntime", "spec.supportedModelFormats.0.priority", 0),
    ("ServingRuntime", "spec.containers.0.imagePullPolicy", ["Always"]),
    ("ServingRuntime", "spec.protocolVersions", ["v3"]),
    ("InferenceService", "spec.predictor.scaleMetric", "latency"),
    ("InferenceService", "spec.predictor.model.modelFormat", {"version": "1"}),
    ("InferenceService", "spec.predictor.model.resources.limts", {}),
    ("ServiceMonitor", "spec.endpoints.0.interval", "15 seconds"),
    ("ServiceMonitor", "spec.selector.matchLabels", ["app"]),
])
def test_validator_rejects_broken_manifests(kind: str, path: str, value: object) -> None:
    doc = _deployment() if kind == "Deployment" else _kserve(kind)
    validate(doc, K8S_VERSIONS[0])                      # the original is fine ...
    with pytest.raises(jsonschema.ValidationError):     # ... and one wrong field is caught
        validate(_set(doc, path, value), K8S_VERSIONS[0])


def test_base_kustomization_lists_every_manifest() -> None:
    kust = load_docs(K8S / "base" / "kustomization.yaml")[0]
    on_disk = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == on_disk
    assert [i["name"] for i in kust["images"]] == [server_container(_deployment())["image"].split(":")[0]]


def test_no_secret_values_committed() -> None:
    for path in (ROOT / "deploy").rglob("*.yaml"):
        for doc in load_docs(path):
            if isinstance(doc, dict):
                assert doc.get("kind") != "Secret", f"{path}: Secrets are created at deploy time"


@needs_kubectl
@pytest.mark.parametrize("overlay", ["base", "overlays/cpu", "overlays/s3-models"])
def test_kustomize_output_validates(overlay: str) -> None:
    docs = kustomize(K8S / overlay)
    kinds = sorted(d["kind"] for d in docs)
    for doc in docs:
        for version in K8S_VERSIONS:
            validate(doc, version)
    dep = find(docs, "Deployment", "abstain")
    pod = dep["spec"]["template"]["spec"]
    server = server_container(dep)
    text = yaml.safe_dump(docs)
    if overlay == "base":
        assert kinds == sorted(["ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                                "PersistentVolumeClaim", "PodDisruptionBudget", "Service",
                                "ServiceMonitor"])
        assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    elif overlay == "overlays/cpu":
        assert "nvidia.com/gpu" not in text and "tolerations" not in pod
        assert find(docs, "ConfigMap", "abstain-config")["data"]["ABSTAIN_DEVICE"] == "cpu"
    else:
        assert "PersistentVolumeClaim" not in kinds and "persistentVolumeClaim" not in text
        models = next(v for v in pod["volumes"] if v["name"] == "models")
        assert "emptyDir" in models
        (init,) = pod["initContainers"]
        init_mount = next(m for m in init["volumeMounts"] if m["name"] == "models")
        server_mount = next(m for m in server["volumeMounts"] if m["name"] == "models")
        assert init_mount["mountPath"] == init["args"][-1] == server_mount["mountPath"]
        assert init["args"][:2] == ["s3", "sync"] and init["args"][-2].startswith("s3://")
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert init["securityContext"]["readOnlyRootFilesystem"] is True
        assert any(m["mountPath"] == "/tmp" for m in init["volumeMounts"])   # HOME=/tmp


def test_objects_select_each_other() -> None:
    docs = base_docs()
    dep, svc = _deployment(), find(docs, "Service", "abstain")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    pdb = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    mon = find(docs, "ServiceMonitor")
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert {e["port"] for e in mon["spec"]["endpoints"]} <= set(svc_ports)
    container_ports = {p["name"] for p in server_container(dep)["ports"]}
    assert {p["targetPort"] for p in svc_ports.values()} <= container_ports
    hpa = find(docs, "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    # The PDB may evict one pod at a time; with at least two replicas one always serves.
    assert hpa["spec"]["minReplicas"] >= 2 and pdb["spec"]["maxUnavailable"] == 1
    assert "replicas" not in dep["spec"], "replicas belongs to the HPA"
    # Every volume the container mounts exists, and the server reads models read-only.
    volumes = {v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in server_container(dep)["volumeMounts"]}
    assert set(mounts) <= volumes and mounts["models"]["readOnly"] is True
    claim = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "models")
    pvc = find(docs, "PersistentVolumeClaim")
    assert claim["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    cm = find(docs, "ConfigMap", "abstain-config")
    assert server_container(dep)["envFrom"] == [{"configMapRef": {"name": cm["metadata"]["name"]}}]
    multiproc = cm["data"]["PROMETHEUS_MULTIPROC_DIR"]
    assert any(m["mountPath"] == multiproc for m in mounts.values()), "multiproc dir on an emptyDir"


def test_deployment_hardening_and_gpu() -> None:
    dep = _deployment()
    pod = dep["spec"]["template"]["spec"]
    c = server_container(dep)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    # Extended resources must be requested in limits (requests, if given, must equal them).
    assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"]
    for key in ("ABSTAIN_API_KEY", "ABSTAIN_ADMIN_KEY"):
        env = next(e for e in c["env"] if e["name"] == key)
        assert "value" not in env and env["valueFrom"]["secretKeyRef"]["name"] == "abstain-api-keys"
    assert {"startupProbe", "livenessProbe", "readinessProbe"} <= set(c)
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] > 0


def _adapter_rules() -> tuple[list[dict], list[dict]]:
    values = load_docs(K8S / "prometheus-adapter" / "values.yaml")[0]
    cm = load_docs(K8S / "prometheus-adapter" / "configmap.yaml")[0]
    return values["rules"]["custom"], yaml.safe_load(cm["data"]["config.yaml"])["rules"]


def test_adapter_rule_serves_the_hpa_metric() -> None:
    helm_rules, raw_rules = _adapter_rules()
    assert helm_rules == raw_rules, "values.yaml and configmap.yaml must carry the same rule"
    hpa = find(base_docs(), "HorizontalPodAutoscaler")
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu"
               for m in hpa["spec"]["metrics"]), "CPU is the fallback signal"
    (rule,) = raw_rules
    assert pods_metrics == [rule["name"]["as"]]
    series = rule["seriesQuery"].split("{")[0]
    assert re.fullmatch(rule["name"]["matches"], series)
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (make sysdeps)")
def test_adapter_metrics_query_is_valid_promql(tmp_path: Path) -> None:
    (rule,) = _adapter_rules()[1]
    expr = (rule["metricsQuery"].replace("<<.Series>>", rule["seriesQuery"].split("{")[0])
            .replace("<<.LabelMatchers>>", 'namespace="abstain",pod=~"abstain-.*"')
            .replace("<<.GroupBy>>", "pod"))
    rules = {"groups": [{"name": "adapter", "rules": [{"record": "adapter:check", "expr": expr}]}]}
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_set(rules, "groups.0.rules.0.expr", expr.replace(")", "", 1))))
    assert subprocess.run(["promtool", "check", "rules", str(bad)], capture_output=True,
                          timeout=60).returncode != 0
