#!/usr/bin/env bash
# Installs what is needed, then runs the whole test suite on CPU (no network, no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export CLIP3DREID_PROGRESS=0
python3 -m pytest tests "$@"
