#!/usr/bin/env bash
# The CUDA tests and the GPU figures of BENCHMARKS.md in one pass that fits a 10-minute window on one GPU (each step
# has a time limit; about 4-6 minutes on an H200), plus a 2-GPU torchrun smoke run (NCCL) when nvidia-smi lists two
# GPUs or more. It ends with a one-screen summary (benchmarks/gpu_summary.py).
#
#   bash benchmarks/fetch_gpu_wheels.sh           # once, where the package registry is reachable
#   OUT=gpu_results bash benchmarks/gpu_check.sh  # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run        # on a CPU: every step but CUDA, tiny sizes, figures "not run"
#
# The machine's python3 must have torch with CUDA; the plugin's other dependencies are installed from .whl/ into
# /tmp/site when that folder holds wheels. At most 8 files land in $OUT: env.txt, pytest_cuda.txt, ot_cuda.json,
# ot_cuda.txt, bench_cuda.json, bench_cuda.txt, torchrun_2gpu.txt, summary.txt (the 2-GPU run's data and
# checkpoints stay under /tmp). The exit status is 0 only when every step and every test passed.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; fi
OUT=${OUT:-$([ $DRY = 1 ] && echo /tmp/gpu_check_dry || echo gpu_results)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CLIP3DREID_PROGRESS=0
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
START=$SECONDS
step() { echo "[gpu_check +$((SECONDS - START))s] $*"; }
status=0

step "1/6 dependencies"
if compgen -G ".whl/*.whl" >/dev/null; then
  if [ $DRY = 1 ]; then
    # The wheels are cp312 builds for the GPU machine: a CPU rehearsal lists them rather than installing them.
    ls -1 .whl/*.whl
  else
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  fi
else
  echo "no wheels in .whl/: using the packages python3 has (benchmarks/fetch_gpu_wheels.sh fetches them)"
fi

step "2/6 environment"
python3 - "$DRY" <<'PY' 2>&1 | tee "$OUT/env.txt" || exit 1
import sys
import torch
dry = sys.argv[1] == "1"
if not dry and not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device (use --dry-run to rehearse on a CPU)")
gpu = "no GPU (dry run)" if dry else "{} (compute capability {}.{}), {} GPU(s)".format(
    torch.cuda.get_device_name(), *torch.cuda.get_device_capability(), torch.cuda.device_count())
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {gpu}")
PY

# Time limits per step (seconds): together under 10 minutes with the set-up, the 2-GPU run included.
if [ $DRY = 1 ]; then
  OT_ARGS=(--device cpu --batch 4 --n 12 --dim 16 --repeats 1 --max-iter 20)
  BENCH_ARGS=(--device cpu --batch-size 4 --height 64 --width 32 --repeats 1 --warmup 0 --eval-size 30 300)
else
  OT_ARGS=(--device cuda --repeats 5)
  BENCH_ARGS=(--device cuda --batch-size 64 --height 384 --width 192 --repeats 8 --warmup 3 --eval-size 1000 10000)
fi

step "3/6 CUDA tests (limit 230 s)"
# -k cuda picks every CUDA test (and a few device-parsing tests that run anywhere); without a GPU the CUDA ones
# skip. Among them: the OT loss against POT, GPU ranking, training under each precision, a step with no host sync,
# the teacher in half precision (online and labelling), SyncBatchNorm across two ranks, the GPU RNG and fp16
# GradScaler state through a checkpoint, fp16 in the shape probe's engine.
timeout 230 python3 -m pytest -q -rfEs -p no:cacheprovider tests/losses/test_ot.py tests/evaluation/test_evaluation.py \
  tests/engine/test_clip3dreid_engine.py tests/engine/test_multi_process.py tests/teacher/test_teacher.py \
  tests/study/test_method_study.py \
  -k "cuda" 2>&1 | tee "$OUT/pytest_cuda.txt" || status=1

step "4/6 OT loss against the POT loop (limit 110 s)"
timeout 110 python3 benchmarks/bench_ot.py "${OT_ARGS[@]}" --json "$OUT/ot_cuda.json" 2>&1 \
  | tee "$OUT/ot_cuda.txt" || status=1

step "5/6 training step, teacher and evaluation against torchreid (limit 160 s)"
timeout 160 python3 scripts/benchmark.py "${BENCH_ARGS[@]}" --teacher ViT-B-32-quickgelu \
  --json "$OUT/bench_cuda.json" 2>&1 | tee "$OUT/bench_cuda.txt" || status=1

# 2 GPUs: train the toy recipe for 2 epochs under torchrun (NCCL, one process per GPU), then evaluate its checkpoint
# in one process: the metrics must agree (to 1e-3: cuDNN may pick other kernels for other batch sizes).
step "6/6 2-GPU torchrun (limit 100 s, only with two GPUs)"
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
if [ $DRY = 0 ] && [ "${ngpu:-0}" -ge 2 ]; then
  toy=configs/toy/resnet50_baseline_64x32.yaml
  tmp=$(mktemp -d /tmp/gpu_check_2gpu.XXXXXX)
  { python3 tests/fixtures/toy_market.py "$tmp/toy_data" \
    && timeout 70 python3 -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port 29655 \
      -m clip3dreid_plugin.tools.train_net --config-file $toy --device cuda --output-dir "$tmp/ddp2" \
      data.root "$tmp/toy_data" sampler.train_sampler RandomIdentitySampler train.max_epoch 2 \
      runtime.dist_backend nccl runtime.progress False runtime.sync_bn True \
    && timeout 30 python3 -m clip3dreid_plugin.tools.train_net --config-file $toy --device cuda:1 --eval-only \
      --output-dir "$tmp/ddp2_single" data.root "$tmp/toy_data" model.load_weights "$tmp/ddp2/model/model.pth.tar-2" \
      runtime.progress False \
    && python3 - "$tmp" <<'PY'
import json, sys
out = sys.argv[1]
ddp, one = (json.load(open(f"{out}/{d}/metrics.json"))["last"]["metrics"]["market1501"]
            for d in ("ddp2", "ddp2_single"))
bad = {k: (ddp[k], one[k]) for k in ddp if abs(ddp[k] - one[k]) > 1e-3}
print("2-GPU torchrun (NCCL, SyncBatchNorm) vs 1-GPU evaluation:", "equal" if not bad else f"DIFFER {bad}")
sys.exit(1 if bad else 0)
PY
  } 2>&1 | tee "$OUT/torchrun_2gpu.txt" || status=1
else
  why=$([ $DRY = 1 ] && echo "dry run" || echo "nvidia-smi lists ${ngpu:-0} GPU(s), it needs 2")
  echo "2-GPU torchrun smoke run skipped: $why" | tee "$OUT/torchrun_2gpu.txt"
fi

step "summary"
python3 benchmarks/gpu_summary.py --out "$OUT" $([ $DRY = 1 ] && echo --dry-run) || status=1
step "done: exit status $status, $(ls -1 "$OUT" | wc -l) files in $OUT"
exit $status
