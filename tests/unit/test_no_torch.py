"""`serve` must work where torch cannot be imported (the GPU serving image has none)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in {'torch', 'torchvision', 'onnxscript'}:
                raise ModuleNotFoundError(f"No module named '{name}'", name=name)
    sys.meta_path.insert(0, _Block())
""")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


def test_serve_imports_and_scores_without_torch() -> None:
    r = _run("""
        import pkgutil, importlib, sys
        import numpy as np
        import serve
        for m in pkgutil.walk_packages(serve.__path__, 'serve.'):
            importlib.import_module(m.name)
        from serve.scores import create_score
        from serve.metrics import aurc
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
        from serve.cli import main
        sys.exit(main(['train', '--data', 'mnist1d', '--out', 'runs/never']))
    """)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "pip install 'abstain[train]'" in r.stderr
    assert "Traceback" not in r.stderr
