"""The one progress protocol: the core calls it, panels draw it, the CLI prints it.

    def progress(stage: str, done: int, total: int, detail: str = "") -> None: ...

`stage` names the step ("load weights", "export", ...), `done`/`total` count its
units (tensors, signatures; total 0 when unknown), `detail` says what is being done
now (a tensor's name). The core never prints for the user: it only calls this.
"""

from __future__ import annotations

from typing import Optional, Protocol


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int, detail: str = "") -> None: ...


def report(progress: Optional[Progress], stage: str, done: int, total: int, detail: str = "") -> None:
    if progress is not None:
        progress(stage, done, total, detail)
