#!/usr/bin/env bash
# Puts into .whl/ (git-ignored) the wheels benchmarks/gpu_check.sh needs on a GPU machine that has torch,
# torchvision and the scientific stack but not the plugin's other dependencies and no network (the device
# tool's Python 3.12 image). Run here, where the package registry is reachable; ~35 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
# PyPI has no wheel of torchreid 0.2.5, only its sources (pure Python): build one.
$PY -m pip wheel -q --no-deps --disable-pip-version-check torchreid==0.2.5 -w .whl
$PY -m pip download -q --no-deps --disable-pip-version-check --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  POT==0.9.7.post1 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.7.0 yacs==0.1.8 gdown==6.5.1 \
  beautifulsoup4==4.15.0 soupsieve==4.1.3 smplx==0.1.28 trimesh==5.2.0
ls -1 .whl
