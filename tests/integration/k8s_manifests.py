"""Read and validate the manifests under deploy/ offline (shared by the test_k8s_* modules).

Core kinds are checked by ``kubernetes-validate`` (strict: unknown fields are errors) against the
schemas it ships for a pinned Kubernetes version; custom resources (ServiceMonitor, KServe) by
the hand-written JSON Schemas in ``k8s_schemas/``, whose embedded core types are ``$ref``s into
the same kubernetes-validate definitions.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KSERVE = DEPLOY / "kserve"
SCHEMAS = Path(__file__).resolve().parent / "k8s_schemas"

# The oldest Kubernetes minor we support, and the newest whose schemas the package ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
DEFINITIONS_URI = "https://kubernetes.io/api/_definitions.json"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "servingruntime-serving-v1alpha1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice-serving-v1beta1.json",
}

Doc = dict[str, Any]


def load_docs(path: Path) -> list[Doc]:
    """Every YAML document in a file (empty documents dropped)."""
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def manifest_files() -> list[Path]:
    """The files that are complete Kubernetes objects (kustomizations and patches excluded)."""
    files = sorted((K8S / "base").glob("*.yaml")) + sorted(KSERVE.glob("*.yaml"))
    files.append(K8S / "prometheus-adapter" / "configmap.yaml")
    return [f for f in files if f.name != "kustomization.yaml"]


@functools.cache
def _registry(version: str) -> Registry:
    major, minor = version.split(".")[:2]
    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    defs = json.loads((base / f"v{major}.{minor}.0-local-strict" / "_definitions.json").read_text())
    return Registry().with_resource(DEFINITIONS_URI, Resource.from_contents(defs))


@functools.cache
def _crd_schema(name: str) -> Doc:
    return json.loads((SCHEMAS / name).read_text())


def validate(doc: Doc, version: str) -> None:
    """Raise ``jsonschema.ValidationError`` (or kubernetes-validate's subclass) if ``doc`` is invalid."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        schema = _crd_schema(CRD_SCHEMAS[key])
        jsonschema.Draft202012Validator(schema, registry=_registry(version)).validate(doc)
    else:
        kubernetes_validate.validate(doc, version, strict=True)


def kubectl() -> str | None:
    return shutil.which("kubectl")


def kustomize(directory: Path) -> list[Doc]:
    """Render a kustomization with the real kustomize built into kubectl (offline)."""
    exe = kubectl()
    assert exe is not None
    out = subprocess.run([exe, "kustomize", str(directory)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {directory} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def base_docs() -> list[Doc]:
    return [d for f in sorted((K8S / "base").glob("*.yaml")) if f.name != "kustomization.yaml"
            for d in load_docs(f)]


def server_container(deployment: Doc) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return find([{"kind": "c", "metadata": c} for c in containers], "c", "abstain")["metadata"]
