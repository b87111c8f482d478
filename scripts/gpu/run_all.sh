#!/usr/bin/env bash
# Every device check in one call (a GPU session is short; ~7.5 minutes): kernels against their references, the
# 26B benchmark, a profile of one 26B decoder step; with TRAIN_MINUTES set, dgemma-tiny trained from scratch with two batch
# sizes side by side (the GPU is mostly idle for a model this small). Each part has its own time limit, so one
# failure does not take the others down.
#   bash scripts/gpu/run_all.sh                   # from the repository root; results under $OUT (or ./gpu_out)
#   TRAIN_MINUTES=6.3 bash scripts/gpu/run_all.sh # and train (the shipped model: batch 256, 6.3 minutes)
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

timeout 130 python3 scripts/gpu/check_kernels.py --budget-s 90 2>&1 | tee "$OUT/check_kernels.log"
timeout 230 python3 scripts/gpu/bench_26b.py 2>&1 | tee "$OUT/bench_26b.log"
timeout 90 python3 scripts/gpu/profile_step.py --variant bf16 2>&1 | tee "$OUT/profile_step.log"

# dgemma-tiny from scratch on the GPU (the package is not installed there: link it for the sampler's imports).
site=$(mktemp -d)
ln -s "$PWD/runtime" "$site/dgemma_runtime" && ln -s "$PWD/kernels" "$site/dgemma_kernels"
export PYTHONPATH="$site:$PWD"
minutes=${TRAIN_MINUTES:-0}
[ "$minutes" = 0 ] && exit 0
python3 scripts/make_story_corpus.py --out work_tiny/stories.jsonl >/dev/null
for run in "b256 256 3e-3" "b512 512 4e-3"; do
  set -- $run
  mkdir -p "$OUT/$1"
  cp dgemma_cli/builtin/dgemma-tiny/tokenizer.json "$OUT/$1/"
  timeout 260 python3 scripts/train_tiny.py --device cuda --minutes "$minutes" --batch-size "$2" --lr "$3" \
    --work "work_gpu_$1" --out "$OUT/$1" --report-every 200 --threads 4 > "$OUT/$1/train.log" 2>&1 &
done
wait
tail -n 12 "$OUT"/b*/train.log
# At most 8 files come back: keep the weights and logs (tokenizer and configs are the repository's own).
rm -f "$OUT"/b*/tokenizer.json "$OUT"/b*/config.json "$OUT"/b*/generation_config.json
