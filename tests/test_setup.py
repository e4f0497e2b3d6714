"""The set-up script the README's two commands source (scripts/env.sh)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_failed_build_is_named_and_never_marked_complete(tmp_path):
    """Sourced after `&&`, bash turns errexit off: a failing step must still stop the script, say
    so, and leave no `.complete` behind for the next run to trust."""
    venv = tmp_path / "venv"
    run = subprocess.run(["bash", "-c", f"source {ROOT}/scripts/env.sh && echo CONTINUED"],
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "EWB_VENV": str(venv),
                              "EWB_PYTHON": "false"},  # a Python that fails at once: the venv step fails
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "CONTINUED" not in run.stdout
    assert f"building the environment in {venv} failed" in run.stderr and "not marked complete" in run.stderr
    assert not (venv / ".complete").exists()
