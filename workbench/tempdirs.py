"""Working folders in the system temp folder (a conversion job's spec and log, the Model
Explorer server's secret and log), named after the process that owns them.

`make("job", name)` makes `ewb-job-<pid>-<name>-XXXX`. Its owner removes it when the work
ends; a process that was killed cannot, so the first `make` of every process removes the
folders of owners that are gone.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

_OWNED = re.compile(r"^ewb-(?:job|explore|warm|xnn)-(\d+)-")
_swept = False
_lock = threading.Lock()


def make(kind: str, label: str = "") -> Path:
    """A new private (0700) folder `ewb-<kind>-<pid>-<label>-XXXX` in the temp folder."""
    global _swept
    with _lock:
        if not _swept:
            _swept = True
            sweep_stale()
    return Path(tempfile.mkdtemp(prefix=f"ewb-{kind}-{os.getpid()}-{label + '-' if label else ''}"))


def sweep_stale(folder: str | os.PathLike | None = None) -> list[Path]:
    """Removes the working folders whose owning process has ended; returns them."""
    import psutil

    removed = []
    root = Path(folder or tempfile.gettempdir())
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for d in entries:
        m = _OWNED.match(d.name)
        if not m or not d.is_dir() or d.is_symlink():
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or psutil.pid_exists(pid):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def remove(folder: str | os.PathLike | None) -> None:
    """Removes a working folder made by `make` (nothing if it is gone already)."""
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
