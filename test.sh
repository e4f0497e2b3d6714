#!/usr/bin/env bash
# The test command: sets up the environment if needed, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh
# --durations: the slowest tests, printed at the end (CI has a 30-minute budget on 2 cores)
exec python -m pytest --durations=15 "$@"
