#!/usr/bin/env bash
# Installs the system libraries for headless rendering (EGL/Mesa) and the plugin with its test extra.
# Idempotent: both quickstart.sh and test.sh call it. Set CLIP3DREID_SKIP_INSTALL=1 to skip.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${CLIP3DREID_SKIP_INSTALL:-0}" = "1" ]; then exit 0; fi
PY=${PYTHON:-python3}
need_apt=0
for lib in libEGL.so.1 libEGL_mesa.so.0; do
  ldconfig -p 2>/dev/null | grep -q "$lib" || need_apt=1
done
if [ "$need_apt" = "1" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "[install] apt: EGL/Mesa libraries for headless rendering"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null
  else
    echo "[install] warning: headless GL (libegl1 libegl-mesa0 libgl1-mesa-dri) missing and cannot apt-get;" \
         "rendering will fail with a message saying so" >&2
  fi
fi
# Run the import check outside the repo so the source tree cannot mask a missing install.
NEEDED="clip3dreid_plugin, datasets_ext, torchreid, torchvision, open_clip, smplx, pyrender, ot, pytest, importlinter"
if ! (cd / && $PY -c "import $NEEDED") \
     >/dev/null 2>&1 \
   || [ "${CLIP3DREID_FORCE_INSTALL:-0}" = "1" ]; then
  echo "[install] pip install -e .[test]  (torch+torchvision CUDA build, ~5 GB on first install)"
  # No wheel cache: the CUDA build would otherwise sit on disk twice (~5 GB more), and CI disks can be small.
  $PY -m pip install -q --no-cache-dir --disable-pip-version-check -e ".[test]"
fi
