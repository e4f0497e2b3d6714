#!/usr/bin/env bash
# The main command: sets up the environment if needed, then opens JupyterLab on the
# tour notebook. `bash run.sh --headless` runs every notebook top to bottom instead
# and writes an HTML copy of each to notebooks/_html/.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh
if [ "${1:-}" = "--headless" ]; then
  shift
  exec python -m workbench.notebooks "$@"
fi
root_flag=()
[ "$(id -u)" = 0 ] && root_flag=(--allow-root)   # containers often run as root
exec jupyter lab --ip=127.0.0.1 "${root_flag[@]}" notebooks/00_tour.ipynb "$@"
