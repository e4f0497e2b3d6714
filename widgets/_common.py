"""Small helpers the panels share: the status message, and one background task at a time."""

from __future__ import annotations

import threading
from typing import Callable, Optional

from workbench import WorkbenchError

OK, BAD = "#2e7d32", "#c62828"


def message(text: str, error: bool = False) -> str:
    """The one-line status message under a panel's buttons (text is HTML)."""
    return f"<div class='ewb-message' style='color:{BAD if error else OK};white-space:pre-wrap'>{text}</div>"


class Background:
    """A panel's one background task at a time, told through the panel's `state` trait (which
    the app and the tests observe) and its `error`.

    `start(work, state)` sets `panel.state = state` and runs `work()` in a daemon thread. Its
    return value is the end state ("done" when it returns None). A `WorkbenchError` ends in
    `failed(e)` (default "failed") after `on_error(e)` showed it; anything else is shown the
    same way as a bug to report, never thrown into the notebook. `finish()` runs last in the
    thread, before the end state is set, so a panel's buttons are back when the state says so;
    `then()` after it (e.g. a task asked for while this one ran starts there).
    """

    def __init__(self, panel, on_error: Callable[[WorkbenchError], None],
                 failed: Callable[[WorkbenchError], str] = lambda e: "failed") -> None:
        self.panel, self.on_error, self.failed = panel, on_error, failed
        self.thread: Optional[threading.Thread] = None

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, work: Callable[[], Optional[str]], state: str = "running",
              finish: Optional[Callable[[], None]] = None,
              then: Optional[Callable[[], None]] = None) -> threading.Thread:
        self.panel.state, self.panel.error = state, None

        def run() -> None:
            end = "failed"
            try:
                end = work() or "done"
            except WorkbenchError as e:
                end = self._fail(e)
            except Exception as e:  # noqa: BLE001 - shown in the panel, never thrown into the notebook
                end = self._fail(WorkbenchError(f"{type(e).__name__}: {e}",
                                                hint="this is a bug in Edge Workbench: please report it"))
            finally:
                try:
                    if finish is not None:
                        finish()
                finally:
                    self.panel.state = end
            if then is not None:
                then()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return self.thread

    def _fail(self, e: WorkbenchError) -> str:
        self.panel.error = e
        self.on_error(e)
        return self.failed(e)

    def join(self, timeout: Optional[float] = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)
