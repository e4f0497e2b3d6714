"""The Explore panel: which graphs, layout and height, Refresh, and Model Explorer inline.

    panel = ExplorePanel.for_project(wb)      # or ExplorePanel(Explorer("sample_models/llama-tiny"))
    panel.refresh(); panel.wait()             # what the Refresh button does: re-exports what changed

Refresh runs in the background (exports take seconds to minutes), so the kernel stays free;
the view is `Explorer.show`'s HTML: Model Explorer's own page in one frame per split view.
"""

from __future__ import annotations

import html
import threading
from typing import Any, Optional

import ipywidgets as W
import traitlets

from workbench import WorkbenchError
from workbench.explore import LAYOUTS, Explorer, ExploreView
from workbench.graphs import GRAPHS, TITLES
from workbench_widgets._common import message

LAYOUT_LABELS = {"split": "split view (+ a frame for the third)", "side": "split view, third beside it",
                 "stacked": "one frame per graph"}


class ExplorePanel(W.VBox):
    """Model Explorer on a model's graphs; nothing here blocks the kernel."""

    state = traitlets.Unicode("idle", help="idle | exporting | done | failed")

    def __init__(self, explorer: Explorer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.explorer = explorer
        self.view: Optional[ExploreView] = None
        self.error: Optional[WorkbenchError] = None
        self._thread: Optional[threading.Thread] = None
        try:
            available = explorer.available()
        except WorkbenchError as e:
            available, self.error = [], e
        self.checks = {n: W.Checkbox(value=n in available, description=TITLES[n], indent=False,
                                     disabled=n not in available, layout=W.Layout(width="220px"))
                       for n in GRAPHS}
        if "tflite" not in available:
            self.checks["tflite"].description = TITLES["tflite"] + " — convert first"
        self.layout_choice = W.Dropdown(options=[(LAYOUT_LABELS[k], k) for k in LAYOUTS], value="split",
                                        description="layout", style={"description_width": "60px"},
                                        layout=W.Layout(width="330px"))
        self.height = W.BoundedIntText(value=600, min=150, max=4000, step=50, description="height",
                                       style={"description_width": "60px"}, layout=W.Layout(width="160px"))
        self.refresh_button = W.Button(description="Refresh", icon="refresh", button_style="primary",
                                       tooltip="export what changed since the last time, then show")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.progress = W.IntProgress(value=0, min=0, max=2, layout=W.Layout(width="200px", visibility="hidden"))
        self.status = W.HTML()
        self.frame = W.HTML(layout=W.Layout(width="100%"))
        self.children = [
            W.HTML("<h3 style='margin:4px 0'>Explore the graphs</h3>"),
            W.HBox(list(self.checks.values())),
            W.HBox([self.layout_choice, self.height, self.refresh_button, self.progress]),
            self.status, self.frame,
        ]
        self.add_class("ewb-explore")
        if self.error is not None:
            self._error(self.error)

    @classmethod
    def for_project(cls, wb, **kwargs: Any) -> "ExplorePanel":
        """A panel on a project: its checkpoint, its mapping and its newest fresh conversion."""
        return cls(Explorer(wb), **kwargs)

    # ---- the form -----------------------------------------------------------------
    def selected(self) -> list[str]:
        return [n for n, c in self.checks.items() if c.value and not c.disabled]

    # ---- actions ------------------------------------------------------------------
    def refresh(self) -> Optional[threading.Thread]:
        """Exports what changed (in the background), then shows the chosen graphs."""
        if self._thread is not None and self._thread.is_alive():
            return None
        names, height, layout = self.selected(), self.height.value, self.layout_choice.value
        if not names:
            self._error(WorkbenchError("no graph chosen", hint="tick one to three graphs"))
            return None
        self.state, self.error = "exporting", None
        self.refresh_button.disabled = True
        self.progress.layout.visibility, self.progress.value, self.progress.bar_style = "visible", 0, "info"
        self.status.value = message("exporting what changed …")

        def work() -> None:
            try:
                self.view = self.explorer.show(names, height=height, layout=layout, progress=self._on_progress)
            except WorkbenchError as e:
                self._error(e)
                self.state = "failed"
            else:
                self._show(self.view)
                self.state = "done"
            finally:
                self.refresh_button.disabled = False
                self.progress.layout.visibility = "hidden"

        self._thread = threading.Thread(target=work, daemon=True)
        self._thread.start()
        return self._thread

    def wait(self, timeout: Optional[float] = None) -> Optional[ExploreView]:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.view

    # ---- rendering ----------------------------------------------------------------
    def _on_progress(self, stage: str, done: int, total: int, detail: str = "") -> None:
        self.progress.max, self.progress.value = max(total, 1), done
        self.status.value = message(f"{html.escape(stage)} — {html.escape(detail)}")

    def _show(self, view: ExploreView) -> None:
        graphs = self.explorer.graphs
        parts = []
        for n in view.graphs:
            g = graphs[n]
            how = "cached" if g.cached else (f"exported in {g.seconds:.1f} s" if g.key else "used in place")
            parts.append(f"{html.escape(TITLES[n])} ({how})")
        text = "showing " + ", ".join(parts) if parts else "nothing could be shown"
        if view.failed:
            text += f"; {len(view.failed)} could not be exported (below)"
        self.status.value = message(text, error=bool(view.failed and not parts))
        self.frame.value = view._repr_html_()

    def _error(self, e: WorkbenchError) -> None:
        self.error = e
        self.status.value = (f"<div class='ewb-error' style='border:1px solid #c62828;padding:6px;border-radius:4px;"
                             f"color:#c62828;white-space:pre-wrap'>{html.escape(str(e))}</div>")
