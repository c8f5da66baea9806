#!/usr/bin/env bash
# A second least-memorising regime (100k mnist1d, 3 epochs), run as two processes over disjoint
# loss subsets into the same folder, then combined (the report is rebuilt from the saved runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
A=.venv/bin/abstain
COMMON=(--data 'mnist1d?n=100000' --model cnn1d --seeds 3 --epochs 3 --threads 1 --out docs/study/mnist1d-large-3ep)
NOTE="Least-memorising regime, longer: 100k mnist1d samples (60k train), 3 epochs, so CE catches up with LS and claim 1 can be tested nearer matched accuracy."
$A study "${COMMON[@]}" --losses ce,ls:0.1,ls:0.2 --note "$NOTE" > docs/study/mnist1d-large-3ep-a.log 2>&1 &
$A study "${COMMON[@]}" --losses ls:0.3,maxsup:0.1:0.2 --note "$NOTE" > docs/study/mnist1d-large-3ep-b.log 2>&1 &
wait
$A study "${COMMON[@]}" --losses ce,ls:0.1,ls:0.2,ls:0.3,maxsup:0.1:0.2 --reuse --note "$NOTE" > docs/study/mnist1d-large-3ep.log 2>&1
$A study --index docs/study
