"""The scale-out docs (README "Scaling out", docs/scaling.md) name real files and real commands."""

from __future__ import annotations

import re
import shlex

import pytest
from k8s_manifests import ROOT

from serve.cli.main import build_parser

DOCS = (ROOT / "README.md", ROOT / "docs" / "scaling.md")


def _scaling_text() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Scaling out", 1)
    assert len(section) == 2, "README.md has no 'Scaling out' section"
    return section[1].split("\n## ", 1)[0] + (ROOT / "docs" / "scaling.md").read_text()


def _commands(prefix: str) -> list[list[str]]:
    """Every shell command in the docs' code blocks that starts with ``prefix``."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", _scaling_text(), flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith(prefix):
                out.append(shlex.split(line))
    return out


def test_deploy_paths_in_docs_exist() -> None:
    paths = set(re.findall(r"deploy/(?:k8s|kserve)\b[\w./-]*[\w/]", _scaling_text()))
    assert len(paths) >= 8
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"the docs name files that do not exist: {missing}"


def test_torchrun_commands_parse() -> None:
    run = pytest.importorskip("torch.distributed.run", reason="the train extra provides torchrun")
    commands = _commands("torchrun")
    assert len(commands) >= 4           # single- and multi-node, in README and docs/scaling.md
    for argv in commands:
        opts = run.get_args_parser().parse_args(argv[1:])
        assert opts.module and opts.training_script == "serve.cli.main", argv
        train = build_parser().parse_args(opts.training_script_args)
        assert train.command == "train" and train.device == "cuda"
        nodes = int(str(opts.nnodes).split(":")[-1])
        processes = nodes * int(opts.nproc_per_node)
        assert train.batch_size % processes == 0, "--batch-size is the global batch"
        if nodes > 1:
            assert opts.rdzv_backend == "c10d" and opts.rdzv_endpoint and opts.rdzv_id
        else:
            assert opts.standalone


def test_kubectl_commands_name_real_files() -> None:
    blocks = "".join(re.findall(r"```bash\n(.*?)```", _scaling_text(), flags=re.S))
    applied = re.findall(r"^kubectl .*?apply .*$", blocks, flags=re.M)
    targets = [t for line in applied for t in re.findall(r"(?:^|\s)-[fk] (\S+)", line)]
    assert len(targets) >= 3, "the docs show no kubectl apply"
    for target in targets:
        assert (ROOT / target).exists(), target
