"""The Mapping panel: every target parameter, its source tensor, shapes and status.

    panel = MappingPanel.propose(bp, "sample_models/llama-tiny")
    panel.set_pattern("ff_up_proj", "model.layers.{}.mlp.fc1")   # what typing in its editor does
    panel.load()                                               # the "Load weights" button

The panel's state is its Mapping (`panel.mapping`); the table, counts and problems
are the core's, rendered.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Optional

import ipywidgets as W
import traitlets

from workbench import WorkbenchError
from workbench.mapping import TENSOR_KEYS, Entry, Mapping
from workbench_widgets._common import message

STATUS_COLORS = {"ok": "#2e7d32", "tied": "#1565c0", "missing": "#c62828", "shape mismatch": "#c62828",
                 "transposed": "#ef6c00", "needs split": "#ef6c00", "needs fuse": "#ef6c00", "duplicate": "#c62828",
                 "unused": "#ad1457", "unused (harmless)": "#777777"}
FILTERS = ("all", "problems", "ok", "tied", "unused", "unused (harmless)")
SORTS = ("model order", "status", "target", "source")


def _shape(s) -> str:
    return "" if s is None else "×".join(map(str, s))


def _compact(source: str) -> str:
    """'a.q_proj.weight + a.k_proj.weight + a.v_proj.weight' -> 'a.{q_proj,k_proj,v_proj}.weight'."""
    parts = source.split(" + ")
    if len(parts) < 2:
        return source
    pre = os.path.commonprefix(parts)
    pre = pre[: pre.rfind(".") + 1]
    suf = os.path.commonprefix([p[::-1] for p in parts])[::-1]
    suf = suf[suf.find("."):] if "." in suf else ""
    middles = [p[len(pre): len(p) - len(suf)] for p in parts]
    return f"{pre}{{{','.join(middles)}}}{suf}"


_TD = "style='padding:1px 6px;text-align:left;vertical-align:top'"


class MappingPanel(W.VBox):
    """Propose, inspect, edit, save and load a weight mapping."""

    counts = traitlets.Dict(help="rows per status")
    problems = traitlets.List(traitlets.Unicode())
    loaded = traitlets.Bool(False)

    def __init__(self, mapping: Mapping, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mapping = mapping
        self.model = None
        self.header = W.HTML()
        self.filter = W.Dropdown(options=FILTERS, value="all", description="show", layout=W.Layout(width="220px"),
                                 style={"description_width": "40px"})
        self.sort = W.Dropdown(options=SORTS, value="model order", description="sort", layout=W.Layout(width="220px"),
                               style={"description_width": "40px"})
        for w in (self.filter, self.sort):
            w.observe(lambda _: self.refresh(), names="value")
        self.table_html = W.HTML(layout=W.Layout(max_height="420px", overflow="auto"))
        self.problems_html = W.HTML()

        needed = mapping.needed_keys()
        keys = [k for k in TENSOR_KEYS if k in needed or mapping.tensor_names.get(k)
                or k == "attn_fused_qkv_proj"]
        self.patterns: dict[str, W.Text] = {}
        for k in keys:
            t = W.Text(value=mapping.tensor_names.get(k) or "", description=k, placeholder="none",
                       continuous_update=False, style={"description_width": "150px"}, layout=W.Layout(width="520px"))
            t.observe(lambda change, k=k: self.set_pattern(k, change["new"]), names="value")
            self.patterns[k] = t

        targets = [e.target for e in mapping.table() if e.target]
        self.row_target = W.Dropdown(options=targets, description="row", layout=W.Layout(width="520px"),
                                     style={"description_width": "40px"})
        self.row_source = W.Combobox(options=sorted(mapping.checkpoint.tensors), placeholder="source tensor",
                                     description="from", ensure_option=False, layout=W.Layout(width="420px"),
                                     style={"description_width": "40px"})
        self.row_button = W.Button(description="Set row", icon="pencil")
        self.row_button.on_click(lambda _: self.set_row(self.row_target.value, self.row_source.value))
        self.clear_row_button = W.Button(description="Clear row", icon="times")
        self.clear_row_button.on_click(lambda _: self.set_row(self.row_target.value, None))

        self.load_button = W.Button(description="Load weights", icon="upload", button_style="primary")
        self.load_button.on_click(lambda _: self.load())
        self.progress = W.IntProgress(value=0, min=0, max=1, description="", layout=W.Layout(width="300px"))
        self.progress_label = W.HTML()
        self.save_path = W.Text(value="mapping.json", description="file", style={"description_width": "30px"},
                                layout=W.Layout(width="300px"))
        self.save_button = W.Button(description="Save mapping", icon="save")
        self.save_button.on_click(lambda _: self.save(self.save_path.value))
        self.code_button = W.Button(description="Show TENSOR_NAMES", icon="code")
        self.code_button.on_click(lambda _: self.show_code())
        self.message = W.HTML()
        self.code_html = W.HTML()

        self.children = [
            self.header,
            W.HBox([self.filter, self.sort]),
            self.table_html,
            self.problems_html,
            W.HTML("<b>Patterns</b> (litert-torch TensorNames; <code>{}</code> is the layer index) — "
                   "press Enter to re-check"),
            W.VBox(list(self.patterns.values())),
            W.HTML("<b>One row</b> — take a target's weight from another tensor"),
            W.HBox([self.row_target]),
            W.HBox([self.row_source, self.row_button, self.clear_row_button]),
            W.HBox([self.load_button, self.progress, self.progress_label]),
            W.HBox([self.save_path, self.save_button, self.code_button]),
            self.message,
            self.code_html,
        ]
        self.add_class("ewb-mapping")
        self.refresh()

    @classmethod
    def propose(cls, bp, checkpoint, **kwargs: Any) -> "MappingPanel":
        return cls(Mapping.propose(bp, checkpoint), **kwargs)

    # ---- actions ------------------------------------------------------------------
    def set_pattern(self, key: str, pattern: Optional[str]) -> None:
        """Sets one TensorNames pattern ('' or None unsets it) and re-checks the table."""
        try:
            self.mapping.set(key, (pattern or "").strip() or None)
        except WorkbenchError as e:
            return self._say(str(e), error=True)
        if key in self.patterns and self.patterns[key].value != (pattern or ""):
            self.patterns[key].value = pattern or ""
        self.loaded = False
        self.refresh()

    def set_row(self, target: str, source: Optional[str]) -> None:
        try:
            self.mapping.set(target, (source or "").strip() or None)
        except WorkbenchError as e:
            return self._say(str(e), error=True)
        self._say(f"{html.escape(target)} ← {html.escape(source)}" if source else f"{html.escape(target)}: "
                  "back to its pattern")
        self.loaded = False
        self.refresh()

    def load(self, kv_cache_length: Optional[int] = None):
        """Loads the weights (strictly) into a new model; returns it, or None with the error shown."""
        self.progress.bar_style = ""

        def progress(stage: str, done: int, total: int, detail: str = "") -> None:
            self.progress.max = max(total, 1)
            self.progress.value = done
            self.progress_label.value = f"{done}/{total} <code>{html.escape(detail)}</code>"

        try:
            self.model = self.mapping.load(progress=progress, kv_cache_length=kv_cache_length)
        except WorkbenchError as e:
            self.progress.bar_style = "danger"
            self._say(str(e), error=True)
            return None
        self.progress.bar_style = "success"
        notes = "; ".join(self.mapping.checkpoint.notes)
        self._say(f"Loaded {len([e for e in self.mapping.table() if e.target])} parameters into "
                  f"<code>{type(self.model).__name__}</code>." + (f" Note: {html.escape(notes)}." if notes else ""))
        self.loaded = True
        return self.model

    @classmethod
    def for_project(cls, wb, **kwargs: Any) -> "MappingPanel":
        """A panel on a project's mapping; Save records it in the project (reviewed against
        the current blueprint), with the emitted Python beside it."""
        panel = cls(wb.mapping, **kwargs)
        panel.project = wb
        panel.save_path.value, panel.save_path.disabled = "mapping.json (in the project)", True
        return panel

    def save(self, path: str | Path) -> Optional[Path]:
        if getattr(self, "project", None) is not None:
            try:
                self.project.save_mapping(self.mapping)
            except WorkbenchError as e:
                return self._say(html.escape(str(e)), error=True)
            p = self.project.root / "mapping.json"
            self._say(f"Saved to the project: <code>{html.escape(str(p))}</code> (and <code>model.py</code>).")
            return p
        try:
            p = self.mapping.save(path)
        except WorkbenchError as e:
            return self._say(html.escape(str(e)), error=True)
        self._say(f"Saved <code>{html.escape(str(p))}</code>.")
        return p

    def show_code(self) -> str:
        code = self.mapping.to_python()
        self.code_html.value = f"<pre style='font-size:0.85em'>{html.escape(code)}</pre>"
        return code

    # ---- rendering ----------------------------------------------------------------
    def visible_rows(self) -> list[Entry]:
        rows = list(self.mapping.table())
        f = self.filter.value
        if f == "problems":
            rows = [e for e in rows if not e.ok]
        elif f != "all":
            rows = [e for e in rows if e.status == f]
        key = {"status": lambda e: (e.ok, e.status), "target": lambda e: e.target or "~",
               "source": lambda e: e.source}.get(self.sort.value)
        return sorted(rows, key=key) if key else rows

    def refresh(self) -> None:
        m = self.mapping
        self.counts = m.counts()
        self.problems = [str(p) for p in m.problems()]  # the sentences, as the trait holds text
        n_bad = sum(1 for e in m.table() if e.target and not e.ok)
        n_unused = len(m.unused())
        verdict = ("<b style='color:#2e7d32'>ready to load</b>" if not self.problems and not n_unused else
                   f"<b style='color:#c62828'>{n_bad} problem(s), {n_unused} unused</b>")
        self.header.value = (
            f"<h3 style='margin:4px 0'>Weight mapping</h3><div class='ewb-counts'>"
            f"{len(m.checkpoint.tensors)} source tensors → {sum(1 for e in m.table() if e.target)} parameters: "
            + " ".join(f"<span style='color:{STATUS_COLORS.get(k, '#000')}'>{html.escape(k)} <b>{v}</b></span>"
                       for k, v in self.counts.items()) + f" — {verdict}</div>")
        rows = []
        for e in self.visible_rows():
            color = STATUS_COLORS.get(e.status, "#000")
            rows.append(
                f"<tr class='ewb-row' data-status='{html.escape(e.status)}'>"
                f"<td {_TD}><code style='font-size:11px'>{html.escape(e.target)}</code></td>"
                f"<td {_TD} title='{html.escape(e.source)}'><code style='font-size:11px'>"
                f"{html.escape(_compact(e.source))}</code></td>"
                f"<td {_TD}>{_shape(e.expected)}</td><td {_TD}>{_shape(e.found)}</td>"
                f"<td {_TD}>{html.escape(e.dtype or '')}</td>"
                f"<td {_TD} title='{html.escape(e.hint)}'><b style='color:{color}'>{html.escape(e.status)}</b></td>"
                # ok rows keep their note in the status tooltip; a problem's hint is shown in full
                f"<td {_TD}><div style='min-width:260px;white-space:normal'>"
                f"{'' if e.ok else html.escape(e.hint)}</div></td></tr>")
        self.table_html.value = (
            "<table class='ewb-mapping-table' style='border-collapse:collapse;font-size:12px'><tr>" +
            "".join(f"<th {_TD}>{h}</th>" for h in ("target", "source", "expected", "found", "dtype", "status",
                                                   "hint")) + "</tr>" + "".join(rows) +
            "</table>" + ("" if rows else "<i>no rows match the filter</i>"))
        pattern_issues = m.pattern_problems()
        self.problems_html.value = "" if not pattern_issues else (
            "<ul>" + "".join(f"<li style='color:#c62828'>{html.escape(str(p))}</li>" for p in pattern_issues) + "</ul>")
        bad_keys = {p.field for p in pattern_issues}
        bad_keys |= {k for e in m.table() if e.target and not e.ok for k in e.keys}
        for k, t in self.patterns.items():
            t.layout.border = "2px solid #c62828" if k in bad_keys else ""
        blocking = len(self.problems) + n_unused
        self.load_button.disabled = bool(blocking)
        self.load_button.tooltip = ("Load the checkpoint's weights" if not blocking else
                                    f"Fix {len(self.problems)} problem(s) and {n_unused} unused tensor(s) first")

    def _say(self, text: str, error: bool = False) -> None:
        self.message.value = message(text, error)
