#!/usr/bin/env bash
# The CUDA tests and the GPU figures of BENCHMARKS.md in one pass (~6-8 minutes on one H200), plus a 2-GPU torchrun
# smoke run (NCCL) when nvidia-smi lists two GPUs or more (~1 minute; skipped with a message otherwise).
#
#   bash benchmarks/fetch_gpu_wheels.sh          # once, where the package registry is reachable
#   OUT=gpu_results bash benchmarks/gpu_check.sh # on the GPU machine, from the repository root
#
# The machine's python3 must have torch with CUDA; the plugin's other dependencies are installed from .whl/
# into /tmp/site when that folder holds wheels. Logs and JSON land in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, \
torch.cuda.get_device_name())" 2>&1 | tee "$OUT/gpu.txt" || exit 1
status=0
python3 -m pytest -q -rs -p no:cacheprovider -k cuda tests/test_ot.py tests/test_evaluation.py \
  tests/test_clip3dreid_engine.py tests/test_multi_process.py 2>&1 | tee "$OUT/pytest_cuda.txt" || status=1
python3 benchmarks/bench_ot.py --device cuda --repeats 7 --json "$OUT/ot_cuda.json" 2>&1 \
  | tee "$OUT/ot_cuda.txt" || status=1
python3 scripts/benchmark.py --device cuda --batch-size 64 --height 384 --width 192 --teacher ViT-B-32-quickgelu \
  --repeats 10 --warmup 3 --eval-size 1000 10000 --json "$OUT/bench_cuda.json" 2>&1 \
  | tee "$OUT/bench_cuda.txt" || status=1

# 2 GPUs: train the toy recipe for 2 epochs under torchrun (NCCL, one process per GPU), then evaluate its checkpoint
# in one process: the metrics must agree (to 1e-3: cuDNN may pick other kernels for other batch sizes).
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
if [ "${ngpu:-0}" -ge 2 ]; then
  toy=configs/toy/resnet50_baseline_64x32.yaml
  python3 -c "from clip3dreid_plugin.data.toy_market import write_toy_market; write_toy_market('$OUT/toy_data')" \
    || status=1
  { python3 -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port 29655 \
      -m clip3dreid_plugin.tools.train_net --config-file $toy --device cuda --output-dir "$OUT/ddp2" \
      data.root "$OUT/toy_data" sampler.train_sampler RandomIdentitySampler train.max_epoch 2 \
      runtime.dist_backend nccl runtime.progress False \
    && python3 -m clip3dreid_plugin.tools.train_net --config-file $toy --device cuda:1 --eval-only \
      --output-dir "$OUT/ddp2_single" data.root "$OUT/toy_data" model.load_weights "$OUT/ddp2/model/model.pth.tar-2" \
      runtime.progress False \
    && python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
ddp, one = (json.load(open(f"{out}/{d}/metrics.json"))["last"]["metrics"]["market1501"] for d in ("ddp2", "ddp2_single"))
bad = {k: (ddp[k], one[k]) for k in ddp if abs(ddp[k] - one[k]) > 1e-3}
print("2-GPU torchrun vs 1-GPU evaluation:", "equal" if not bad else f"DIFFER {bad}")
sys.exit(1 if bad else 0)
PY
  } 2>&1 | tee "$OUT/torchrun_2gpu.txt" || status=1
else
  echo "2-GPU torchrun smoke run skipped: nvidia-smi lists ${ngpu:-0} GPU(s), it needs 2" | tee "$OUT/torchrun_2gpu.txt"
fi
exit $status
