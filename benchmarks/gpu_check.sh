#!/usr/bin/env bash
# The CUDA tests and the GPU figures of BENCHMARKS.md in one pass (~6-8 minutes on one H200).
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
  tests/test_clip3dreid_engine.py 2>&1 | tee "$OUT/pytest_cuda.txt" || status=1
python3 benchmarks/bench_ot.py --device cuda --repeats 7 --json "$OUT/ot_cuda.json" 2>&1 \
  | tee "$OUT/ot_cuda.txt" || status=1
python3 scripts/benchmark.py --device cuda --batch-size 64 --height 384 --width 192 --teacher ViT-B-32-quickgelu \
  --repeats 10 --warmup 3 --eval-size 1000 10000 --json "$OUT/bench_cuda.json" 2>&1 \
  | tee "$OUT/bench_cuda.txt" || status=1
exit $status
