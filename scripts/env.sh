# Sourced by run.sh, test.sh and .ci/run: makes (once) and activates the venv.
#
# The venv lives outside the clone, keyed by a hash of pyproject.toml, so a fresh
# clone on a machine that already built the same stack reuses it (CI clones anew
# each run), while any change to the dependencies builds a new one.
set -euo pipefail
EWB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_hash=$(sha256sum "$EWB_ROOT/pyproject.toml" | cut -c1-12)
EWB_VENV="${EWB_VENV:-$HOME/.cache/edge-workbench/venv-$_hash}"
_py="${EWB_PYTHON:-python3.11}"
command -v "$_py" >/dev/null || _py=python3

if [ ! -f "$EWB_VENV/.complete" ]; then
  echo "edge-workbench: building the Python environment in $EWB_VENV (about 2 minutes, once)" >&2
  rm -rf "$EWB_VENV"
  # Checked by hand, not left to `set -e`: sourced after `&&` (or in an `if`), errexit is off,
  # and a failed install must never be marked complete.
  # torch first and exact: the local CPU wheel; anything looser pulls CUDA builds.
  if ! { "$_py" -m venv "$EWB_VENV" \
         && "$EWB_VENV/bin/python" -m pip install -q --upgrade pip wheel \
         && "$EWB_VENV/bin/python" -m pip install -q "torch==2.13.0" \
         && "$EWB_VENV/bin/python" -m pip install -q -e "$EWB_ROOT[notebook,sweep,bundle,test]"; }; then
    echo "edge-workbench: building the environment in $EWB_VENV failed (pip's reason is above); it is not marked complete, so the next run builds it again" >&2
    return 1 2>/dev/null || exit 1
  fi
  touch "$EWB_VENV/.complete"
fi
# Debian's Chromium for the browser tests and screenshots (Playwright drives it; it
# never downloads a browser of its own). Installed when we can; tests skip without it.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "edge-workbench: installing Debian's chromium for the browser tests" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "edge-workbench: could not install chromium; browser tests will be skipped" >&2
fi
# Point the (shared) venv's editable install at this clone; cheap when it already does.
# Checked from / so the current folder cannot stand in for the installed packages.
if ! (cd / && "$EWB_VENV/bin/python" - "$EWB_ROOT" <<'PY' 2>/dev/null
import pathlib, sys
import workbench, workbench_widgets
root = pathlib.Path(sys.argv[1]).resolve()
ok = all(root in pathlib.Path(m.__file__).resolve().parents for m in (workbench, workbench_widgets))
sys.exit(0 if ok else 1)
PY
); then
  "$EWB_VENV/bin/python" -m pip install -q --no-deps -e "$EWB_ROOT"
fi
export PATH="$EWB_VENV/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TF_CPP_MIN_LOG_LEVEL=3
