"""The Sweep panel: recipes to try, where to run them (here, or a Dask cluster), a live table
as rows arrive, the size × speed plot with its Pareto front, Pick and Export.

    panel = SweepPanel.for_project(wb)      # or SweepPanel(mapping, out="out/sweep")
    panel.run()        # returns at once: the sweep runs in the background
    panel.wait()       # (scripts and tests) until it ends
    panel.pick("dynamic_int8"); panel.export()
"""

from __future__ import annotations

import html
import threading
from pathlib import Path
from typing import Any, Optional

import ipywidgets as W
import plotly.graph_objects as go
import traitlets

from workbench import WorkbenchError
from workbench.recipe import SCHEMES
from workbench.sweep import PRESET_HELP, Sweep, prepare
from workbench_widgets._common import Background, message

DEFAULT_RECIPES = ("none", "dynamic_int8", "fp16", "int8_ff_int4")


class SweepPanel(W.VBox):
    """Try several recipes on one model and pick the one to ship."""

    state = traitlets.Unicode("idle", help="idle | running | done | stopped | failed")
    chosen = traitlets.Unicode("", help="the label picked last (Pick, a click on the plot, or pick())")

    def __init__(self, mapping, out: str | Path = "out/sweep", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mapping = mapping
        self.project = None  # set by for_project
        self.name = "sweep"  # the project's sweep record
        self.fresh = False  # the next run starts over (a stale sweep re-run on a new mapping)
        self.sweep: Optional[Sweep] = None
        self.error: Optional[WorkbenchError] = None
        self._work = Background(self, on_error=lambda e: self._say(str(e), error=True))
        bp = mapping.blueprint
        small = {"description_width": "80px"}
        self.recipes = {name: W.Checkbox(value=name in DEFAULT_RECIPES, description=name, indent=False,
                                         layout=W.Layout(width="190px"))
                        for name in SCHEMES}
        self.recipes.update({name: W.Checkbox(value=name in DEFAULT_RECIPES, description=name, indent=False,
                                              tooltip=PRESET_HELP[name], layout=W.Layout(width="190px"))
                             for name in PRESET_HELP})
        self.reauthored = W.Checkbox(value=True, description="re-authored", indent=False,
                                     layout=W.Layout(width="140px"))
        self.export_hf = W.Checkbox(value=False, description="direct export (export_hf)", indent=False,
                                    layout=W.Layout(width="220px"))
        self.prefill = W.Text(value="8", description="prefill", style=small, layout=W.Layout(width="180px"))
        self.kv = W.IntText(value=min(256, bp.max_seq_len), description="kv", style=small,
                            layout=W.Layout(width="180px"))
        self.engine = W.Dropdown(options=[("ai-edge-litert", "ai-edge-litert"), ("LiteRT-LM (bundled)", "litert-lm")],
                                 value="ai-edge-litert", description="timed in", style=small,
                                 layout=W.Layout(width="260px"),
                                 tooltip="LiteRT-LM: each row's file is bundled (.litertlm) and timed in the "
                                         "on-device runtime")
        self.out = W.Text(value=str(out), description="folder", style=small, layout=W.Layout(width="400px"))
        self.where = W.ToggleButtons(options=[("this machine", "local"), ("Dask cluster", "dask")], value="local",
                                     description="run on", style={"description_width": "80px",
                                                                  "button_width": "120px"})
        self.address = W.Text(value="", placeholder="tcp://scheduler:8786", description="address", style=small,
                              layout=W.Layout(width="320px", display="none"))
        self.parallel = W.IntText(value=0, description="at once", style=small, layout=W.Layout(width="160px"),
                                  tooltip="0: as many as the cores and memory allow (local), all (Dask)")
        self.where.observe(lambda _: setattr(self.address.layout, "display",
                                             "" if self.where.value == "dask" else "none"), names="value")
        self.run_button = W.Button(description="Run sweep", icon="play", button_style="primary")
        self.run_button.on_click(lambda _: self.run())
        self.stop_button = W.Button(description="Stop", icon="stop", button_style="warning", disabled=True)
        self.stop_button.on_click(lambda _: self.stop())
        self.progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="260px"))
        self.stage_html = W.HTML()
        self.table = W.HTML()
        self.figure = go.FigureWidget()
        self.figure.layout.height = 10
        self.choice = W.Dropdown(options=[], description="model", style=small, layout=W.Layout(width="300px"))
        self.choice.add_class("ewb-sweep-choice")  # the pick menu, told apart from the engine menu
        self.pick_button = W.Button(description="Pick", icon="check", disabled=True,
                                    tooltip="the chosen model: run and bundle take it by default")
        self.pick_button.on_click(lambda _: self.pick())
        self.export_dest = W.Text(value=str(Path(out) / "exported"), description="export to", style=small,
                                  layout=W.Layout(width="360px"))
        self.export_button = W.Button(description="Export", icon="download", disabled=True)
        self.export_button.on_click(lambda _: self.export())
        self.message = W.HTML()
        checks = list(self.recipes.values())
        self.children = [
            W.HTML("<h3 style='margin:4px 0'>Recipe sweep</h3><div style='color:#555'>Each recipe is converted, "
                   "checked against fp32 and transformers, and timed on this machine (or the worker that ran "
                   "it).</div>"),
            W.HTML("<b>recipes</b>"),
            W.GridBox(checks, layout=W.Layout(grid_template_columns="repeat(3, 200px)")),
            W.HBox([W.HTML("<b>paths</b>", layout=W.Layout(width="80px")), self.reauthored, self.export_hf]),
            W.HBox([self.prefill, self.kv, self.engine]),
            self.out,
            W.HBox([self.where, self.parallel]),
            self.address,
            W.HBox([self.run_button, self.stop_button, self.progress, self.stage_html]),
            self.message,
            self.table,
            self.figure,
            W.HBox([self.choice, self.pick_button]),
            W.HBox([self.export_dest, self.export_button]),
        ]
        self.add_class("ewb-sweep-panel")

    @classmethod
    def for_project(cls, wb, name: str = "sweep", **kwargs: Any) -> "SweepPanel":
        """A panel on a project: models in its conversions/, rows in sweeps/NAME.json; a
        recorded sweep of that name is shown at once, and Pick sets the project's model."""
        panel = cls(wb.mapping, out=wb.root / "conversions", **kwargs)
        panel.project, panel.name = wb, name
        panel.out.disabled = True
        panel.export_dest.value = str(wb.root / "exports")
        if name in wb.sweeps:
            panel.sweep = wb.sweep_table(name)
            st = panel.sweep.settings
            panel.kv.value, panel.prefill.value = st["kv"], ",".join(map(str, st["prefill"]))
            panel.engine.value = st.get("engine", "ai-edge-litert")
            for k, box in panel.recipes.items():
                box.value = k in {it.label.split("@")[0] for it in panel.sweep.items}
            panel.export_hf.value = any(it.path == "export_hf" for it in panel.sweep.items)
            panel._show()
        return panel

    # ---- the form -----------------------------------------------------------------
    def selected(self) -> list[str]:
        return [k for k, box in self.recipes.items() if box.value]

    def paths(self) -> list[str]:
        return [p for p, box in (("reauthored", self.reauthored), ("export_hf", self.export_hf)) if box.value]

    def _say(self, text: str, error: bool = False) -> None:
        self.message.value = message(html.escape(text), error=error)

    # ---- actions --------------------------------------------------------------------
    def run(self, **settings: Any) -> Optional[threading.Thread]:
        """Prepares the sweep (refusals show at once) and runs it in the background.
        `settings` go to `prepare_sweep` over the form's (a re-run passes
        `Workbench.rerun_settings("sweeps")`: the recorded rows and lengths, fresh)."""
        if self._work.busy:
            self._say("A sweep is already running: stop it first.", error=True)
            return None
        try:
            prefill = [int(p) for p in self.prefill.value.replace(" ", "").split(",") if p]
        except ValueError:
            self._say(f"prefill {self.prefill.value!r} is not a list of lengths (e.g. 8,64)", error=True)
            return None
        executor = None
        if self.where.value == "dask":
            if not self.address.value.strip():
                self._say("give the Dask scheduler's address (e.g. tcp://scheduler:8786), or run on this machine",
                          error=True)
                return None
            executor = self.address.value.strip()
        kw = dict(recipes=self.selected(), paths=self.paths(), prefill=prefill, kv=self.kv.value, fresh=self.fresh)
        if self.engine.value != "ai-edge-litert":  # the default leaves a saved sweep's settings as they were
            kw["engine"] = self.engine.value
        kw.update(settings)
        try:
            if self.project is not None:
                self.name = kw.pop("name", self.name)
                s = self.project.prepare_sweep(self.name, **kw)
            else:
                s = prepare(self.mapping, out=self.out.value, **kw)
        except WorkbenchError as e:
            self.error, self.state = e, "failed"
            self._say(str(e), error=True)
            return None
        self.sweep, self.fresh = s, False
        s.on_row = lambda row: self._show()
        self.run_button.disabled, self.stop_button.disabled = True, False
        self.progress.max, self.progress.value, self.progress.bar_style = len(s.items), len(s.rows), "info"
        self.message.value = ""
        self._show()

        def work() -> str:
            s.run(executor=executor, parallel=self.parallel.value or None, progress=self._on_progress)
            self.progress.bar_style = "success" if s.done else "warning"
            left = len(s.todo())
            self.stage_html.value = (f"{len(s.ok_rows())} of {len(s.items)} recipes converted"
                                     + (f"; {left} left (stopped: Run again resumes)" if left else ""))
            if s.notes:
                self._say("; ".join(s.notes))
            return "done" if s.done else "stopped"

        def finish() -> None:
            self.run_button.disabled, self.stop_button.disabled = False, True
            self._show()

        return self._work.start(work, finish=finish)

    def stop(self) -> None:
        if self.sweep is not None:
            self.sweep.stop()

    def wait(self, timeout: Optional[float] = None) -> Optional[Sweep]:
        self._work.join(timeout)
        return self.sweep

    def pick(self, label: Optional[str] = None) -> None:
        """Marks a row's model as chosen (the dropdown's, or `label`)."""
        label = label or self.choice.value
        if self.sweep is None or not label:
            self._say("run a sweep first, then pick a recipe", error=True)
            return
        try:
            path = self.sweep.pick(label)
        except WorkbenchError as e:
            self._say(str(e), error=True)
            return
        where = " — the project's model for run and bundle" if self.project is not None else ""
        self.chosen = label
        self._say(f"chose {label}: {path.name}{where}")
        self._show()

    def export(self) -> Optional[Path]:
        """Copies the chosen model and its manifest to the export folder."""
        if self.sweep is None:
            self._say("run a sweep first", error=True)
            return None
        try:
            target = self.sweep.export(self.export_dest.value)
        except WorkbenchError as e:
            self._say(str(e), error=True)
            return None
        self._say(f"exported {target}")
        return target

    def _clicked(self, trace, points, selector=None) -> None:
        """A click on a point of the plot picks that recipe."""
        if points.point_inds:
            self.pick(trace.customdata[points.point_inds[0]][0])

    # ---- rendering ----------------------------------------------------------------
    def _on_progress(self, stage: str, done: int, total: int, detail: str = "") -> None:
        self.progress.max, self.progress.value = total, done
        self.stage_html.value = f"<code>{html.escape(stage)}</code> {html.escape(str(detail)[:40])}"

    def _show(self) -> None:
        s = self.sweep
        if s is None:
            return
        self.table.value = s.table_html()
        ok = [r["label"] for r in s.ok_rows()]
        self.choice.options = ok
        if ok:
            self.choice.value = s.chosen if s.chosen in ok else (s.pareto() or ok)[0]
        self.pick_button.disabled = not ok
        self.export_button.disabled = s.chosen is None
        fig = s.figure()
        with self.figure.batch_update():
            self.figure.data = []
            self.figure.add_traces(list(fig.data))
            self.figure.layout = fig.layout
        if self.figure.data:
            self.figure.data[0].on_click(self._clicked)


__all__ = ["SweepPanel"]
