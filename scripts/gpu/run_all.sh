#!/usr/bin/env bash
# Every device check in one call (a GPU session is short; ~9 minutes): kernels against their references, the
# 26B benchmark, a profile of one 26B decoder step, loading onto the GPU; with TRAIN_MINUTES set, dgemma-tiny
# trained from scratch with two batch sizes side by side (the GPU is mostly idle for a model this small). Each
# part has its own time limit, so one failure does not take the others down.
# The scripts import the installed packages (dgemma_runtime, dgemma_kernels), so this first installs the checkout,
# editable, into the python3 that holds CUDA torch: `pip install -e .`, offline (the machine reaches no package
# index), so with --no-deps and --no-build-isolation. Everything the GPU scripts import beyond the checkout is on
# the bare machine already: torch with CUDA, Triton, safetensors, tokenizers; no extra is needed (`dev` and `bnb`
# are the CPU tests' oracles and bitsandbytes, which no script here uses). It takes seconds: the budget stays ~9 min.
#   bash scripts/gpu/run_all.sh                   # from the repository root; results under $OUT (or ./gpu_out)
#   TRAIN_ONLY=1 TRAIN_MINUTES=5.5 bash scripts/gpu/run_all.sh   # dgemma-tiny v2 only (issue 18), then eval_tiny
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
PIP_ROOT_USER_ACTION=ignore timeout 30 python3 -m pip install -q --no-index --no-deps --no-build-isolation \
  --disable-pip-version-check -e . && python3 -c "import dgemma_kernels, dgemma_runtime" \
  || { echo "pip install -e . failed: the scripts cannot import dgemma_runtime / dgemma_kernels" >&2; exit 1; }

# TRAIN_ONLY=1 skips the checks: training alone fills a 10-minute call (and the 8 files that come back).
if [ "${TRAIN_ONLY:-0}" = 0 ]; then
  timeout 110 python3 scripts/gpu/check_kernels.py --budget-s 70 2>&1 | tee "$OUT/check_kernels.log"
  timeout 250 python3 scripts/gpu/bench_26b.py 2>&1 | tee "$OUT/bench_26b.log"
  timeout 90 python3 scripts/gpu/profile_step.py --variant bf16 2>&1 | tee "$OUT/profile_step.log"
  # Loading onto the GPU (issue 23): disk to GPU, prequantized NVFP4, and quantize-at-load on the GPU.
  timeout 100 python3 scripts/bench_load.py --gb 2 --runs 2 --device cuda 2>&1 | tee "$OUT/bench_load.log"
fi

# dgemma-tiny from scratch on the GPU (train_tiny.py and eval_tiny.py import the installed dgemma_runtime too): the
# corpus (stories and conversations; the shipped tokenizer.json serves it, new words split into pieces it has), two
# runs side by side (the GPU is mostly idle for a model this small), then each model measured by eval_tiny.py on
# held-out prompts, on the CPU (float32, as a CPU session reruns it; no kernel compiles). Training builds its
# examples (~40 s) before its clock starts and exports after; eval on 30 conversations takes ~1-2 min. Whole part:
# TRAIN_MINUTES + 4 minutes at most (its limits below): TRAIN_MINUTES=5.5 fits a 10-minute call, on its own.
minutes=${TRAIN_MINUTES:-0}
[ "$minutes" = 0 ] && exit 0
timeout 120 python3 scripts/make_story_corpus.py --out work_tiny/stories.jsonl || exit 1
train_limit=$(python3 -c "print(round($minutes * 60 + 120))")
for run in "b256 256 3e-3" "b512 512 4e-3"; do
  set -- $run
  mkdir -p "$OUT/$1"
  cp dgemma_cli/builtin/dgemma-tiny/tokenizer.json "$OUT/$1/"
  (timeout "$train_limit" python3 scripts/train_tiny.py --device cuda --minutes "$minutes" --batch-size "$2" \
      --lr "$3" --work "work_gpu_$1" --out "$OUT/$1" --report-every 200 --threads 4 > "$OUT/$1/train.log" 2>&1 \
    && timeout 120 python3 scripts/eval_tiny.py --model "$OUT/$1" --n 30 --threads 6 --json \
      > "$OUT/$1/eval.json" 2>> "$OUT/$1/train.log") &
done
wait
tail -n 24 "$OUT"/b*/train.log
# At most 8 files come back: keep the weights, the log (eval's table at its end) and eval's figures, 6 in all
# (tokenizer and configs are the repository's own: train_tiny.py writes the same ones for the same tokenizer).
rm -f "$OUT"/b*/tokenizer.json "$OUT"/b*/config.json "$OUT"/b*/generation_config.json
