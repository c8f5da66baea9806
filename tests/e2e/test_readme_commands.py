"""The README's command blocks, run as written in a fresh copy of the project with a fresh venv.

Every fenced block of README.md is in PLAN below: a shell (bash/sh) block's commands (continuation
lines joined, trailing comments dropped) one by one, any other block by its first line. Each is
either RUN (a test below runs it, as written, from the copy's root, and checks what the README says
it prints) or skipped with the reason. A block or command that is in neither fails
test_every_readme_block_is_run_or_skipped, so a new README command is never silently unchecked;
a PLAN entry the README no longer has fails it too.

The copy's `.venv` is the run's shared serving install (tests/fresh_venv.py: `pip install
'.[cpu,data]'`, what `make serve` installs, but from a copy rather than editable), with the
Makefile's `.venv/.serve` marker touched, so `make serve` runs its real recipe and installs
nothing. Commands after the README's PATH step run in a shell that sourced `.venv/bin/activate`
(the README: "The `abstain …` lines in this README and in docs/ assume the venv is active"), with
no `abstain` on PATH before it and an empty data cache (a fresh machine).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from fresh_venv import clean_env, serve_only_venv
from server_support import free_port

from serve.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

RUN = "run"
_TORCH = "needs torch (the `train` extra), which a serving install does not have"
# Every fenced block of the README: shell commands as written (comments dropped), other blocks by
# their first line. RUN: executed by a test below; otherwise why it is not.
PLAN: dict[str, str] = {
    # ## Set up on a fresh machine
    "make serve": RUN,      # as `make serve PORT=<free port>` (the README's own form for another port)
    "make test": "installs system packages with sudo apt-get, torch and a Label Studio venv, then "
                 "runs the whole suite (this test included): it is how the suite is run",
    # ## First request (its curl lines are run against `make serve`; test_readme_example.py
    # also keeps the block equal to what the server prints)
    "example requests for mnist1d-maxsup/1 (mnist1d:test samples 0 and 1, rounded to 2 decimals):": RUN,
    # ## The `abstain` command
    ". .venv/bin/activate": RUN,    # and then `abstain --help`, as its comment says
    ".venv/bin/abstain --help": RUN,
    "abstain train | export | calibrate | evaluate | package | serve | study | review": RUN,
    # ## From training to a certified model (NAME = mnist1d-maxsup, the shipped model, whose
    # numbers the README quotes)
    "abstain train --data mnist1d --model cnn1d --loss maxsup --alpha 0.1:0.2 --epochs 30 --out runs/NAME":
        RUN,    # the serving install refuses it (exit 2, names the extra); the full parser accepts it
    "abstain export runs/NAME --to models/NAME/1": RUN,     # likewise
    "abstain calibrate models/NAME/1 --data mnist1d:calibration --target-risk 0.01 --delta 0.05": RUN,
    "abstain evaluate  models/NAME/1 --data mnist1d:test": RUN,
    # ## Serving
    "docker build -t abstain .": "needs Docker and the network (base image, pip); "
                                 "tests/e2e/test_server_docker.py builds and runs the image where Docker is",
    "docker run --gpus all -p 8000:8000 -p 8001:8001 abstain --device cuda":
        "needs Docker and a GPU; the image's entry point with these arguments is parsed below",
    # ## Scaling out
    "kubectl create namespace abstain": "needs a Kubernetes cluster",   # the section's paths and
    # torchrun lines are also checked by tests/integration/test_k8s_docs.py
    "kubectl -n abstain create secret generic abstain-api-keys \\\n"
    "  --from-literal=api-key=$(openssl rand -hex 24) --from-literal=admin-key=$(openssl rand -hex 24)":
        "needs a Kubernetes cluster",
    "(cd deploy/k8s/base && kustomize edit set image abstain=registry.example.com/abstain:0.1.0)":
        "edits the committed kustomization (and needs kustomize); a deployment's own step",
    "kubectl -n abstain apply -k deploy/k8s/base": "needs a Kubernetes cluster",
    "torchrun --standalone --nproc_per_node 4 -m serve.cli.main train \\\n"
    "  --data mnist1d --model cnn1d --loss maxsup --batch-size 512 --device cuda --out runs/mnist1d-maxsup":
        _TORCH + ", and 4 GPUs; its `train` arguments are parsed below",
    "torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint node0.example.com:29500 \\\n"
    "  --rdzv_id mnist1d-maxsup -m serve.cli.main train \\\n"
    "  --data mnist1d --model cnn1d --loss maxsup --batch-size 512 --device cuda --out /shared/runs/mnist1d-maxsup":
        _TORCH + ", and two machines with 4 GPUs; its `train` arguments are parsed below",
    # ## The study
    "abstain study --data mnist1d --model cnn1d --losses ce,ls:0.1,ls:0.2,ls:0.3,maxsup:0.1:0.2 \\\n"
    "    --seeds 3 --out docs/study/NAME":
        _TORCH + ", and trains 15 models (hours); its arguments are parsed below and "
                 "tests/e2e/test_study_quick.py runs `--quick`",
}
SHELLS = ("bash", "sh")


def _blocks(text: str) -> list[tuple[str, str]]:
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.M | re.S)]


def _commands(body: str) -> list[str]:
    """A shell block's commands: continuation lines joined (with their newline), comments dropped."""
    out: list[str] = []
    lines = [re.sub(r"\s+#.*$", "", ln) for ln in body.splitlines() if not ln.startswith("#")]
    while lines:
        cmd = lines.pop(0)
        while cmd.endswith("\\") and lines:
            cmd += "\n" + lines.pop(0)
        if cmd.strip():
            out.append(cmd)
    return out


def _entries(text: str) -> dict[str, str]:
    """PLAN key → the README text to run (shell commands keep their comments)."""
    out: dict[str, str] = {}
    for lang, body in _blocks(text):
        if lang in SHELLS:
            written = {c: c for c in _commands(body)}
            for line in body.splitlines():     # keep each command's own line, comment included
                key = re.sub(r"\s+#.*$", "", line)
                if key in written:
                    written[key] = line
            out |= written
        else:
            out[body.splitlines()[0]] = body
    return out


README_TEXT = README.read_text()
ENTRIES = _entries(README_TEXT)


def test_every_readme_block_is_run_or_skipped() -> None:
    unplanned = [c for c in ENTRIES if c not in PLAN]
    stale = [c for c in PLAN if c not in ENTRIES]
    assert not unplanned, f"README commands neither run nor skipped here (add them to PLAN): {unplanned}"
    assert not stale, f"PLAN entries the README no longer has: {stale}"
    assert all(v == RUN or len(v) > 20 for v in PLAN.values())     # a skip says why


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A fresh copy of the project with the shared serving install as its .venv."""
    venv = serve_only_venv(tmp_path_factory)
    root = tmp_path_factory.mktemp("readme") / "abstain"
    root.mkdir()
    for f in ("pyproject.toml", "README.md", "Makefile"):
        shutil.copy(ROOT / f, root / f)
    for d in ("serve", "training", "models"):
        shutil.copytree(ROOT / d, root / d, ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".venv").symlink_to(venv)
    (venv / ".serve").touch()               # newer than the copy's pyproject.toml: make installs nothing
    return root


def _path_without_abstain() -> str:
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(d for d in dirs if d and not (Path(d) / "abstain").exists())


def _sh(project: Path, script: str, activate: bool = True, timeout: float = 300,
        **env: str) -> subprocess.CompletedProcess[str]:
    """Run script with bash from the copy's root; after the README's PATH step when activate."""
    if activate:
        script = ". .venv/bin/activate\n" + script
    env = clean_env(PATH=_path_without_abstain(), COLUMNS="200",
                    ABSTAIN_CACHE_DIR=str(project.parent / "cache"), **env)
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=project,
                          env=env, timeout=timeout)


def _run(key: str) -> str:
    assert PLAN[key] == RUN, key
    return ENTRIES[key]


def _listed(help_text: str) -> set[str]:
    commands = help_text.split("positional arguments:")[1].split("options:")[0]
    return {line.split()[0] for line in commands.splitlines()[2:] if line.startswith("    ")}


def test_the_path_step_and_help(project: Path) -> None:
    r = _sh(project, "command -v abstain", activate=False)
    assert r.returncode == 1, r.stdout          # "not on your PATH"
    # the PATH step, then (its comment) `abstain --help`, in the same shell
    r = _sh(project, f"{_run('. .venv/bin/activate')}\ncommand -v abstain\nabstain --help",
            activate=False)
    assert r.returncode == 0, r.stderr
    where, activated = r.stdout.split("\n", 1)
    assert Path(where).resolve() == (project / ".venv" / "bin" / "abstain").resolve(), where
    r = _sh(project, _run(".venv/bin/abstain --help"), activate=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout == activated
    # "lists only the subcommands this install can run: after make serve, calibrate, evaluate and
    # serve; it names the extra each other one needs (train for train, export and study, package,
    # review)"
    assert _listed(activated) == {"calibrate", "evaluate", "serve"}, activated
    epilog = " ".join(activated.split("Not available in this install:")[1].split())
    # "train (pip install torch --index-url …/cpu, then pip install 'abstain[train]')"
    named = dict(re.findall(r"(\w+) \((?:pip install torch --index-url \S+, then )?"
                            r"pip install 'abstain\[(\w+)\]'\)", epilog))
    assert named == {"train": "train", "export": "train", "study": "train",
                     "package": "package", "review": "review"}, epilog
    # the README's list of subcommands is this program's: the runnable ones and the named ones
    synopsis = _run("abstain train | export | calibrate | evaluate | package | serve | study | review")
    assert set(synopsis.split()) - {"abstain", "|"} == _listed(activated) | set(named)


def _full_parser():
    parser = build_parser()
    if parser.unavailable:
        pytest.skip(f"this environment lacks {sorted(parser.unavailable)} (make test installs all)")
    return parser


@pytest.mark.parametrize("key", [
    "abstain train --data mnist1d --model cnn1d --loss maxsup --alpha 0.1:0.2 --epochs 30 --out runs/NAME",
    "abstain export runs/NAME --to models/NAME/1",
])
def test_training_commands_refused_by_the_serving_install(project: Path, key: str) -> None:
    r = _sh(project, _run(key))
    # "running one of them says the same, exit 2"
    assert r.returncode == 2 and "needs the 'train' extra" in r.stderr, r.stderr
    assert "pip install 'abstain[train]'" in r.stderr and "Traceback" not in r.stderr
    assert not (project / "runs").exists() and not (project / "models" / "NAME").exists()


def _words(cmd: str) -> list[str]:
    """A command's words as the shell splits them (a backslash-newline joins lines)."""
    return shlex.split(cmd.replace("\\\n", " "), comments=True)


def test_commands_that_need_torch_or_docker_parse() -> None:
    """The arguments of the lines not run here are ones the full `abstain` accepts."""
    parser = _full_parser()
    argvs = [_words(k)[1:] for k in ENTRIES if k.startswith(("abstain train ",
                                                                          "abstain export ",
                                                                          "abstain study "))
             and "|" not in k]
    for key in (k for k in ENTRIES if k.startswith("torchrun ")):
        words = _words(key)
        argvs.append(words[words.index("serve.cli.main") + 1:])
    # the image's entry point (Dockerfile) followed by the README's `docker run … abstain` arguments
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.M)[1])
    docker_run = _words(next(k for k in ENTRIES if k.startswith("docker run ")))
    argvs.append(entry[1:] + docker_run[docker_run.index("abstain") + 1:])
    assert len(argvs) == 6, argvs
    for argv in argvs:
        args = parser.parse_args(argv)
        assert args.command == argv[0]


def test_calibrate_and_evaluate_the_shipped_model(project: Path) -> None:
    """NAME = mnist1d-maxsup; the README quotes this model's calibration and test numbers."""
    calibrate = _run("abstain calibrate models/NAME/1 --data mnist1d:calibration --target-risk 0.01 "
                     "--delta 0.05")
    evaluate = _run("abstain evaluate  models/NAME/1 --data mnist1d:test")
    model = project / "models" / "mnist1d-maxsup" / "1"
    shipped = json.loads((model / "calibration.json").read_text())
    t0 = time.monotonic()
    r = _sh(project, f"NAME=mnist1d-maxsup\n{calibrate.replace('NAME', '$NAME')}")
    assert r.returncode == 0, r.stderr
    assert "generating mnist1d" in r.stderr           # the fresh machine's empty cache
    cal = json.loads((model / "calibration.json").read_text())
    assert {k: v for k, v in cal.items() if k != "created"} == {
        k: v for k, v in shipped.items() if k != "created"}, "the shipped calibration.json is not reproduced"
    m = re.search(r"choice: MSP kept: .*best challenger (\S+) .*?z = ([\d.]+)", r.stdout)
    assert m, r.stdout
    r = _sh(project, f"NAME=mnist1d-maxsup\n{evaluate.replace('NAME', '$NAME')}")
    assert r.returncode == 0 and "selective risk" in r.stdout, r.stderr
    json_line = "abstain evaluate  models/$NAME/1 --data mnist1d:test --json"      # "add --json for JSON"
    assert json_line.replace("$NAME", "NAME").removesuffix(" --json") in PLAN
    r = _sh(project, f"NAME=mnist1d-maxsup\n{json_line}")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)["metrics"]
    assert time.monotonic() - t0 < 120
    quoted = re.search(
        r"MSP kept \(best\s+challenger (\S+), z = ([\d.]+)\), certified coverage ([\d.]+) at r\\\* = "
        r"([\d.]+) on ([\d,]+) certification\s+samples; on the test split, risk ([\d.]+) at coverage "
        r"([\d.]+)\.", README_TEXT)
    assert quoted, "the README no longer quotes the shipped model's numbers in the expected form"
    best, z, cov, target, n_cert, risk, test_cov = quoted.groups()
    assert (best, z) == (m[1], m[2])
    assert cal["score"] == "msp" and cal["target_risk"] == float(target)
    assert cal["n_cert"] == int(n_cert.replace(",", ""))
    assert f"{cal['coverage']:.{len(cov) - 2}f}" == cov
    assert f"{ev['selective_risk']:.{len(risk) - 2}f}" == risk
    assert f"{ev['coverage']:.{len(test_cov) - 2}f}" == test_cov


def _normalised(body: str) -> str:
    json.loads(body)
    return re.sub(r'"id":"[^"]*"', '"id":"…"', body.strip(), count=1)


def test_make_serve_then_the_first_requests(project: Path) -> None:
    assert PLAN["make serve"] == RUN and ENTRIES["make serve"].startswith("make serve ")
    example = _run("example requests for mnist1d-maxsup/1 (mnist1d:test samples 0 and 1, rounded "
                   "to 2 decimals):").splitlines()
    pairs = [(cmd, ans.removeprefix("# → ")) for cmd, ans in zip(example, example[1:], strict=False)
             if cmd.startswith("curl ") and ans.startswith("# → ")]
    assert len(pairs) == 2
    port = free_port()
    env = clean_env(PATH=_path_without_abstain(), ABSTAIN_POLL_INTERVAL_S="0",
                    ABSTAIN_CACHE_DIR=str(project.parent / "cache"))
    env = {k: v for k, v in env.items() if not k.startswith("MAKE")}
    proc = subprocess.Popen(["bash", "-c", f"make serve PORT={port}"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "make serve did not become ready"
            time.sleep(0.2)
        # "in a second terminal": the README's curl lines, as written but for the port
        for cmd, answer in pairs:
            r = _sh(project, cmd.replace("http://127.0.0.1:8000/", f"http://127.0.0.1:{port}/"),
                    activate=False, timeout=30)
            assert r.returncode == 0, r.stderr
            assert _normalised(r.stdout) == answer
        os.killpg(proc.pid, signal.SIGINT)                 # "Ctrl-C stops it"
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "pip install" not in out and "make: ***" not in out, out[-2000:]
    assert "Application shutdown complete" in out, out[-2000:]
