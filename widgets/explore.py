"""The Explore panel: which graphs, layout and height, an overlay, Refresh, and Model Explorer inline.

    panel = ExplorePanel.for_project(wb)      # or ExplorePanel(Explorer("sample_models/llama-tiny"))
    panel.refresh(); panel.wait()             # what the Refresh button does: re-exports what changed
    panel.overlay.value = "compare"; panel.wait()   # re-colours the panes: no export

Refresh runs in the background (exports take seconds to minutes), so the kernel stays free;
the view is `Explorer.show`'s HTML: Model Explorer's own page in one frame per split view,
and the overlay's legend beside it. Choosing an overlay re-draws the view from the graphs
already exported (`show(..., export=False)`), so it never waits for an export.
"""

from __future__ import annotations

import html
import threading
from typing import Any, Optional

import ipywidgets as W
import traitlets

from workbench import WorkbenchError
from workbench.explore import LAYOUTS, OVERLAYS, Explorer, ExploreView
from workbench.explore.graphs import GRAPHS, TITLES
from workbench_widgets._common import Background, message

LAYOUT_LABELS = {"split": "split view (+ a frame for the third)", "side": "split view, third beside it",
                 "stacked": "one frame per graph"}


class ExplorePanel(W.VBox):
    """Model Explorer on a model's graphs; nothing here blocks the kernel."""

    state = traitlets.Unicode("idle", help="idle | exporting | colouring | done | failed")

    def __init__(self, explorer: Explorer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.explorer = explorer
        self.view: Optional[ExploreView] = None
        self.error: Optional[WorkbenchError] = None
        self._work = Background(self, on_error=self._error)
        self._again = 0  # asked while busy: 1 re-colour, 2 refresh
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
        try:
            self.overlay_info = explorer.overlays()
        except WorkbenchError as e:
            self.overlay_info = [{"name": n, "title": t, "available": False, "why": e.message}
                                 for n, t in OVERLAYS.items()]
        self.overlay = W.Dropdown(options=[("no overlay", None)] + [(o["title"], o["name"]) for o in self.overlay_info
                                                                    if o["available"]],
                                  value=None, description="overlay", style={"description_width": "60px"},
                                  layout=W.Layout(width="380px"))
        self.overlay.observe(lambda _: self.recolour(), names="value")
        missing = [o for o in self.overlay_info if not o["available"]]
        self.overlay_note = W.HTML("<div style='color:#777;font-size:12px'>"
                                   + "<br>".join(f"not offered: {html.escape(o['title'])} — {html.escape(o['why'])}"
                                                 for o in missing) + "</div>" if missing else "")
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
            W.HBox([self.overlay]), self.overlay_note,
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
        return self._run(export=True)

    def recolour(self) -> Optional[threading.Thread]:
        """Shows the chosen overlay on the graphs exported before (what choosing one does);
        nothing is exported. Before the first Refresh there is nothing to colour yet."""
        if self.view is None:
            return None
        return self._run(export=False)

    def _run(self, export: bool, chained: bool = False) -> Optional[threading.Thread]:
        if not chained and self._work.busy:
            # One view at a time: run again when this one ends (an export wins over a recolour).
            self._again = max(self._again, 2 if export else 1)
            return None
        names, height, layout = self.selected(), self.height.value, self.layout_choice.value
        overlay = self.overlay.value
        if not names:
            self._error(WorkbenchError("no graph chosen", hint="tick one to three graphs"))
            return None
        self.refresh_button.disabled = True
        self.progress.layout.visibility, self.progress.value, self.progress.bar_style = "visible", 0, "info"
        self.status.value = message("exporting what changed …" if export else "colouring …")

        def work() -> None:
            if not export and any(n not in self.explorer.graphs for n in names):
                raise WorkbenchError("a ticked graph is not exported yet", hint="click Refresh")
            self.view = self.explorer.show(names, height=height, layout=layout, progress=self._on_progress,
                                           overlay=overlay, export=export)
            self._show(self.view)

        def finish() -> None:
            self.refresh_button.disabled = False
            self.progress.layout.visibility = "hidden"

        def then() -> None:
            again, self._again = self._again, 0
            if again:
                self._run(export=again == 2, chained=True)

        return self._work.start(work, "exporting" if export else "colouring", finish=finish, then=then)

    def wait(self, timeout: Optional[float] = None) -> Optional[ExploreView]:
        """Until the view asked for last is shown (or `timeout` seconds)."""
        import time

        deadline = None if timeout is None else time.time() + timeout
        while self._work.thread is not None:
            t = self._work.thread
            t.join(None if deadline is None else max(0.0, deadline - time.time()))
            if t is self._work.thread or (deadline is not None and time.time() >= deadline):
                break
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
        if view.overlay is not None:
            text += f"; coloured by {html.escape(view.overlay.title)}"
        if view.failed:
            text += f"; {len(view.failed)} could not be exported (below)"
        self.status.value = message(text, error=bool(view.failed and not parts))
        self.frame.value = view._repr_html_()

    def _error(self, e: WorkbenchError) -> None:
        self.error = e
        self.status.value = (f"<div class='ewb-error' style='border:1px solid #c62828;padding:6px;border-radius:4px;"
                             f"color:#c62828;white-space:pre-wrap'>{html.escape(str(e))}</div>")
