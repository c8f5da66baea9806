"""The manifests agree with the real server, monitoring, CLI and Dockerfile.

The probes, ports, metric and command lines in deploy/ are read from the YAML and exercised
against a real ``abstain serve`` process (uvicorn on a free loopback port) started the way the
KServe runtime starts it, with the ConfigMap's settings.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from k8s_manifests import ROOT, base_docs, find, load_docs, manifest_files, server_container

from serve.cli.main import build_parser
from serve.monitoring.monitor import Monitor
from serve.server.app import create_app
from serve.server.settings import load_settings

DOCKERFILE = ROOT / "Dockerfile"
ABSTAIN = str(Path(sys.executable).parent / "abstain")


def _deployment() -> dict:
    return find(base_docs(), "Deployment", "abstain")


def _runtime() -> dict:
    return find([d for p in manifest_files() for d in load_docs(p)], "ServingRuntime")


def _isvc() -> dict:
    return find([d for p in manifest_files() for d in load_docs(p)], "InferenceService")


def _probes(container: dict) -> dict[str, dict]:
    return {k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")
            if k in container}


def _port_number(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_model(model_dir: Path) -> None:
    """A real 4-feature, 3-class ONNX classifier with the contract's metadata and calibration."""
    onnx = pytest.importorskip("onnx", reason="the train extra builds the test model")
    from onnx import TensorProto, helper, numpy_helper

    from serve.calibration.artifact import new_calibration, save_calibration
    from serve.server.runtime import sha256_file

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"class_names": ["a", "b", "c"], "input_shape": [4], "input_dtype": "float32",
            "preprocessing": {"kind": "none"}}
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v if isinstance(v, str) else json.dumps(v))
    model_dir.mkdir(parents=True)
    onnx.save(model, str(model_dir / "model.onnx"))
    cal = new_calibration(
        model_sha256=sha256_file(model_dir / "model.onnx"), score="msp", temperature=1.0,
        threshold=0.5, target_risk=0.1, delta=0.1, method="ltt", n_tune=100, n_cert=100,
        coverage=0.5, risk=0.05, risk_upper_bound=0.09, data_fingerprint="0" * 64,
        score_quantiles=[0.34 + 0.05 * i for i in range(13)])
    save_calibration(cal, model_dir)


def test_probe_paths_are_server_routes(tmp_path: Path) -> None:
    app = create_app(load_settings(model_repository=tmp_path))
    get_routes = {r.path for r in app.control.routes if "GET" in getattr(r, "methods", ())}
    for container in (server_container(_deployment()), _runtime()["spec"]["containers"][0]):
        probes = _probes(container)
        assert {"livenessProbe", "readinessProbe"} <= set(probes)
        for kind, probe in probes.items():
            assert probe["path"] in get_routes, f"{kind} {probe['path']} is not a server route"
    dep_probes = _probes(server_container(_deployment()))
    assert dep_probes["livenessProbe"]["path"] == "/v2/health/live"
    assert dep_probes["readinessProbe"]["path"] == dep_probes["startupProbe"]["path"] == "/v2/health/ready"
    mon = find(base_docs(), "ServiceMonitor")
    assert {e["path"] for e in mon["spec"]["endpoints"]} <= get_routes


def test_ports_agree() -> None:
    dep = server_container(_deployment())
    http, grpc = dep["ports"]
    assert (http["name"], http["containerPort"]) == ("http", 8000)
    assert (grpc["name"], grpc["containerPort"]) == ("grpc", 8001)
    for probe in _probes(dep).values():
        assert _port_number(dep, probe["port"]) == http["containerPort"]
    svc = find(base_docs(), "Service", "abstain")
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http", "grpc"]
    assert svc["spec"]["ports"][1]["appProtocol"] == "kubernetes.io/h2c"
    rt = _runtime()["spec"]["containers"][0]
    args = build_parser().parse_args(rt["command"][1:] + rt["args"])
    assert args.command == "serve" and args.port == rt["ports"][0]["containerPort"] == 8080
    assert rt["ports"][1] == {"name": "h2c", "containerPort": args.grpc_port, "protocol": "TCP"}
    assert args.model_repository == "/mnt/models"             # where KServe puts storageUri
    for probe in _probes(rt).values():
        assert probe["port"] == args.port
    annotations = _runtime()["metadata"]["annotations"]
    assert int(annotations["prometheus.kserve.io/port"]) == args.port


def test_hpa_metric_is_exported_by_monitoring() -> None:
    hpa = find(base_docs(), "HorizontalPodAutoscaler")
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    body, _ = Monitor().render()
    exported = set(re.findall(r"^# TYPE (\S+) gauge$", body.decode(), flags=re.M))
    assert names and set(names) <= exported, f"{names} not among the gauges {sorted(exported)}"


def test_grace_period_covers_prestop_and_drain() -> None:
    dep = _deployment()
    cm = find(base_docs(), "ConfigMap", "abstain-config")
    settings = load_settings(check_paths=False, **{
        k.removeprefix("ABSTAIN_").lower(): v for k, v in cm["data"].items()
        if k.startswith("ABSTAIN_")})
    sleep = server_container(dep)["lifecycle"]["preStop"]["sleep"]["seconds"]
    # `abstain serve` gives uvicorn max(30, request_timeout_s + 5) s to finish in-flight requests.
    drain = max(30, int(settings.request_timeout_s) + 5)
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= sleep + drain


def test_isvc_uses_the_runtime() -> None:
    rt, isvc = _runtime(), _isvc()
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == rt["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in rt["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in rt["spec"]["protocolVersions"] == ["v2"]
    assert rt["spec"]["containers"][0]["name"] == "kserve-container"
    pvc = find(base_docs(), "PersistentVolumeClaim")
    assert model["storageUri"] == f"pvc://{pvc['metadata']['name']}"


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [(m[1].upper(), m[2].strip()) for m in
            re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, flags=re.M) if not m[0].lstrip().startswith("#")]


def _exec_form(value: str) -> list[str]:
    return json.loads(value) if value.startswith("[") else shlex.split(value)


@pytest.mark.skipif(not DOCKERFILE.exists(), reason="the Dockerfile (issue 5) is not written yet")
def test_dockerfile_user_models_and_port_match() -> None:
    ins = _dockerfile_instructions()
    final = max(i for i, (k, _) in enumerate(ins) if k == "FROM")       # last build stage
    stage = ins[final:]
    user = [v for k, v in stage if k == "USER"][-1].split(":")[0]
    if not user.isdigit():                                   # a name: find the uid it was made with
        made = [v for k, v in stage if k == "RUN" and re.search(rf"\buseradd\b.*\b{user}\b", v)]
        uid = re.search(r"(?:-u|--uid)[ =](\d+)", made[0]) if made else None
        assert uid, f"cannot tell the uid of USER {user} from the Dockerfile"
        user = uid[1]
    pod = _deployment()["spec"]["template"]["spec"]
    assert int(user) == pod["securityContext"]["runAsUser"] == 10001
    assert _runtime()["spec"]["containers"][0]["securityContext"]["runAsUser"] == int(user)
    entry = [_exec_form(v) for k, v in stage if k == "ENTRYPOINT"][-1:]
    cmd = [_exec_form(v) for k, v in stage if k == "CMD"][-1:]
    argv = (entry[0] if entry else []) + (cmd[0] if cmd else [])
    assert Path(argv[0]).name == "abstain", f"entrypoint {argv} does not run abstain"
    args = build_parser().parse_args(argv[1:])
    mount = next(m for m in server_container(_deployment())["volumeMounts"] if m["name"] == "models")
    assert args.command == "serve" and args.model_repository == mount["mountPath"]
    assert args.port == server_container(_deployment())["ports"][0]["containerPort"]
    assert args.grpc_port == server_container(_deployment())["ports"][1]["containerPort"]
    exposed = {int(p.split("/")[0]) for k, v in stage if k == "EXPOSE" for p in v.split()}
    assert {args.port, args.grpc_port} <= exposed


def test_kserve_command_serves_probes_metrics_and_routes(tmp_path: Path) -> None:
    """Start the server with the runtime's own command line and the ConfigMap's settings."""
    isvc_name = _isvc()["metadata"]["name"]
    _write_model(tmp_path / "repo" / isvc_name / "1")
    rt = _runtime()["spec"]["containers"][0]
    port, grpc_port = _free_port(), _free_port()
    argv = [ABSTAIN if a == "abstain" else a for a in rt["command"]] + [
        {"/mnt/models": str(tmp_path / "repo"), "0.0.0.0": "127.0.0.1", "8080": str(port),
         "8081": str(grpc_port)}.get(a, a) for a in rt["args"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTAIN_")}
    env.update(find(base_docs(), "ConfigMap", "abstain-config")["data"])
    env.update({e["name"]: e["value"] for e in rt["env"]})
    (tmp_path / "metrics").mkdir()
    env.update(ABSTAIN_DEVICE="cpu", PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
               HOME=str(tmp_path))                          # no GPU here; the rest as deployed
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=5) as client:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, f"server exited: {(tmp_path / 'server.log').read_text()}"
                try:
                    if client.get("/v2/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server not ready within 60 s"
                time.sleep(0.2)
            paths = {p["path"] for c in (rt, server_container(_deployment())) for p in _probes(c).values()}
            for path in sorted(paths):
                assert client.get(path).status_code == 200, path
            body = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32",
                                "data": [0.1, 0.2, 0.3, 0.4, -1.0, 2.0, 0.5, 0.0]}]}
            r = client.post(f"/v2/models/{isvc_name}/infer", json=body)   # the URL KServe routes
            assert r.status_code == 200, r.text
            assert r.json()["model_name"] == isvc_name
            _grpc_infer_matches_http(grpc_port, isvc_name, body, r.json())
            metrics = client.get("/metrics").text
            hpa = find(base_docs(), "HorizontalPodAutoscaler")
            for m in hpa["spec"]["metrics"]:
                if m["type"] == "Pods":
                    assert re.search(rf"^{m['pods']['metric']['name']}(\{{.*\}})? ", metrics, re.M)
        # Kubernetes sends SIGTERM after preStop; the server must exit within the grace period.
        proc.send_signal(signal.SIGTERM)
        pod = _deployment()["spec"]["template"]["spec"]
        sleep = server_container(_deployment())["lifecycle"]["preStop"]["sleep"]["seconds"]
        # uvicorn re-raises the signal after its graceful shutdown, hence -SIGTERM, not 0.
        assert proc.wait(timeout=pod["terminationGracePeriodSeconds"] - sleep) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in (tmp_path / "server.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _grpc_infer_matches_http(port: int, model: str, body: dict, http_answer: dict) -> None:
    """The runtime's gRPC port answers KServe's GRPCInferenceService with the HTTP answer."""
    grpcclient = pytest.importorskip("tritonclient.grpc")
    inp = body["inputs"][0]
    x = np.asarray(inp["data"], np.float32).reshape(inp["shape"])
    with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        assert client.is_server_ready() and client.is_model_ready(model)
        tensor = grpcclient.InferInput(inp["name"], list(x.shape), inp["datatype"])
        tensor.set_data_from_numpy(x)
        result = client.infer(model, [tensor])
    for out in http_answer["outputs"]:
        got = result.as_numpy(out["name"])
        assert list(got.shape) == out["shape"], out["name"]
        np.testing.assert_array_equal(got.ravel(), np.asarray(out["data"], got.dtype), out["name"])
