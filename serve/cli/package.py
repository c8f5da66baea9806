"""`abstain package`: a calibrated model directory → one ONNX model that also decides.

Reads ``MODEL_DIR/model.onnx`` and its verified ``calibration.json``, appends the decision graph
(:mod:`serve.packaging.decision_graph`), checks the result with ``onnx.checker`` and then against
:class:`serve.decision.DecisionRule` in onnxruntime, and only then writes it: to ``--out FILE``
and/or as a Triton model directory (``--triton DIR``, :mod:`serve.packaging.triton`). Needs the ``onnx``
package (``abstain[package]``) and onnxruntime (``abstain[cpu]``), not torch.
"""

from __future__ import annotations

import argparse
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve.calibration.artifact import Calibration, load_calibration
from serve.cli.argtypes import POSITIVE_INT
from serve.decision import DecisionRule
from serve.errors import AbstainError, MissingExtraError
from serve.files import atomic_write_bytes
from serve.server.runtime import sha256_file

MODEL_FILE = "model.onnx"
_TRANSCENDENTAL = {"Exp", "Log", "Pow"}


class PackageError(AbstainError):
    """A model directory that cannot be packaged, or a packaged graph that decides differently."""


@dataclass(frozen=True)
class Check:
    rows: int
    max_score_diff: float
    label_mismatches: int
    reject_mismatches: int


def _session(model_bytes: bytes):  # noqa: ANN202 (onnxruntime has no public session type)
    try:
        import onnxruntime as ort
    except ModuleNotFoundError as err:
        raise MissingExtraError("cpu", "onnxruntime") from err
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def _stress_logits(k: int, n: int, seed: int = 0) -> np.ndarray:
    """Logits at scales 1e-3…100, offsets of ±500, tied maxima and constant rows."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * rng.choice([1e-3, 0.1, 1.0, 5.0, 30.0, 100.0], size=(n, 1))
    z[::7] += 500.0
    z[::11, 1] = z[::11].max(axis=1)
    z[::97] = 0.25
    return z.astype(np.float32)


def _slack(s: np.ndarray | float) -> np.ndarray:
    """How far apart last-bit differences in exp/log/pow can leave two scores: one snap step of
    serve.scores (2⁻⁴³ relative ≤ 1024 ulp) when it snaps, else a few ulp."""
    from serve.packaging.decision_graph import SNAPS

    return (1024 if SNAPS else 16) * np.spacing(np.abs(s))


def check_decisions(model_bytes: bytes, head_bytes: bytes, exact_ops: bool, source: Path,
                    cal: Calibration, n: int = 4096) -> Check:
    """Run the packaged model and its decision head; compare with the server's rule.

    The packaged model gets random inputs of its input shape (its ``logits`` must equal the source
    model's bit for bit); the head gets ``_stress_logits``. Labels must agree exactly; scores and
    reject flags exactly too when ``exact_ops`` (no exp/log/pow in the graph). Otherwise the
    runtime's math library may round the last bit differently from numpy's, which after the
    server's snap is at most one snap step (``_slack``): scores must agree within 1e-12 or that
    step, and a reject flag may differ only where the server's score is that close to the threshold.
    """
    packaged, plain, head = _session(model_bytes), _session(source.read_bytes()), _session(head_bytes)
    inp = packaged.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
    dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(n, *shape)) * rng.choice([0.3, 1.0, 3.0], size=(n,) + (1,) * len(shape)))
    x = x.astype(dtype)
    logits, label, score, reject = packaged.run(["logits", "label", "score", "reject"], {inp.name: x})
    ref_logits = plain.run(["logits"], {plain.get_inputs()[0].name: x})[0]
    if not np.array_equal(logits, ref_logits):
        raise PackageError("the packaged model's logits differ from model.onnx's; this is a bug in "
                           "abstain package: please report it with the model")
    z = _stress_logits(logits.shape[1], 4 * n)
    hl, hs, hr = head.run(["label", "score", "reject"], {"logits": z.astype(logits.dtype)})
    rule = DecisionRule(cal)
    diff, bad_score, bad_label, bad_reject = 0.0, 0, 0, 0
    for zz, lab, sc, rej in ((logits, label, score, reject), (z, hl, hs, hr)):
        ref = rule(zz)
        d = np.abs(sc - ref.score)
        diff = max(diff, float(np.max(d)))
        bad_score += int(np.sum(d != 0) if exact_ops else np.sum(d > np.maximum(1e-12, _slack(ref.score))))
        bad_label += int(np.sum(lab != ref.label))
        off = np.flatnonzero(rej != ref.reject)
        if not exact_ops and cal.threshold is not None:
            off = off[np.abs(ref.score[off] - cal.threshold) > _slack(cal.threshold)]
        bad_reject += off.size
    check = Check(len(x) + len(z), diff, bad_label, bad_reject)
    if bad_score or bad_label or bad_reject:
        raise PackageError(
            f"refusing to write: the decision graph disagrees with the server on {check.rows} rows "
            f"(max |Δscore| {diff:.3g}, {bad_label} labels, {bad_reject} reject flags differ); "
            "this is a bug in abstain package: please report it with calibration.json")
    return check


def package(model_dir: str | Path, out: str | Path | None = None, triton: str | Path | None = None,
            name: str | None = None, version: int | None = None,
            force: bool = False) -> tuple[list[Path], Check, Calibration]:
    """Build, check and write the packaged model; returns (written paths, check, calibration)."""
    try:
        import onnx

        from serve.packaging.decision_graph import attach_decision, decision_head
        from serve.packaging.triton import write_model_dir
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] != "onnx":
            raise
        raise MissingExtraError("package", "onnx") from err
    model_dir = Path(model_dir)
    source = model_dir / MODEL_FILE
    if not source.is_file():
        raise PackageError(f"{source} not found: MODEL_DIR is a version directory such as "
                           "models/<name>/<version> holding model.onnx and calibration.json")
    if out is None and triton is None:
        raise PackageError("say where to write: --out FILE (one ONNX file) and/or --triton DIR "
                           "(a Triton model repository)")
    if out is not None and Path(out).exists() and not force:
        raise PackageError(f"{out} exists; pass --force to replace it")
    source_sha = sha256_file(source)
    cal = load_calibration(model_dir, model_sha256=source_sha)
    try:
        model = onnx.load_model(str(source))
    except Exception as err:  # onnx raises DecodeError and others for a damaged file
        raise PackageError(f"cannot read {source} as ONNX ({type(err).__name__}); "
                           "re-export it with `abstain export`") from err
    packaged = attach_decision(model, cal, source_sha)
    k = packaged.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    head = decision_head(cal, k, packaged.graph.output[0].type.tensor_type.elem_type)
    exact_ops = not any(node.op_type in _TRANSCENDENTAL for node in head.graph.node)
    check = check_decisions(packaged.SerializeToString(), head.SerializeToString(), exact_ops,
                            source, cal)
    written: list[Path] = []
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, packaged.SerializeToString())
        written.append(Path(out))
    if triton is not None:
        name = name or model_dir.resolve().parent.name
        if version is None:
            if not model_dir.resolve().name.isdigit():
                raise PackageError(f"{model_dir} is not a numbered version directory; "
                                   "pass --version N for Triton")
            version = int(model_dir.resolve().name)
        comment = (f"Written by `abstain package {model_dir}`: the certified decision of "
                   f"calibration.json (sha256 {cal.sha256}) inside model.onnx.\n"
                   f"Outputs: logits, label (argmax), score ({cal.score}, T = {cal.temperature:g}), "
                   f"reject (score < {cal.threshold!r})")
        written += list(write_model_dir(triton, name, version, packaged, force, comment))
    return written, check, cal


def main(args: argparse.Namespace) -> int:
    written, check, cal = package(args.model_dir, args.out, args.triton, args.name, args.version,
                                  args.force)
    rule = "defer everything" if cal.threshold is None else f"reject iff score < {cal.threshold!r}"
    print(f"abstain package: {cal.score} (T = {cal.temperature:g}), {rule}; calibration sha256 "
          f"{cal.sha256[:12]}…; checked on {check.rows} rows: max |Δscore| "
          f"{check.max_score_diff:.2g}, labels and reject flags equal to the server's")
    for p in written:
        print(f"  wrote {p}")
    return 0


def register_package(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "package", help="put the certified decision inside the ONNX model (and a Triton directory)",
        description="Append to MODEL_DIR/model.onnx the nodes that compute the calibrated score, "
        "the threshold test and the label, exactly as the server does (outputs logits, label "
        "INT64, score FP64, reject BOOL), check it against the server's rule, and write it.")
    p.add_argument("model_dir", help="a calibrated version directory, e.g. models/mnist1d-maxsup/1")
    p.add_argument("--out", default=None,
                   help="write the packaged model to this .onnx file (default: none)")
    p.add_argument("--triton", default=None, metavar="DIR",
                   help="write DIR/<name>/<version>/model.onnx and DIR/<name>/config.pbtxt "
                   "(default: none)")
    p.add_argument("--name", default=None, help="Triton model name (default: MODEL_DIR's parent)")
    p.add_argument("--version", type=POSITIVE_INT, default=None,
                   help="Triton version (default: MODEL_DIR's name)")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.set_defaults(handler=main)


def _needs_package_extras() -> AbstainError | None:
    """Why `package` cannot run here (``None`` when it can); imports nothing."""
    for module, extra in (("onnx", "package"), ("onnxruntime", "cpu")):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return MissingExtraError(extra, module)
    return None


register_package.unavailable = _needs_package_extras  # type: ignore[attr-defined]
