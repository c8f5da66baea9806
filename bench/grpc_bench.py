"""The gRPC endpoint in the same benchmark run: bench/grpc_load.py at c=1 and c=32, raw and typed
contents, against its own ``abstain serve --grpc-port`` on the same repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench import servers
from serve.errors import AbstainError


def grpc_rows(repo: Path, model: str, cfg, work: Path) -> list[str]:
    """Markdown table rows (grpc_load's own format), one per contents × concurrency."""
    cmd = [sys.executable, "bench/grpc_load.py", "--serve", str(repo), "--model", model,
           "--concurrency", "1", "32", "--contents", "raw", "typed",
           "--duration", str(cfg.duration_s), "--no-header", "--",
           "--intra-op-threads", str(cfg.intra_op_threads), "--max-batch-size",
           str(cfg.max_batch_size), "--device", cfg.device, "--follow-symlinks"]
    proc = subprocess.run(cmd, cwd=servers.ROOT, env=servers.child_env({}), capture_output=True,
                          text=True, timeout=8 * cfg.duration_s + 300)
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| gRPC")]
    (work / "grpc.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not rows:
        raise AbstainError(f"bench/grpc_load.py failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-400:]}")
    return rows
