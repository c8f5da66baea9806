"""The cascade, measured: stage 1 alone, stage 2 alone and the cascade at the same certified r*.

Usage: ``python -m bench.cascade_demo [--data mnist1d|digits] [--reps 200]`` (needs the ``data``
extra, wrk for the load part (``--no-load`` skips it), and for digits the ``train`` extra:
bench/cascade_digits.py trains an MLP and a ResNet-18).

1. **Certification** on ``mnist1d:calibration`` (tune fraction 0.3, seed 0, r* and δ as given)
   for each set-up, then the deployed rules applied to ``mnist1d:test``: human share (and its
   Clopper–Pearson 95 % interval), risk of what is accepted, stage-2 calls per sample.
2. **Validity** of the cascade's certificate on fresh splits: the calibration and test splits
   (6 000 samples) are the population; each repetition draws 3 000 of them without replacement,
   calibrates the cascade on them (fresh tuning/certification split and temperatures) and judges
   the deployed thresholds by their risk on the whole population.
3. **Serving** (a real ``abstain serve`` on a copy of models/, wrk, one sample per request cycling
   through 512 test samples, medians of interleaved rounds): throughput, p50/p99 latency, the
   server process's CPU time per request (all its threads: less disturbed by other load on the
   machine than throughput), and stage-2 calls per request counted on the stage-2 model's own
   batcher; also with an emulated
   heavy stage 2 (the shipped CNN plus per-sample compute that adds exactly 0 to its logits, so
   its calibration and the cascade's certificate carry over unchanged).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

from bench.servers import abstain_process, free_port, http
from bench.wrk import LUA, run_wrk
from serve.calibration.binomial import clopper_pearson_interval
from serve.calibration.cascade_artifact import read_spec
from serve.calibration.cascade_pipeline import calibrate_cascade_arrays
from serve.calibration.pipeline import CalibrationSettings, calibrate_arrays
from serve.data import load_split
from serve.server.runtime import OnnxModel

ROOT = Path(__file__).resolve().parents[1]
CASCADE = ROOT / "models" / "mnist1d-cascade" / "1"


def _logits(stages, data: str, root: Path) -> tuple[dict, dict]:
    out, labels = {}, {}
    for split in ("calibration", "test"):
        x, y, _ = load_split(f"{data}:{split}")
        out[split] = [OnnxModel(root / s.model / str(s.version) / "model.onnx",
                                device="cpu").logits(x) for s in stages]
        labels[split] = y
        if split == "test":
            out["test_x"] = x
    return out, labels


def _cascade_outcome(thresholds: list[float], temps: list[float], zs: list[np.ndarray],
                     y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(accepted, error among accepted, reached stage 2) per sample for MSP stages."""
    from serve.scores import create_score

    n = len(y)
    left = np.ones(n, bool)
    accepted = np.zeros(n, bool)
    err = np.zeros(n, bool)
    reach2 = np.zeros(n, bool)
    for k, (t, temp, z) in enumerate(zip(thresholds, temps, zs, strict=True)):
        if k == 1:
            reach2 = left.copy()
        s = create_score("msp", temp)(z)
        a = left & (s >= t)
        accepted |= a
        err |= a & (z.argmax(axis=1) != y)
        left &= ~a
    return accepted, err, reach2


def _row(name: str, certified: bool, cert_human: float, acc: np.ndarray, err: np.ndarray,
         calls2: float) -> str:
    n, a, e = len(acc), int(acc.sum()), int(err.sum())
    lo, hi = clopper_pearson_interval(n - a, n)
    rlo, rhi = clopper_pearson_interval(e, a) if a else (0.0, 1.0)
    risk = f"{e / a:.4f} ({rlo:.4f}–{rhi:.4f})" if a else "—"
    return (f"| {name} | {'yes' if certified else 'no: defers all'} | {cert_human:.3f} | "
            f"{(n - a) / n:.3f} ({lo:.3f}–{hi:.3f}) | {risk} | {calls2:.3f} |")


def certification(zs: dict, ys: dict, target_risk: float, delta: float, stages) -> list[str]:
    rows = ["| set-up | certified at r* | human share (cert) | human share (test, 95 % CI) | "
            "risk of accepted (test, 95 % CI) | stage-2 calls per sample (test) |",
            "|---|---|---|---|---|---|"]
    settings = CalibrationSettings(target_risk=target_risk, delta=delta, score="msp")
    for k in (0, 1):
        label = f"stage {k + 1} alone ({stages[k].model})"
        run = calibrate_arrays(zs["calibration"][k], ys["calibration"], settings)
        c = run.certificate
        if c.certified:
            s = run.choice.score(zs["test"][k])
            acc = s >= c.threshold
        else:
            acc = np.zeros(len(ys["test"]), bool)
        err = acc & (zs["test"][k].argmax(axis=1) != ys["test"])
        rows.append(_row(label, c.certified, 1 - c.coverage if c.certified else 1.0, acc, err,
                         1.0 if k == 1 else 0.0))
    run = calibrate_cascade_arrays(stages, zs["calibration"], ys["calibration"], target_risk,
                                   delta, score="msp")
    c = run.certificate
    temps = [ch.temperature for ch in run.choices]
    acc, err, reach2 = _cascade_outcome(c.thresholds, temps, zs["test"], ys["test"])
    rows.append(_row(f"cascade ({stages[0].model} → {stages[1].model})", c.certified,
                     c.human_share, acc, err,
                     float(reach2.mean())))
    return rows


def validity(zs: dict, ys: dict, target_risk: float, delta: float, stages, reps: int,
             data: str = "mnist1d") -> str:
    pool_z = [np.concatenate([zs["calibration"][k], zs["test"][k]]) for k in range(2)]
    pool_y = np.concatenate([ys["calibration"], ys["test"]])
    n = len(ys["calibration"])
    rng = np.random.default_rng(0)
    violations = certified = 0
    humans = []
    t0 = time.perf_counter()
    for rep in range(reps):
        idx = rng.choice(len(pool_y), n, replace=False)
        run = calibrate_cascade_arrays(stages, [z[idx] for z in pool_z], pool_y[idx],
                                       target_risk, delta, score="msp", seed=rep)
        c = run.certificate
        if not c.certified:
            continue
        certified += 1
        acc, err, _ = _cascade_outcome(c.thresholds, [ch.temperature for ch in run.choices],
                                       pool_z, pool_y)
        violations += err.sum() / max(acc.sum(), 1) > target_risk
        humans.append(1 - acc.mean())
    hi = stats.beta.ppf(0.975, violations + 1, reps - violations)
    lo = stats.beta.ppf(0.025, violations, reps - violations + 1) if violations else 0.0
    return (f"{data} cascade, r* = {target_risk:g}, δ = {delta:g}, {reps} repetitions of "
            f"{n} calibration samples drawn from the {len(pool_y)}-sample population: violations "
            f"{violations}/{reps} = {violations / reps:.3f} (95 % CI {lo:.3f}–{hi:.3f}), certified "
            f"{certified}/{reps}, mean population human share {np.mean(humans):.3f} "
            f"({time.perf_counter() - t0:.0f} s)")


CYCLE = r"""
local bodies = {}
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[i])
end
"""


def serving(x: np.ndarray, seconds: float, concurrency: int, heavy: tuple[int, int] | None,
            rounds: int = 3, root: Path = ROOT / "models", cascade: Path = CASCADE,
            baseline: Path | None = None, threads: str = "auto") -> list[str]:
    """Medians over ``rounds`` interleaved rounds of every set-up (and the requests/s range).

    ``baseline``: another source tree (e.g. ``git archive COMMIT serve | tar -x -C DIR``) served
    beside this one on the same repository, each set-up measured on both servers in turn within
    every round; its rows are marked "(before)".
    """
    rows = ["| set-up | requests/s (range) | p50 ms | p99 ms | server CPU µs per request | "
            "stage-2 calls per request | errors |", "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo = work / "models"
        s1, s2 = (s.model for s in read_spec(cascade))
        for name in (s1, s2, cascade.parent.name):
            shutil.copytree(root / name, repo / name,
                            ignore=shutil.ignore_patterns("*.png", "*.bak"))
        setups = [(f"stage 1 alone ({s1})", s1, s2), (f"stage 2 alone ({s2})", s2, s2),
                  (f"cascade ({s1} → {s2})", cascade.parent.name, s2)]
        if heavy is not None:
            heavy_cascade(repo, *heavy)
            setups += [("heavy stage 2 alone (mnist1d-heavy)", "mnist1d-heavy", "mnist1d-heavy"),
                       ("cascade (mlp → heavy)", "mnist1d-cascade-heavy", "mnist1d-heavy")]
        bodies = work / "bodies.txt"
        bodies.write_text("".join(json.dumps({"instances": [r]}) + "\n"
                                  for r in np.round(x[:512], 4).tolist()))
        script = work / "cycle.lua"
        done = LUA[LUA.index("function done"):].replace("%%", "%")
        script.write_text(CYCLE % {"bodies": bodies} + done)
        trees = [("", None)] + ([(" (before)", baseline)] if baseline is not None else [])
        with contextlib.ExitStack() as stack:
            servers = [(mark, *stack.enter_context(abstain_process(
                repo, free_port(), "cpu", threads, 64, work / f"server{i}.log", src=src)))
                for i, (mark, src) in enumerate(trees)]
            runs: dict[str, list[tuple[float, ...]]] = {}
            for rnd in range(rounds):                     # interleaved: load drifts between runs
                for label, model, second in setups:
                    for mark, base, proc in servers[::1 if rnd % 2 == 0 else -1]:
                        url = f"{base}/v1/models/{model}/predict"
                        run_wrk(url, script, concurrency, 1)                  # warm-up
                        before, cpu = _samples(base, second), _cpu_s(proc.pid)
                        r = run_wrk(url, script, concurrency, seconds)
                        cpu_us = (_cpu_s(proc.pid) - cpu) / max(r.requests, 1) * 1e6
                        calls = (_samples(base, second) - before) / max(r.requests, 1)
                        runs.setdefault(label + mark, []).append((r.rps, r.p50_ms, r.p99_ms,
                                                                  cpu_us, calls, r.errors))
            for label in runs:
                rps, p50, p99, cpu_us, calls, _ = (float(np.median(v))
                                                   for v in zip(*runs[label], strict=True))
                errors = sum(int(v[5]) for v in runs[label])
                spread = f"{min(v[0] for v in runs[label]):.0f}–{max(v[0] for v in runs[label]):.0f}"
                rows.append(f"| {label} | {rps:.0f} ({spread}) | {p50:.2f} | {p99:.2f} | "
                            f"{cpu_us:.0f} | {calls:.3f} | {errors} |")
    return rows


def build_heavy(src: Path, dst: Path, width: int, steps: int) -> str:
    """``dst``: the model of ``src`` with extra per-sample compute that adds exactly 0 to its
    logits (``steps`` (n, width)·(width, width) products on the input, times 0), so its logits,
    calibration and probe batch stay valid; returns the new sha256. An emulated heavy stage 2."""
    import dataclasses

    import onnx
    from onnx import helper, numpy_helper

    from serve.calibration.artifact import load_calibration, save_calibration
    from serve.server.runtime import sha256_file

    m = onnx.load(str(src / "model.onnx"))
    g = m.graph
    last = next(n for n in g.node if "logits" in n.output)
    last.output[list(last.output).index("logits")] = "logits_core"
    rng = np.random.default_rng(0)
    d = int(g.input[0].type.tensor_type.shape.dim[1].dim_value)
    g.initializer.extend([
        numpy_helper.from_array((rng.normal(size=(d, width)) / np.sqrt(d)).astype(np.float32), "hv_w"),
        numpy_helper.from_array((rng.normal(size=(width, width)) / np.sqrt(width)).astype(np.float32),
                                "hv_c"),
        numpy_helper.from_array(np.int64([1]), "hv_axes"),
        numpy_helper.from_array(np.float32([0.0]), "hv_zero")])
    nodes = [helper.make_node("MatMul", ["input", "hv_w"], ["hv_0"])]
    for i in range(steps):
        nodes += [helper.make_node("MatMul", [f"hv_{i}", "hv_c"], [f"hv_m{i}"]),
                  helper.make_node("Tanh", [f"hv_m{i}"], [f"hv_{i + 1}"])]
    nodes += [helper.make_node("ReduceSum", [f"hv_{steps}", "hv_axes"], ["hv_r"], keepdims=1),
              helper.make_node("Mul", ["hv_r", "hv_zero"], ["hv_r0"]),
              helper.make_node("Add", ["logits_core", "hv_r0"], ["logits"])]
    g.node.extend(nodes)
    dst.mkdir(parents=True)
    onnx.save(m, str(dst / "model.onnx"))
    sha = sha256_file(dst / "model.onnx")
    shutil.copy(src / "probe.npz", dst / "probe.npz")
    cal = load_calibration(src / "calibration.json")
    save_calibration(dataclasses.replace(cal, model_sha256=sha), dst)
    return sha


def heavy_cascade(repo: Path, width: int, steps: int) -> None:
    """``mnist1d-heavy/1`` and ``mnist1d-cascade-heavy/1`` (mlp → heavy) beside the others; the
    cascade's calibration is the shipped one re-pinned, valid since the logits are identical."""
    from serve.calibration.cascade_artifact import (
        StageRef,
        load_cascade_calibration,
        save_cascade_calibration,
        write_spec,
    )

    sha = build_heavy(repo / "mnist1d-maxsup" / "1", repo / "mnist1d-heavy" / "1", width, steps)
    served = repo / "mnist1d-cascade" / "1"             # the shipped one, or its recalibration
    stages = read_spec(served)
    cal = load_cascade_calibration(served, stages)
    d = repo / "mnist1d-cascade-heavy" / "1"
    d.mkdir(parents=True)
    write_spec(d, [stages[0], StageRef("mnist1d-heavy", 1, sha)])
    import dataclasses

    rules = [cal.stages[0], dataclasses.replace(cal.stages[1], model="mnist1d-heavy",
                                                model_sha256=sha)]
    save_cascade_calibration(dataclasses.replace(cal, stages=rules), d)


def _served_at(repo: Path, target_risk: float, delta: float) -> Path:
    """The shipped mnist1d cascade, recalibrated in a copy when r* or δ differ from its own, so
    the load part serves the cascade the certification table describes."""
    from bench.cascade_digits import _abstain
    from serve.calibration.cascade_artifact import load_cascade_calibration

    cal = load_cascade_calibration(CASCADE, read_spec(CASCADE))
    if (cal.target_risk, cal.delta) == (target_risk, delta):
        return CASCADE
    for s in read_spec(CASCADE):
        shutil.copytree(ROOT / "models" / s.model, repo / s.model,
                        ignore=shutil.ignore_patterns("*.png", "*.bak"))
    d = repo / CASCADE.parent.name / CASCADE.name
    shutil.copytree(CASCADE, d, ignore=shutil.ignore_patterns("*.png", "*.bak"))
    _abstain("calibrate", str(d), "--data", "mnist1d:calibration", "--target-risk",
             f"{target_risk:g}", "--delta", f"{delta:g}")
    return d


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) the process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _samples(base: str, model: str) -> int:
    status, body = http(f"{base}/v2/models/{model}/stats")
    assert status == 200, body
    return int(json.loads(body)["model_stats"][0]["samples"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target-risk", type=float, default=0.01)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--reps", type=int, default=200,
                    help="validity repetitions on fresh splits (0: skip that part)")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the load runs")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--no-load", action="store_true", help="skip the served measurement")
    ap.add_argument("--intra-op-threads", default="auto",
                    help="the servers' --intra-op-threads (default auto: on a small machine each "
                    "model's all-cores session keeps an onnxruntime thread spinning)")
    ap.add_argument("--baseline-src", type=Path, default=None, metavar="DIR",
                    help="also serve every set-up from the source tree DIR (holding serve/), "
                    "interleaved with this one, rows marked (before)")
    ap.add_argument("--heavy", default="1024x8", help="WIDTHxSTEPS of the emulated heavy stage 2 "
                    "(needs onnx, the train extra); 'off' to skip it (default 1024x8)")
    ap.add_argument("--data", choices=("mnist1d", "digits"), default="mnist1d",
                    help="mnist1d: the shipped cascade; digits: an MLP before a real ResNet-18, "
                    "trained here unless runs/digits-* exist (default mnist1d)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root, cascade = ROOT / "models", CASCADE
        if args.data == "digits":
            from bench.cascade_digits import build

            cascade = build(Path(tmp) / "models", args.target_risk, args.delta)
            root = cascade.parent.parent
        elif not args.no_load:
            cascade = _served_at(Path(tmp) / "models", args.target_risk, args.delta)
            root = cascade.parent.parent
        stages = read_spec(cascade)
        zs, ys = _logits(stages, args.data, root)
        print(f"## certification (r* = {args.target_risk:g}, δ = {args.delta:g}; "
              f"{args.data}:calibration → {args.data}:test)\n")
        print("\n".join(certification(zs, ys, args.target_risk, args.delta, stages)))
        if args.reps > 0:
            print("\n## validity\n")
            print(validity(zs, ys, args.target_risk, args.delta, stages, args.reps, args.data))
        if not args.no_load:
            print(f"\n## serving (wrk, {args.concurrency} connections, {args.seconds:g} s × "
                  f"{args.rounds} interleaved rounds, medians; one sample per request; load "
                  f"average {os.getloadavg()[0]:.1f} at the start"
                  + f"; --intra-op-threads {args.intra_op_threads}"
                  + (f"; (before): {args.baseline_src}" if args.baseline_src else "") + ")\n")
            heavy = (None if args.heavy == "off" or args.data != "mnist1d"
                     else tuple(int(v) for v in args.heavy.split("x")))
            print("\n".join(serving(zs["test_x"], args.seconds, args.concurrency, heavy,
                                     args.rounds, root, cascade, args.baseline_src,
                                     args.intra_op_threads)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
