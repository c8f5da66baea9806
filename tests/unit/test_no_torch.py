"""`serve` must work where torch cannot be imported (the GPU serving image has none)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

BLOCK = textwrap.dedent("""
    import importlib.abc, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named '{name}'", name=name)
    sys.meta_path.insert(0, _Block())
""")
TORCH = {"torch", "torchvision", "onnxscript"}


def _run(code: str, blocked: set[str] = TORCH) -> subprocess.CompletedProcess[str]:
    prelude = f"BLOCKED = {sorted(blocked)!r}\n" + BLOCK
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


def test_serve_imports_and_scores_without_torch() -> None:
    r = _run("""
        import pkgutil, importlib, sys
        import numpy as np
        import serve
        for m in pkgutil.walk_packages(serve.__path__, 'serve.'):
            importlib.import_module(m.name)
        from serve.scores import create_score
        from serve.selective_metrics import aurc
        s = create_score('pnorm:2')(np.array([[3.0, 0.0, 0.0], [1.0, 0.9, 0.8]]))
        assert s[0] > s[1], s
        assert 0.0 <= aurc(s, np.array([0, 1])) <= 1.0
        assert 'torch' not in sys.modules
        print('ok')
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")


def test_training_command_without_torch_says_how_to_install() -> None:
    r = _run("""
        import sys
        from serve.cli.main import main
        sys.exit(main(['train', '--data', 'mnist1d', '--out', 'runs/never']))
    """)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert ("pip install torch --index-url https://download.pytorch.org/whl/cpu, then "
            "pip install 'abstain[train]'") in r.stderr      # the CPU build first, not PyPI's CUDA one
    assert "Traceback" not in r.stderr


def test_help_lists_only_commands_this_install_can_run() -> None:
    r = _run("""
        from serve.cli.main import main
        main(['--help'])
    """)
    commands = r.stdout.split("positional arguments:")[1].split("options:")[0]
    for name in ("serve", "calibrate", "evaluate"):
        assert f"    {name} " in commands, r.stdout
    for name in ("train", "export", "study"):
        assert f"    {name} " not in commands, r.stdout
    assert ("Not available in this install: export (pip install torch --index-url "
            "https://download.pytorch.org/whl/cpu, then pip install 'abstain[train]')") in " ".join(
        r.stdout.split())


def test_a_dataset_without_the_data_extra_names_the_data_extra() -> None:
    model = Path(__file__).resolve().parents[2] / "models" / "mnist1d-maxsup" / "1"
    r = _run(f"""
        import os, sys, tempfile
        os.environ["ABSTAIN_CACHE_DIR"] = tempfile.mkdtemp()      # cold cache
        from serve.cli.main import main
        sys.exit(main(['evaluate', {str(model)!r}]))
    """, TORCH | {"mnist1d", "sklearn"})
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines()[-1] == (
        "abstain evaluate: error: the 'mnist1d' module is missing: this command needs the 'data' "
        "extra. Install it with: pip install 'abstain[data]'  (from a checkout: pip install -e "
        "'.[data]')")
