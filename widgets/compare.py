"""The Compare panel: original vs re-authored, layer by layer, pointing at the first divergence.

    panel = ComparePanel("sample_models/llama-tiny", bp)     # or (hf_dir, model, mapping=m)
    panel.run()                                              # what the Compare button does

Changing the tolerance re-judges the last comparison without running the models again.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Optional

import ipywidgets as W
import plotly.graph_objects as go
import traitlets

from workbench import WorkbenchError
from workbench.compare import Comparison, compare


class ComparePanel(W.VBox):
    """Prompt, tolerance, Compare; then the verdict, the table, the plots and the texts."""

    verdict = traitlets.Unicode("")
    passed = traitlets.Bool(False)

    def __init__(self, hf_dir: str | Path, model_or_blueprint, mapping=None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hf_dir = Path(hf_dir)
        self.target = model_or_blueprint
        self.mapping = mapping
        self.project = None  # set by for_project: results are recorded there
        self.comparison: Optional[Comparison] = None

        self.prompt = W.Textarea(value="Once upon a time, a small robot lived in a quiet town.",
                                 description="prompt", layout=W.Layout(width="620px", height="60px"),
                                 style={"description_width": "60px"})
        self.tol = W.FloatLogSlider(value=1e-4, base=10, min=-8, max=0, step=0.5, description="tolerance",
                                    readout_format=".0e", style={"description_width": "70px"})
        self.tol.observe(lambda _: self.render(), names="value")
        self.max_new = W.BoundedIntText(value=8, min=1, max=128, description="new tokens",
                                        style={"description_width": "80px"}, layout=W.Layout(width="170px"))
        self.button = W.Button(description="Compare", icon="balance-scale", button_style="primary")
        self.button.on_click(lambda _: self.run())
        self.progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="260px"))
        self.progress_label = W.HTML()
        self.verdict_html = W.HTML()
        self.per_layer = go.FigureWidget()
        self.heatmap = go.FigureWidget()
        self.table_html = W.HTML(layout=W.Layout(max_height="300px", overflow="auto"))
        self.text_html = W.HTML()
        self.children = [
            W.HTML("<h3 style='margin:4px 0'>Compare layer outputs</h3>"),
            self.prompt,
            W.HBox([self.tol, self.max_new, self.button]),
            W.HBox([self.progress, self.progress_label]),
            self.verdict_html,
            W.HBox([self.per_layer, self.heatmap]),
            self.text_html,
            self.table_html,
        ]
        self.add_class("ewb-compare")

    @classmethod
    def for_project(cls, wb, **kwargs: Any) -> "ComparePanel":
        """A panel on a project's model; each run is recorded in the project (comparisons/)."""
        panel = cls(wb.checkpoint_path(), wb.blueprint, wb.mapping, **kwargs)
        panel.project = wb
        return panel

    # ---- actions ------------------------------------------------------------------
    def run(self, **settings: Any) -> Optional[Comparison]:
        """Runs the comparison on the prompt; shows the result, or the error and its fix.
        `settings` go to the project's `compare` over the form's (a re-run passes
        `Workbench.rerun_settings("comparisons")`: name, prompts, tol, ...)."""
        if "tol" in settings:
            self.tol.value = settings["tol"]
        if "max_new_tokens" in settings:
            self.max_new.value = settings["max_new_tokens"]
        self.button.disabled = True
        self.progress.bar_style = ""

        def progress(stage: str, done: int, total: int, detail: str = "") -> None:
            self.progress.max = max(total, 1)
            self.progress.value = done
            self.progress_label.value = f"{html.escape(stage)}: {html.escape(detail)}"

        try:
            text = self.prompt.value
            if self.project is not None:
                self.comparison = self.project.compare(**{"prompts": [text], "tol": self.tol.value,
                                                          "max_new_tokens": self.max_new.value, **settings},
                                                       progress=progress)
            else:
                self.comparison = compare(self.hf_dir, self.target, self.mapping, prompts=[text], tol=self.tol.value,
                                          max_new_tokens=self.max_new.value, progress=progress)
        except WorkbenchError as e:
            self.progress.bar_style = "danger"
            self.verdict_html.value = (f"<div class='ewb-error' style='color:#c62828;white-space:pre-wrap'>"
                                       f"{html.escape(str(e))}</div>")
            self.passed = False
            return None
        finally:
            self.button.disabled = False
        self.progress.value = self.progress.max
        self.progress.bar_style = "success"
        self.progress_label.value = "done"
        self.render()
        return self.comparison

    # ---- rendering ----------------------------------------------------------------
    def render(self) -> None:
        c = self.comparison
        if c is None:
            return
        c.tol = self.tol.value
        self.passed = c.passed
        self.verdict = c.verdict()
        color = "#2e7d32" if c.passed else "#c62828"
        notes = "".join(f"<div style='color:#777'>note: {html.escape(n)}</div>" for n in c.notes)
        self.verdict_html.value = (f"<div class='ewb-verdict' style='color:{color};font-size:1.1em'><b>"
                                   f"{'✔' if c.passed else '✘'}</b> {html.escape(self.verdict)}</div>{notes}")
        per_layer, heat = c.figures()
        for widget, fig in ((self.per_layer, per_layer), (self.heatmap, heat)):
            with widget.batch_update():
                widget.data = []
                widget.add_traces(list(fig.data))
                widget.layout = fig.layout
            widget.layout.width = 520
        d = c.first_divergence()
        rows = []
        for r in c.records:
            bad = not r.max_abs_diff <= c.tol
            mark = " style='background:#ffcdd2'" if d is not None and r.name == d.name else (
                " style='color:#c62828'" if bad else "")
            rows.append(f"<tr{mark}><td><code>{html.escape(r.name)}</code></td><td>{r.max_abs_diff:.3g}</td>"
                        f"<td>{r.mean_abs_diff:.3g}</td><td>{r.rel_error:.3g}</td><td>{r.cosine:.7f}</td>"
                        f"<td>{'×'.join(map(str, r.shape))}</td></tr>")
        self.table_html.value = ("<table class='ewb-compare-table' style='font-size:12px'><tr><th>capture point</th>"
                                 "<th>max abs</th><th>mean abs</th><th>relative</th><th>cosine</th><th>shape</th></tr>"
                                 + "".join(rows) + "</table>")
        g = c.generation
        self.text_html.value = (
            "<table class='ewb-texts'><tr><th style='text-align:left'>greedy, original</th>"
            f"<td><code>{self._tokens(g['reference_ids'], g['reference_text'], None)}</code></td></tr>"
            "<tr><th style='text-align:left'>greedy, re-authored</th>"
            f"<td><code>{self._tokens(g['reauthored_ids'], g['reauthored_text'], g['first_diff'])}</code></td></tr>"
            "</table>" + ("" if g["first_diff"] is None else
                          f"<div style='color:#c62828'>first differing token: #{g['first_diff']}</div>"))

    @staticmethod
    def _tokens(ids: list[int], text: str, first_diff: Optional[int]) -> str:
        if first_diff is None:
            return html.escape(repr(text))
        return " ".join((f"<mark style='background:#ffcdd2'>{t}</mark>" if i >= first_diff else str(t))
                        for i, t in enumerate(ids))
