"""The example requests `abstain serve` prints at start-up (and the README shows).

A version directory may hold ``example.json`` — ``{"source": "...", "instances": [...]}``, real
inputs, e.g. test samples — and the banner's v1 and v2 ``curl`` lines send those, so a
newcomer's first response is a real prediction, not the answer to an all-zeros vector. Without
the file the example is all zeros of the model's input shape (image models: an upload). The
default model (or the first) always gets example lines; every other loaded model gets them when
its highest version has ``example.json``.

``python -m serve.cli.examples VERSION_DIR --data SPEC:test`` (needs the ``data`` extra) writes
``example.json`` from the first two test samples, rounded to 2 decimals.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

from serve.files import atomic_write_text

EXAMPLE_FILE = "example.json"
DEFAULT_MODEL = "mnist1d-maxsup"
SCORE_LINE = ("score: the calibrated confidence score ({score}; higher = more confident), {what}; "
              "reject = score < threshold {threshold}, i.e. defer to a fallback")


def example_instances(mv: Any) -> tuple[list[Any], str]:
    """``(instances, where they come from)`` for a loaded version (``model_version.ModelVersion``)."""
    f = Path(mv.path) / EXAMPLE_FILE
    if f.is_file():
        try:
            doc = json.loads(f.read_text())
            inst = doc["instances"]
            if isinstance(inst, list) and inst:
                return inst, str(doc.get("source", f))
        except (ValueError, KeyError, TypeError, OSError):
            pass                        # a broken example falls back to zeros; it is not the model
    n = math.prod(int(d) for d in mv.model.input_shape)
    return [[0.0] * n], "all zeros"


def pick_model(loaded: list[Any]) -> Any:
    """The default model's highest version, or the first model's."""
    names = sorted({mv.name for mv in loaded})
    name = DEFAULT_MODEL if DEFAULT_MODEL in names else names[0]
    return max((m for m in loaded if m.name == name), key=lambda m: m.version)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def curl_lines(base_url: str, mv: Any, api_key: bool = False) -> list[str]:
    """``curl`` commands for v1 ``predict`` and v2 ``infer`` that work against ``base_url``."""
    auth = ' -H "Authorization: Bearer $ABSTAIN_API_KEY"' if api_key else ""
    v1 = f"{base_url}/v1/models/{mv.name}/predict"
    if mv.preprocessing.get("kind") == "image":
        return [f"curl -s {v1}{auth} -F file=@image.png -F top_k=3"]
    inst, _ = example_instances(mv)
    shape = [len(inst), *(int(d) for d in mv.model.input_shape)]
    flat: list[Any] = []
    stack: list[Any] = [inst]
    while stack:                                  # row-major flatten, any nesting depth
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    v2_body = {"inputs": [{"name": mv.model.input_name, "shape": shape, "datatype": "FP32",
                           "data": flat}],
               "outputs": [{"name": n} for n in ("label", "class_name", "score", "reject")]}
    json_h = " -H 'Content-Type: application/json'"
    return [f"curl -s {v1}{auth}{json_h} -d {shlex.quote(_dumps({'instances': inst, 'top_k': 3}))}",
            f"curl -s {base_url}/v2/models/{mv.name}/infer{auth}{json_h} -d "
            f"{shlex.quote(_dumps(v2_body))}"]


def banner_models(loaded: list[Any]) -> list[Any]:
    """The versions the banner shows: :func:`pick_model`'s first (with or without an example),
    then the highest version of every other model whose version directory has ``example.json``."""
    first = pick_model(loaded)
    out = [first]
    for name in sorted({mv.name for mv in loaded} - {first.name}):
        mv = max((m for m in loaded if m.name == name), key=lambda m: m.version)
        if (Path(mv.path) / EXAMPLE_FILE).is_file():
            out.append(mv)
    return out


def banner_lines(host: str, port: int, loaded: list[Any], api_key: bool = False) -> list[str]:
    """What `abstain serve` prints under its table: what to try, and what the answer means.

    One block per model of :func:`banner_models`: its source line, its ``try:`` lines and what
    its score means (models differ in score and threshold).
    """
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    lines: list[str] = []
    for mv in banner_models(loaded):
        _, source = example_instances(mv)
        cal = mv.calibration
        thr = "none (defer all)" if cal.threshold is None else f"{cal.threshold:.4g}"
        lines.append(f"example requests for {mv.name}/{mv.version} ({source}):")
        lines += [f"try: {c}" for c in curl_lines(f"http://{host}:{port}", mv, api_key)]
        what = (f"the top class's softmax probability at T = {cal.temperature:.4g}"
                if cal.score == "msp" else "not a probability")
        if cal.probs_temperature != cal.temperature:
            what += f" (the reported probabilities at T = {cal.probs_temperature:.4g})"
        lines.append(SCORE_LINE.format(score=cal.score, what=what, threshold=thr))
    return lines


def write_example(version_dir: Path, spec: str, indices: tuple[int, ...] = (0, 1),
                  decimals: int = 2) -> Path:
    """Write ``version_dir/example.json`` from samples of a labelled split (``data`` extra)."""
    import numpy as np

    from serve.data import load_split

    x, _, info = load_split(spec)
    inst = (np.round(x[list(indices)].astype(np.float64), decimals) + 0.0).tolist()  # no -0.0
    which = " and ".join(str(i) for i in indices)
    doc = {"source": f"{info['spec']}:{info['split']} samples {which}, rounded to {decimals} "
                     "decimals", "instances": inst}
    path = Path(version_dir) / EXAMPLE_FILE
    atomic_write_text(path, json.dumps(doc) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - a maintainer's tool
    p = argparse.ArgumentParser(prog="python -m serve.cli.examples", description=__doc__)
    p.add_argument("version_dir", type=Path)
    p.add_argument("--data", required=True, help="labelled test split, e.g. mnist1d:test")
    a = p.parse_args(argv)
    print(write_example(a.version_dir, a.data))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
