#!/usr/bin/env bash
# digits with a small MLP stopped early (3 epochs): enough test errors for SC metrics to mean something.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/abstain study --data digits --model mlp --losses ce,ls:0.1,ls:0.2,ls:0.3,maxsup:0.1:0.2 \
  --seeds 3 --epochs 3 --threads 1 --out docs/study/digits-early \
  --note "Image regime, not memorising: 8x8 digits, MLP stopped after 3 epochs so the 270-image test split has tens of errors (the 20-epoch CNN makes 0–1)." \
  > docs/study/digits-early.log 2>&1
