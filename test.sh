#!/usr/bin/env bash
# The test command: sets up the environment if needed, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh
exec python -m pytest "$@"
