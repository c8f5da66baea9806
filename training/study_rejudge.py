"""Re-judge a committed study from its saved ``runs/*/logits.npz`` with the current rules.

The committed study folders keep only each run's ``logits.npz`` (not ``run.json`` nor
``features.npz``), so ``abstain study --reuse`` would retrain them. This rebuilds each run's
``run.json`` from the previous ``results.json``, re-analyses the logits (scores, metrics,
bootstrap, verdicts, figures) and copies the neural-collapse numbers from the previous results
(they need the uncommitted features). Torch-free::

    PYTHONPATH=. python -m training.study_rejudge docs/study/mnist1d [more study dirs]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from serve.files import atomic_write_text
from training import study_analysis, study_report
from training.study_analysis import StudyError


def rejudge(out: Path) -> dict[str, Any]:
    """Rewrite ``out``'s results.json, README.md and figures; returns the results."""
    prev = out / "results.json"
    if not prev.is_file():
        raise StudyError(f"{prev} not found: re-judging needs a finished study folder")
    res = json.loads(prev.read_text())
    old = {r["tag"]: r for r in res["runs"]}
    dirs = [out / p for p in res["files"].values()]
    missing = [str(d / "logits.npz") for d in dirs if not (d / "logits.npz").is_file()]
    if missing:
        raise StudyError(f"{len(missing)} runs lack logits.npz (e.g. {missing[0]}): these runs "
                         "were not committed; re-run `abstain study` to retrain them")
    t0 = time.perf_counter()
    made = []
    for d in dirs:
        if not (d / "run.json").is_file():
            r = old[d.name]
            atomic_write_text(d / "run.json", json.dumps(
                {"tag": r["tag"], "loss": r["loss"], "seed": r["seed"],
                 "train_seconds": r.get("train_seconds"),
                 **{k: r[k] for k in ("train_errors", "n_train", "final_train_loss") if k in r}}))
            made.append(d / "run.json")

    def analyse(d: Path, idx: Any = None) -> dict[str, Any]:
        r = study_analysis.analyse_run(d, idx)
        if not r["collapse"]:
            r["collapse"] = old[d.name]["collapse"]
        return r

    meta = {**res["meta"], "runs_reused": len(dirs), "runtime_seconds": 0.0,
            "command": f"PYTHONPATH=. python -m training.study_rejudge {out} (re-judged the saved "
                       "logits; neural-collapse numbers copied from the previous results.json)"}
    try:
        results = study_report.build(out, meta, dirs, analyse)
    finally:
        for p in made:
            p.unlink()
    results["meta"]["runtime_seconds"] = time.perf_counter() - t0
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    atomic_write_text(out / "README.md", study_report.render(results))
    return results


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for d in argv:
        r = rejudge(Path(d))
        print(d, "→", ", ".join(c["verdict"] for c in r["claims"]))
    print(study_report.write_index(Path(argv[0]).parent))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
