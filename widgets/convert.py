"""The Convert panel: recipe (or a per-layer mix), lengths, size estimate, Convert/Cancel,
live stage and memory, then a result card — or an error card that keeps the form.

    panel = ConvertPanel(mapping, out="out")
    panel.convert()      # returns at once: the conversion runs in a child process
    panel.wait()         # (scripts and tests) until it ends
    panel.cancel()
"""

from __future__ import annotations

import html
import threading
import time
from pathlib import Path
from typing import Any, Optional

import ipywidgets as W
import plotly.graph_objects as go
import traitlets

from workbench import WorkbenchError
from workbench.convert import (ConversionError, ConversionResult, Job, convert, estimate_peak_bytes, memory_warning,
                               prewarm)
from workbench.recipe import SCHEMES, Recipe
from workbench_widgets._common import Background

PER_LAYER = "per-layer…"
_SCHEME_OR_DEFAULT = ("(default)",) + SCHEMES


class ConvertPanel(W.VBox):
    """Convert a mapped model to a checked .tflite, as a job that never blocks the kernel."""

    state = traitlets.Unicode("idle", help="idle | running | done | failed | cancelled")
    estimate_bytes = traitlets.Int(0)

    def __init__(self, mapping, out: str | Path = "out", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mapping = mapping
        self.project = None  # set by for_project: conversions go to its conversions/ and are recorded
        self.job: Optional[Job] = None
        self.result: Optional[ConversionResult] = None
        self.error: Optional[WorkbenchError] = None
        bp = mapping.blueprint
        small = {"description_width": "80px"}
        self.recipe = W.Dropdown(options=SCHEMES + (PER_LAYER,), value="dynamic_int8", description="recipe",
                                 style=small, layout=W.Layout(width="300px"))
        self.default = W.Dropdown(options=("(float)",) + SCHEMES[1:], value="dynamic_int8", description="default",
                                  style=small, layout=W.Layout(width="300px"))
        self.embedding = W.Dropdown(options=_SCHEME_OR_DEFAULT, value="(default)", description="embedding",
                                    style=small, layout=W.Layout(width="300px"))
        self.grid: dict[tuple[int, str], W.Dropdown] = {}
        rows = [W.HBox([W.HTML("<b>layer</b>", layout=W.Layout(width="60px")),
                        W.HTML("<b>attention</b>", layout=W.Layout(width="200px")),
                        W.HTML("<b>feed-forward</b>", layout=W.Layout(width="200px"))])]
        for i in range(bp.num_layers):
            cells = []
            for comp in ("attention", "feedforward"):
                d = W.Dropdown(options=_SCHEME_OR_DEFAULT, value="(default)", layout=W.Layout(width="200px"))
                d.observe(lambda _: self._update_estimate(), names="value")
                self.grid[(i, comp)] = d
                cells.append(d)
            rows.append(W.HBox([W.HTML(f"{i}", layout=W.Layout(width="60px")), *cells]))
        self.per_layer_box = W.VBox([self.default, self.embedding, *rows], layout=W.Layout(display="none"))
        self.prefill = W.Text(value="8", description="prefill", style=small, layout=W.Layout(width="200px"))
        self.kv = W.IntText(value=min(1024, bp.max_seq_len), description="kv", style=small,
                            layout=W.Layout(width="200px"))
        self.out = W.Text(value=str(out), description="output", style=small, layout=W.Layout(width="400px"))
        self.estimate_html = W.HTML()
        for w in (self.recipe, self.default, self.embedding, self.kv):
            w.observe(lambda _: self._update_estimate(), names="value")
        self.convert_button = W.Button(description="Convert", icon="cogs", button_style="primary")
        self.convert_button.on_click(lambda _: self.convert())
        self.cancel_button = W.Button(description="Cancel", icon="stop", button_style="warning", disabled=True)
        self.cancel_button.on_click(lambda _: self.cancel())
        self.progress = W.IntProgress(value=0, min=0, max=7, layout=W.Layout(width="300px"))
        self.stage_html = W.HTML()
        self.card = W.HTML()
        self.error_figure = go.FigureWidget()
        self.error_figure.layout.height = 10
        self.error_table = W.HTML()
        self.use_proposal_button = W.Button(description="Use proposed recipe", icon="magic", disabled=True,
                                            layout=W.Layout(width="200px"))
        self.use_proposal_button.on_click(lambda _: self.use_proposal())
        self.path = W.ToggleButtons(options=[("re-authored", "reauthored"), ("direct export (export_hf)", "export_hf")],
                                    value="reauthored", description="path", style={"description_width": "80px",
                                                                                   "button_width": "190px"})
        self.paths_button = W.Button(description="Compare both paths", icon="columns", layout=W.Layout(width="190px"),
                                     tooltip="convert both ways with this recipe and lengths, then measure both")
        self.paths_button.on_click(lambda _: self.compare_paths())
        self.paths_html = W.HTML()
        self.path.observe(lambda _: self._update_estimate(), names="value")
        self.paths_figure = go.FigureWidget()
        self.paths_figure.layout.height = 10
        self.paths_table = None  # the last PathComparison
        self._paths_jobs: list = []
        self._paths = Background(self, on_error=lambda e: self._card(str(e), error=True),
                                 failed=lambda e: "cancelled" if self._paths_jobs and self._paths_jobs[-1].cancelled
                                 else "failed")
        self.children = [
            W.HTML("<h3 style='margin:4px 0'>Convert and quantize</h3>"),
            W.HBox([self.recipe, self.estimate_html]),
            self.per_layer_box,
            W.HBox([self.prefill, self.kv]),
            self.out,
            self.path,
            W.HBox([self.convert_button, self.cancel_button, self.paths_button, self.progress, self.stage_html]),
            self.card,
            self.error_table,
            self.error_figure,
            self.use_proposal_button,
            self.paths_html,
            self.paths_figure,
        ]
        self.add_class("ewb-convert")
        self._update_estimate()
        prewarm()  # the first Convert click skips the ~5 s import of torch/litert-torch

    @classmethod
    def for_project(cls, wb, **kwargs: Any) -> "ConvertPanel":
        """A panel on a project: its mapping, its conversions/ folder; the manifest records
        what each file was computed from, so the project can tell when it turns stale."""
        panel = cls(wb.mapping, out=wb.root / "conversions", **kwargs)
        panel.project = wb
        panel.out.disabled = True
        return panel

    # ---- the form -----------------------------------------------------------------
    def recipe_spec(self):
        """The recipe the form describes: a scheme name or a per-layer dict."""
        if self.recipe.value != PER_LAYER:
            return self.recipe.value
        pick = lambda v: None if v in ("(default)", "(float)") else v  # noqa: E731
        spec: dict[str, Any] = {"default": pick(self.default.value)}
        if pick(self.embedding.value):
            spec["embedding"] = pick(self.embedding.value)
        for comp in ("attention", "feedforward"):
            cells = [pick(d.value) for (_, c), d in self.grid.items() if c == comp]
            layers = {str(i): pick(d.value) for (i, c), d in self.grid.items() if c == comp and pick(d.value)}
            if cells and cells[0] and len(set(cells)) == 1:
                spec[comp] = cells[0]  # every layer alike: the component's scheme, as the recipe reads
            elif layers:
                spec[comp] = layers
        return spec

    def set_layer(self, layer: int, component: str, scheme: str) -> None:
        """Sets one cell of the per-layer grid (and switches to the per-layer recipe)."""
        self.recipe.value = PER_LAYER
        self.grid[(layer, component)].value = scheme

    def _update_estimate(self) -> None:
        self.per_layer_box.layout.display = "" if self.recipe.value == PER_LAYER else "none"
        try:
            r = Recipe.parse(self.recipe_spec())
            self.estimate_bytes = r.estimate_bytes(self.mapping.blueprint, self.kv.value or None)
            path = self.path.value if hasattr(self, "path") else "reauthored"
            peak = estimate_peak_bytes(self.mapping.blueprint, path, recipe=r, kv=self.kv.value or None)
            warn = memory_warning(peak)
            self.estimate_html.value = (
                f"estimated size <b>{self.estimate_bytes / 2**20:.2f} MiB</b> "
                f"<span style='color:#777'>({html.escape(r.describe())})</span>; memory needed "
                f"<span class='ewb-peak' style='color:{'#e65100' if warn else '#333'}'>~{peak / 1e9:.1f} GB</span>"
                + (f"<div class='ewb-memory-warning' style='color:#e65100'>⚠ {html.escape(warn)}</div>" if warn else ""))
        except WorkbenchError as e:
            self.estimate_html.value = f"<span style='color:#c62828'>{html.escape(str(e))}</span>"

    # ---- actions ------------------------------------------------------------------
    def _startable_prefill(self) -> Optional[list[int]]:
        """The form's prefill lengths when nothing is running, else None with the reason shown."""
        if self._busy():
            self._card("A conversion is already running: cancel it first.", error=True)
            return None
        try:
            return [int(p) for p in self.prefill.value.replace(" ", "").split(",") if p]
        except ValueError:
            self._card(f"prefill {self.prefill.value!r} is not a list of lengths (e.g. 8,64)", error=True)
            return None

    def show_settings(self, settings=None, *, recipe=None, prefill=None, kv=None, path=None) -> None:
        """Puts a conversion's settings (a `ConvertSettings`, or some of its fields) into the form."""
        if settings is not None:
            recipe, prefill, kv, path = settings.recipe, settings.prefill, settings.kv, settings.path
        if recipe is not None:
            self.apply_recipe(recipe)
        if prefill is not None:
            self.prefill.value = ",".join(str(x) for x in prefill)
        if kv is not None:
            self.kv.value = kv
        if path is not None:
            self.path.value = path

    def convert(self, **settings: Any) -> Optional[Job]:
        """Starts the conversion job (returns at once), or shows why it cannot start.
        `settings` go to the project's `convert` (a re-run passes `Workbench.rerun_settings(
        "conversions")`: its name and `ConvertSettings`, which the form then shows)."""
        self.show_settings(settings.get("settings"))
        prefill = self._startable_prefill()
        if prefill is None:
            return None
        self.result, self.error = None, None
        self._paths.thread = None
        try:
            if self.project is not None:
                self.job = self.project.convert(recipe=self.recipe_spec(), prefill=prefill, kv=self.kv.value,
                                                progress=self._on_progress, path=self.path.value, **settings)
            else:
                self.job = convert(self.mapping, recipe=self.recipe_spec(), prefill=prefill, kv=self.kv.value,
                                   out=self.out.value, progress=self._on_progress, path=self.path.value)
        except WorkbenchError as e:
            self.error = e
            self.state = "failed"
            self._card(str(e), error=True)
            return None
        self.state = "running"
        self.convert_button.disabled, self.cancel_button.disabled = True, False
        self.progress.bar_style, self.progress.value = "info", 0
        self.card.value = ""
        return self.job

    def compare_paths(self, **settings: Any) -> Optional[threading.Thread]:
        """Converts both ways (re-authored, litert-torch's direct export) with the form's recipe
        and lengths, in the background, then shows the side-by-side table and chart. `settings`
        go to the project's `compare_paths` (a re-run passes `Workbench.rerun_settings("paths")`;
        its recipe and lengths are shown in the form)."""
        from workbench.conversion_paths import compare_paths

        self.show_settings(recipe=settings.pop("recipe", None), prefill=settings.pop("prefill", None),
                           kv=settings.pop("kv", None))
        prefill = self._startable_prefill()
        if prefill is None:
            return None
        jobs: list = []
        kw = dict(recipe=self.recipe_spec(), prefill=prefill, kv=self.kv.value, jobs=jobs,
                  progress=lambda stage, done, total, detail="": self._paths_progress(jobs, stage, done, total, detail))

        def work() -> None:
            if self.project is not None:
                table = self.project.compare_paths(**kw, **settings)
            else:
                table = compare_paths(self.mapping, out=self.out.value, **kw)
            self.paths_table = table
            self._show_paths(table)

        def finish() -> None:
            self.convert_button.disabled = self.paths_button.disabled = False
            self.cancel_button.disabled = True
            self.job = jobs[-1] if jobs else None

        self.convert_button.disabled = self.paths_button.disabled = True
        self.cancel_button.disabled = False
        self.card.value = ""
        self._paths_jobs = jobs
        return self._paths.start(work, finish=finish)

    def _busy(self) -> bool:
        return (self.job is not None and not self.job.done) or self._paths.busy

    def _paths_progress(self, jobs: list, stage: str, done: int, total: int, detail: str) -> None:
        self.progress.max, self.progress.value = total, done
        st = jobs[-1].status() if jobs else {"elapsed_s": 0, "rss_bytes": 0}
        self.stage_html.value = (f"<code>{html.escape(stage)}</code> {html.escape(detail[:50])} — "
                                 f"{st['elapsed_s']:.0f} s, {st['rss_bytes'] / 1e9:.2f} GB")

    def _show_paths(self, table) -> None:
        fig = table.figure()
        with self.paths_figure.batch_update():
            self.paths_figure.data = []
            self.paths_figure.add_traces(list(fig.data))
            self.paths_figure.layout = fig.layout
        self.paths_html.value = "<b>Re-authored vs direct export</b>" + table.table_html()
        self.progress.value, self.progress.bar_style = self.progress.max, "success"
        self.stage_html.value = "both paths converted, checked and timed"

    def use_proposal(self) -> None:
        """Loads the recipe the last quantization-error analysis proposed into the form."""
        qe = self.result.quant_error if self.result else None
        if not qe or not qe.get("proposal"):
            return
        self.apply_recipe(qe["proposal"])

    def apply_recipe(self, spec) -> None:
        """Puts a recipe (name or per-layer dict) into the form."""
        r = Recipe.parse(spec)
        if r.name != "mixed":
            self.recipe.value = r.name
            return
        self.recipe.value = PER_LAYER
        self.default.value = r.default or "(float)"
        self.embedding.value = r.embedding or "(default)"
        for (i, comp), d in self.grid.items():
            v = getattr(r, comp)
            d.value = (v.get(i) if isinstance(v, dict) else v) or "(default)"

    def cancel(self) -> None:
        if self._paths.busy:
            for job in list(self._paths_jobs):
                job.cancel()
        elif self.job is not None and not self.job.done:
            self.job.cancel()

    def wait(self, timeout: Optional[float] = None) -> Optional[ConversionResult]:
        """Blocks until the job ends and its card is shown (for scripts, tests, headless runs)."""
        if self._paths.thread is not None:
            self._paths.join(timeout)
            return self.paths_table
        if self.job is None:
            return None
        deadline = None if timeout is None else time.time() + timeout
        while self.state == "running" and (deadline is None or time.time() < deadline):
            time.sleep(0.1)
        return self.result

    # ---- rendering ----------------------------------------------------------------
    _lock = threading.Lock()

    def _on_progress(self, stage: str, done: int, total: int, detail: str = "") -> None:
        job = self.job
        if job is None:
            return
        st = job.status()
        self.progress.max = total
        self.progress.value = done
        self.stage_html.value = (f"<code>{html.escape(stage)}</code> {html.escape(detail[:60])} — "
                                 f"{st['elapsed_s']:.0f} s, {st['rss_bytes'] / 1e9:.2f} GB "
                                 f"(peak {st['peak_rss_bytes'] / 1e9:.2f} GB)")
        if job.done:
            with self._lock:
                if self.state == "running":
                    self._finished(job)

    def _finished(self, job: Job) -> None:
        self.convert_button.disabled, self.cancel_button.disabled = False, True
        st = job.status()
        self.stage_html.value = (f"{'cancelled' if job.cancelled else 'ended'} after {st['elapsed_s']:.0f} s, "
                                 f"peak {st['peak_rss_bytes'] / 1e9:.2f} GB")
        try:
            self.result = job.result(0)
        except ConversionError as e:
            self.error = e
            self.progress.bar_style = "danger" if not job.cancelled else "warning"
            tail = f"<details><summary>log tail</summary><pre>{html.escape(e.log_tail)}</pre></details>" \
                if e.log_tail else ""
            self._card(str(e), error=True, extra=tail)
            self.state = "cancelled" if job.cancelled else "failed"
            return
        r = self.result
        c = r.check
        self.progress.value, self.progress.bar_style = self.progress.max, "success"
        self.card.value = (
            "<div class='ewb-result' style='border:1px solid #2e7d32;padding:6px;border-radius:4px'>"
            f"<b>{html.escape(r.path.name)}</b> — {r.size_bytes / 2**20:.2f} MiB "
            f"(estimated {self.estimate_bytes / 2**20:.2f}), {r.seconds:.1f} s, peak {r.peak_rss_bytes / 1e9:.2f} GB"
            f"<br>signatures: <code>{', '.join(r.signatures)}</code>"
            f"<br>check, {c['positions']} decoded positions vs transformers: max abs diff "
            f"<b>{c['max_abs_diff']:.3g}</b>, top-1 agreement <b>{c['top1_agreement']:.0%}</b>, mean cosine "
            f"{c['mean_cosine']:.6f}"
            + (f"; vs re-authored PyTorch {c['vs_reauthored']['max_abs_diff']:.3g}" if c.get("vs_reauthored") else
               " (litert-torch's direct export: no re-authored model)") +
            f"<br>manifest: <a href='{html.escape(str(r.manifest_path))}' target='_blank'>"
            f"{html.escape(r.manifest_path.name)}</a></div>")
        self._show_quant_error(r.quant_error)
        self.state = "done"
        prewarm()

    def _show_quant_error(self, qe: Optional[dict]) -> None:
        from workbench import quant_error

        self.use_proposal_button.disabled = not (qe and qe.get("proposal"))
        if not qe:
            self.error_table.value = ""
            return
        fig = quant_error.figure(qe)
        with self.error_figure.batch_update():
            self.error_figure.data = []
            self.error_figure.add_traces(list(fig.data))
            self.error_figure.layout = fig.layout
        worst = ", ".join(f"layer {w['layer']} {w['component']} (+{w['added']:.2g})" for w in qe["worst"])
        proposal = Recipe.parse(qe["proposal"]).describe() if qe.get("proposal") else "—"
        self.error_table.value = (f"<div class='ewb-quant-error'><b>Where quantization hurts</b> "
                                  f"(MSE vs float, decode): most added by {html.escape(worst)}.<br>"
                                  f"Proposed: <code>{html.escape(proposal)}</code></div>")

    def _card(self, text: str, error: bool = False, extra: str = "") -> None:
        color = "#c62828" if error else "#2e7d32"
        self.card.value = (f"<div class='ewb-error' style='border:1px solid {color};padding:6px;border-radius:4px;"
                           f"color:{color};white-space:pre-wrap'>{html.escape(text)}</div>{extra}")
