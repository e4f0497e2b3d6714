"""The Builder panel: a transformer's knobs as a form, with live size, cost and problems.

    panel = BuilderPanel.from_hf("sample_models/llama-tiny")   # or a Hub id: "Qwen/Qwen2.5-0.5B"
    panel                        # in a notebook: the form, summary, chart and problems
    panel.set("num_kv_heads", 1) # what typing in the form does
    panel.override([1, 2], "sliding_window", 64)
    panel.build(); panel.export_python("llama_tiny.py")

The panel's state is its Blueprint (`panel.blueprint`): every edit goes to the core
object, and every figure shown is computed by the core from it.
"""

from __future__ import annotations

import asyncio
import html
import json
from pathlib import Path
from typing import Any, Optional

import ipywidgets as W
import plotly.graph_objects as go
import traitlets

from workbench import Blueprint, WorkbenchError
from workbench import blueprint as core
from workbench import plots
from workbench_widgets._common import message

GROUPS: dict[str, list[str]] = {
    "Model": ["num_layers", "max_seq_len"],
    "Embedding": ["vocab_size", "hidden_size", "scale_embeddings"],
    "Attention": ["num_heads", "num_kv_heads", "head_dim", "attn_scale", "qk_norm", "attn_logit_softcap",
                  "sliding_window", "qkv_bias", "out_bias"],
    "Feed-forward": ["ff_type", "activation", "intermediate_size", "ff_bias"],
    "Norms": ["norm_type", "norm_eps", "norm_offset", "post_norms", "parallel_residual"],
    "Positions": ["rope_base", "rotary_fraction", "rope_scaling", "alibi"],
    "KV cache": ["kv_cache_length", "kv_cache_dtype"],
    "Head": ["tie_embeddings", "lm_head_bias", "final_logit_softcap"],
}
CHOICES: dict[str, tuple] = {"ff_type": core.FF_TYPES, "activation": core.ACTIVATIONS, "norm_type": core.NORM_TYPES,
                             "kv_cache_dtype": tuple(core.KV_DTYPES), "norm_offset": (0.0, 1.0)}
PROBLEM_BORDER = "2px solid #c62828"
_STYLE = {"description_width": "150px"}


def _field_widget(field: str) -> W.Widget:
    kinds = core._TYPES[field]
    wide = W.Layout(width="330px")  # one Layout per widget: a shared one would share its border
    if field in CHOICES:
        return W.Dropdown(options=CHOICES[field], description=field, style=_STYLE, layout=wide)
    if kinds == (bool,):
        return W.Checkbox(description=field, indent=True, style=_STYLE, layout=wide)
    if kinds == (int,):
        return W.IntText(description=field, style=_STYLE, layout=wide)
    if kinds == (float,):
        return W.FloatText(description=field, style=_STYLE, layout=wide)
    # Optional numbers and the RoPE scaling dict: text, where empty means None.
    return W.Text(description=field, placeholder="none", continuous_update=True, style=_STYLE, layout=wide)


def _to_widget(widget: W.Widget, value: Any) -> Any:
    """A knob's value as its widget holds it (text for optional numbers and dicts)."""
    if not isinstance(widget, W.Text):
        return value
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, dict) else repr(value)


def _flops(n: int) -> str:
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} FLOP"


def parse_text(field: str, text: str) -> Any:
    """A Text field's content as the knob's value: '' is None; the core checks the rest."""
    text = text.strip()
    if not text or text.lower() == "none":
        return None
    kinds = core._TYPES[field]
    try:
        if dict in kinds:
            return json.loads(text)
        if int in kinds:
            return int(text)
        return float(text)
    except ValueError:
        want = "JSON" if dict in kinds else ("an integer" if int in kinds else "a number")
        raise WorkbenchError(f"{field}: {text!r} is not {want}", hint=f"type {want}, or leave it empty for none")


class BuilderPanel(W.VBox):
    """Assemble a transformer from blocks; see its size, cost and problems as you edit."""

    problems = traitlets.List(traitlets.Unicode(), help="every problem, as shown")
    params = traitlets.Int(0, help="parameters of the current blueprint")
    can_build = traitlets.Bool(False)
    debounce_s = traitlets.Float(0.15, help="summary/chart refresh delay after an edit (0: immediately)")

    def __init__(self, blueprint: Optional[Blueprint] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.blueprint = blueprint if blueprint is not None else Blueprint()
        self.model = None  # the last built model
        self.input_errors: dict[str, str] = {}  # field -> message for text that is not a value
        self._syncing = False
        self._pending: Optional[asyncio.TimerHandle] = None

        self.fields: dict[str, W.Widget] = {f: _field_widget(f) for fs in GROUPS.values() for f in fs}
        for f, w in self.fields.items():
            w.observe(lambda change, f=f: self._on_field(f, change["new"]), names="value")
        self.title = W.HTML()
        self.preset = W.Dropdown(options=[""] + Blueprint.presets(), description="preset", layout=W.Layout(width="260px"))
        self.load_preset_button = W.Button(description="Load preset", icon="download")
        self.load_preset_button.on_click(lambda _: self.load_preset(self.preset.value))
        self.hf_source = W.Text(placeholder="org/name[@rev] or a model folder", description="model",
                                style={"description_width": "45px"}, layout=W.Layout(width="330px"))
        self.load_hf_button = W.Button(description="Load model", icon="download",
                                       tooltip="config.json of a Hugging Face Hub id or a local model folder")
        self.load_hf_button.on_click(lambda _: self.load_hf(self.hf_source.value))
        self.download = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="160px", visibility="hidden"))
        self.hf_row = W.HBox([self.hf_source, self.load_hf_button, self.download])
        form = W.Accordion(children=[W.VBox([self.fields[f] for f in fs]) for fs in GROUPS.values()],
                           titles=tuple(GROUPS), selected_index=2)
        form.layout.width = "370px"

        self.summary_html = W.HTML()
        self.figure = go.FigureWidget(plots.params_by_block(self.blueprint.summary()))
        self.problems_html = W.HTML()

        n = max(self.blueprint.num_layers, 0)
        self.layer_picker = W.SelectMultiple(options=list(range(n)), description="layers", rows=4,
                                             layout=W.Layout(width="170px"), style={"description_width": "50px"})
        self.override_field = W.Dropdown(options=core.LAYER_FIELDS, value="sliding_window", description="field",
                                         style={"description_width": "40px"}, layout=W.Layout(width="230px"))
        self.override_value = W.Text(description="value", placeholder="e.g. 512", style={"description_width": "45px"},
                                     layout=W.Layout(width="170px"))
        self.override_button = W.Button(description="Override", icon="pencil")
        self.override_button.on_click(lambda _: self.override(list(self.layer_picker.value), self.override_field.value,
                                                              self.override_value.value))
        self.remove_button = W.Button(description="Remove override", icon="times")
        self.remove_button.on_click(lambda _: self.remove_override(list(self.layer_picker.value),
                                                                   self.override_field.value))
        self.overrides_html = W.HTML()

        self.build_button = W.Button(description="Build", icon="cubes", button_style="primary")
        self.build_button.on_click(lambda _: self.build())
        self.export_path = W.Text(value="reauthored_model.py", description="file", style={"description_width": "30px"},
                                  layout=W.Layout(width="300px"))
        self.export_button = W.Button(description="Export Python", icon="file-code-o")
        self.export_button.on_click(lambda _: self.export_python(self.export_path.value))
        self.message = W.HTML()
        self.report = W.HTML()

        right = W.VBox([self.summary_html, self.figure, self.problems_html], layout=W.Layout(width="480px"))
        self.children = [
            W.VBox([W.HBox([self.title, self.preset, self.load_preset_button]), self.hf_row]),
            W.HBox([form, right]),
            W.HTML("<b>Per-layer overrides</b> — pick layers, a field and a value; overridden cells are marked."),
            W.HBox([self.layer_picker, W.VBox([self.override_field, self.override_value]),
                    W.VBox([self.override_button, self.remove_button])]),
            self.overrides_html,
            W.HBox([self.build_button, self.export_path, self.export_button]),
            self.message,
            self.report,
        ]
        self.add_class("ewb-builder")
        self._sync_form()
        self.refresh()

    # ---- constructors -------------------------------------------------------------
    @classmethod
    def from_hf(cls, path: str | Path, **kwargs: Any) -> "BuilderPanel":
        return cls(Blueprint.from_hf(path), **kwargs)

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> "BuilderPanel":
        return cls(Blueprint.preset(name), **kwargs)

    @classmethod
    def for_project(cls, wb, **kwargs: Any) -> "BuilderPanel":
        """A panel on a project's blueprint, with a button that saves the edits there (what
        was computed from the older blueprint then reads as stale)."""
        panel = cls(wb.blueprint, **kwargs)
        panel.project = wb
        panel.hf_row.layout.display = "none"  # the project's checkpoint decides the model
        panel.save_button = W.Button(description="Save to project", icon="save", layout=W.Layout(width="170px"))
        panel.save_button.on_click(lambda _: panel.save_to_project())
        panel.children = (*panel.children[:-1], panel.save_button, panel.children[-1])
        return panel

    def save_to_project(self) -> bool:
        """Saves the edited blueprint into the project; says what turned stale."""
        wb = self.project
        try:
            wb.blueprint = self.blueprint
            wb.save_blueprint()
        except WorkbenchError as e:
            self._say(html.escape(str(e)), error=True)
            return False
        stale = [k for k, v in wb.status().items() if v == "stale"]
        self._say("Saved to the project." + (f" Stale now: {', '.join(stale)}." if stale else ""))
        return True

    # ---- actions (what the buttons and fields do) ----------------------------------
    def set(self, field: str, value: Any) -> None:
        """Sets a knob for every layer, as typing in its field does."""
        self.fields[field].value = _to_widget(self.fields[field], value)

    def load_preset(self, name: str) -> None:
        if not name:
            return self._say("Pick a preset first.", error=True)
        try:
            self.blueprint = Blueprint.preset(name)
        except WorkbenchError as e:
            return self._say(str(e), error=True)
        self.input_errors.clear()
        self._sync_form()
        self.refresh()
        self._say(f"Loaded preset {html.escape(name)}.")

    def load_hf(self, source: str) -> None:
        """Loads the blueprint of a Hugging Face model: a Hub id (`org/name[@rev]`, its
        config.json fetched into the hub's cache, with a progress bar) or a local folder."""
        source = (source or "").strip()
        if not source:
            return self._say("Type a Hub id (org/name) or a model folder first.", error=True)

        def progress(stage: str, done: int, total: int, detail: str = "") -> None:
            self.download.layout.visibility = "visible"
            self.download.max, self.download.value = max(total, 1), min(done, max(total, 1))
            self.download.description = detail[:20]

        try:
            self.blueprint = Blueprint.from_hf(source, progress=progress)
        except WorkbenchError as e:
            return self._say(str(e), error=True)
        finally:
            self.download.layout.visibility = "hidden"
        self.input_errors.clear()
        self._sync_form()
        self.refresh()
        self._say(f"Loaded {html.escape(self.blueprint.source or source)}.")

    def override(self, layers: list[int], field: str, value: Any) -> None:
        """Overrides one knob on the given layers (value may be text, as typed)."""
        if not layers:
            return self._say("Pick one or more layers to override.", error=True)
        try:
            if isinstance(value, str):
                value = self._parse_any(field, value)
            for i in layers:
                self.blueprint.set(field, value, layer=int(i))
        except WorkbenchError as e:
            return self._say(str(e), error=True)
        self._say(f"Layers {', '.join(map(str, layers))}: {html.escape(field)} = {html.escape(repr(value))}.")
        self.refresh()

    def remove_override(self, layers: list[int], field: str) -> None:
        removed = [i for i in layers if field in self.blueprint.overrides.get(int(i), {})]
        for i in removed:
            self.blueprint.unset(field, int(i))
        self._say(f"Removed the {html.escape(field)} override on layers {removed}." if removed else
                  f"None of layers {list(layers)} overrides {html.escape(field)}.", error=not removed)
        self.refresh()

    def build(self):
        """Builds the litert-torch model and reports it; returns it (None if it cannot be built)."""
        if not self.can_build:
            self._say(self.build_button.tooltip, error=True)
            return None
        try:
            from workbench import layers

            model = self.blueprint.build()
        except WorkbenchError as e:
            self._say(str(e), error=True)
            return None
        self.model = model
        built, expected = layers.count_params(model), self.blueprint.summary().params
        check = (f"<span style='color:#2e7d32'>{built:,} parameters — matches the summary</span>" if built == expected
                 else f"<span style='color:#c62828'>{built:,} parameters built, but the summary says {expected:,}</span>")
        rows = "".join(f"<tr><td><code>{html.escape(n)}</code></td><td>{html.escape(t)}</td>"
                       f"<td style='text-align:right'>{p:,}</td></tr>" for n, t, p in layers.module_tree(model, 1))
        self.report.value = (f"<b>Built</b> <code>{type(model).__module__}.{type(model).__name__}</code>: {check}"
                             f"<table><tr><th>module</th><th>type</th><th>parameters</th></tr>{rows}</table>")
        self._say("Built.")
        return model

    def export_python(self, path: str | Path) -> Optional[Path]:
        """Writes the emitted module to `path`, shows it highlighted with a link; returns the path."""
        try:
            p = self.blueprint.write_python(path)
        except WorkbenchError as e:
            self._say(html.escape(str(e)), error=True)
            return None
        source = p.read_text()
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer

        code = highlight(source, PythonLexer(), HtmlFormatter(noclasses=True, style="default"))
        link = html.escape(str(p))
        self.report.value = (f"<b>Exported</b> <a href='{link}' target='_blank' download>{link}</a> "
                             f"({len(source.splitlines())} lines)"
                             f"<div style='max-height:320px;overflow:auto;border:1px solid #ddd'>{code}</div>")
        self._say(f"Wrote {link}.")
        return p

    # ---- rendering ----------------------------------------------------------------
    def refresh(self) -> None:
        """Recomputes summary, chart, problems and marks from the Blueprint, now."""
        self._pending = None
        bp = self.blueprint
        s = bp.summary()
        probs = list(self.input_errors.values()) + [str(p) for p in bp.problems()]
        self.problems = probs
        self.params = s.params
        self.can_build = not probs
        name = html.escape(bp.name or bp.family)
        family = f" <code>{html.escape(bp.family)}</code>" if bp.family != (bp.name or bp.family) else ""
        self.title.value = f"<h3 style='margin:4px 0'>Builder — {name}{family}</h3>"
        human = core._human
        self.summary_html.value = (
            f"<div class='ewb-summary'><b style='font-size:1.3em'>{s.params:,}</b> parameters<br>"
            "weights: " + ", ".join(f"{k} <b>{human(v)}</b>" for k, v in s.weights_bytes.items()) +
            f"<br>KV cache: <b>{human(s.kv_cache_bytes)}</b> for {s.kv_cache_length:,} tokens "
            f"({html.escape(bp.kv_cache_dtype)})<br>decode: {_flops(s.decode_flops_per_token)} per token</div>")
        fig = plots.params_by_block(s)
        with self.figure.batch_update():
            self.figure.data[0].y = fig.data[0].y
            self.figure.data[0].text = fig.data[0].text
            self.figure.layout.title = fig.layout.title
        self.problems_html.value = (
            "<div class='ewb-problems' style='color:#2e7d32'>No problems: ready to build.</div>" if not probs else
            f"<div class='ewb-problems'><b style='color:#c62828'>{len(probs)} problem(s)</b><ul>" +
            "".join(f"<li style='color:#c62828'>{html.escape(p)}</li>" for p in probs) + "</ul></div>")
        marked = set(self.input_errors) | {p.field for p in bp.problems() if p.layer is None}
        for f, w in self.fields.items():
            w.layout.border = PROBLEM_BORDER if f in marked else ""
            (w.add_class if f in marked else w.remove_class)("ewb-problem")
        self.build_button.disabled = bool(probs)
        self.build_button.tooltip = ("Ready to build." if not probs else
                                     f"Fix {len(probs)} problem(s) first: " + "; ".join(probs[:3]))
        n = max(bp.num_layers, 0)
        if list(self.layer_picker.options) != list(range(n)):
            self.layer_picker.options = list(range(n))
        self.overrides_html.value = self._overrides_table()

    def _overrides_table(self) -> str:
        bp = self.blueprint
        if not bp.overrides:
            return "<i>No per-layer overrides: every layer uses the shared knobs.</i>"
        cols = sorted({f for fs in bp.overrides.values() for f in fs}, key=core.LAYER_FIELDS.index)
        bad = {(p.layer, p.field) for p in bp.problems() if p.layer is not None}
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        rows = []
        for i in range(max(bp.num_layers, 0)):
            cells = []
            for c in cols:
                v = getattr(bp.layer_spec(i), c)
                if c in bp.overrides.get(i, {}):
                    color = "#ffcdd2" if (i, c) in bad else "#fff3c4"
                    cells.append(f"<td class='ewb-overridden' style='background:{color}' "
                                 f"title='overridden on layer {i}'><b>{html.escape(repr(v))}</b></td>")
                else:
                    cells.append(f"<td style='color:#777'>{html.escape(repr(v))}</td>")
            rows.append(f"<tr><td>transformer_blocks[{i}]</td>{''.join(cells)}</tr>")
        orphans = [i for i in bp.overrides if not 0 <= i < bp.num_layers]
        note = (f"<div style='color:#c62828'>Overrides on layers {orphans} that no longer exist.</div>"
                if orphans else "")
        return (f"<table class='ewb-overrides'><tr><th>layer</th>{head}</tr>{''.join(rows)}</table>{note}")

    # ---- plumbing -----------------------------------------------------------------
    def _sync_form(self) -> None:
        """Puts the Blueprint's shared values into the form without treating them as edits."""
        self._syncing = True
        try:
            for f, w in self.fields.items():
                v = getattr(self.blueprint, f) if f in core.MODEL_FIELDS else getattr(self.blueprint.layer, f)
                w.value = _to_widget(w, v)
        finally:
            self._syncing = False

    def _on_field(self, field: str, value: Any) -> None:
        if self._syncing:
            return
        try:
            if isinstance(self.fields[field], W.Text):
                value = parse_text(field, value)
            self.blueprint.set(field, value)
            self.input_errors.pop(field, None)
        except WorkbenchError as e:
            self.input_errors[field] = e.message
        self._schedule_refresh()

    def _schedule_refresh(self) -> None:
        """Refreshes after `debounce_s` of quiet (typing never waits on it); at once when
        there is no running event loop (scripts, tests)."""
        try:
            loop = asyncio.get_running_loop() if self.debounce_s > 0 else None
        except RuntimeError:
            loop = None
        if loop is None:
            return self.refresh()
        if self._pending is not None:
            self._pending.cancel()
        self._pending = loop.call_later(self.debounce_s, self.refresh)

    def _parse_any(self, field: str, text: str) -> Any:
        kinds = core._TYPES[field]
        if bool in kinds:
            if text.strip().lower() in ("true", "1", "yes"):
                return True
            if text.strip().lower() in ("false", "0", "no"):
                return False
            raise WorkbenchError(f"{field}: {text!r} is not true/false", hint="type true or false")
        if str in kinds:
            return text.strip()
        return parse_text(field, text)

    def _say(self, text: str, error: bool = False) -> None:
        self.message.value = message(text, error)
