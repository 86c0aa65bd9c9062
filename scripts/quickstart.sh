#!/usr/bin/env bash
# The main job on the built-in default: install, build the data, train, print the results table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python3 -m clip3dreid_plugin.tools.quickstart "$@"
