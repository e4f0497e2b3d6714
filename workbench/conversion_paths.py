"""Re-authored vs litert-torch's direct export, side by side on one model and machine.

    t = compare_paths("sample_models/llama-tiny", recipe="dynamic_int8", prefill=[8], kv=64, out="out")
    t.rows            # one per path: size, signatures, seconds, peak memory, error vs transformers, tok/s
    t.figure()        # the same as a plotly figure

Both conversions run as ordinary jobs (`workbench.convert.convert`, path="reauthored" and
path="export_hf"), one after the other so each has the machine to itself; each file is
then checked the same way and timed in ai-edge-litert on this machine.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from workbench.convert import convert
from workbench.convert_settings import PATHS

LABELS = {"reauthored": "re-authored (workbench)", "export_hf": "direct export (export_hf)"}
COLUMNS = (("size_bytes", "size", "MiB", 2**20), ("seconds", "conversion", "s", 1),
           ("peak_rss_bytes", "peak memory", "GB", 1e9), ("max_abs_diff", "max |logits − transformers|", "", 1),
           ("top1_agreement", "top-1 agreement", "", 1), ("prefill_tok_s", "prefill", "tok/s", 1),
           ("decode_tok_s", "decode", "tok/s", 1))


def cell_text(v: Any, key: str, scale: float) -> str:
    """One measure as text, the same in the notebook's tables (sweep, paths) and the CLI's:
    top-1 agreement as a percentage, an error to two significant digits, perplexity to one
    decimal, anything else divided by `scale` (two decimals for MiB and GB, one otherwise);
    "—" when missing. `scale` is 1 for a column shown as measured, never 0."""
    if v is None:
        return "—"
    if key.startswith("top1"):
        return f"{v:.0%}"
    if key.startswith("err") or key == "max_abs_diff":
        return f"{v:.2g}"
    if key == "perplexity":
        return f"{v:,.1f}"
    return f"{v / scale:,.{2 if scale > 1 else 1}f}"


def cell_html(v: Any, key: str, scale: float) -> str:
    """`cell_text` as a table cell (its text never needs escaping: digits, "%", "—")."""
    return f"<td>{cell_text(v, key, scale)}</td>"


@dataclasses.dataclass
class PathComparison:
    """One row per conversion path, measured on the same model, recipe and machine."""

    rows: list[dict]
    recipe: Any
    prefill: list[int]
    kv: int
    threads: int

    def row(self, path: str) -> dict:
        return next(r for r in self.rows if r["path"] == path)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "PathComparison":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})

    def table_html(self) -> str:
        import html

        head = "".join(f"<th style='padding:2px 8px'>{html.escape(label)}{f' ({unit})' if unit else ''}</th>"
                       for _, label, unit, _ in COLUMNS)
        body = []
        for r in self.rows:
            cells = "".join(cell_html(r.get(key), key, scale) for key, _, _, scale in COLUMNS)
            body.append(f"<tr><td style='white-space:nowrap'><b>{html.escape(LABELS[r['path']])}</b></td>"
                        f"{cells}</tr>")
        return (f"<table class='ewb-paths'><tr><th>path</th>{head}</tr>{''.join(body)}</table>"
                f"<div style='color:#777'>recipe {html.escape(str(self.recipe))}, prefill {self.prefill}, kv {self.kv}, "
                f"{self.threads} threads; each conversion alone on this machine</div>")

    def _repr_html_(self) -> str:
        return self.table_html()

    def figure(self):
        """Each measure as a pair of bars (re-authored, direct export)."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        shown = [c for c in COLUMNS if c[0] != "top1_agreement"]
        fig = make_subplots(rows=1, cols=len(shown), subplot_titles=[
            f"{label}{f' ({unit})' if unit else ''}" for _, label, unit, _ in shown])
        colors = {"reauthored": "#1565c0", "export_hf": "#ef6c00"}
        for col, (key, _, _, scale) in enumerate(shown, start=1):
            for r in self.rows:
                v = r.get(key)
                fig.add_trace(go.Bar(x=[LABELS[r["path"]].split(" (")[0]], y=[None if v is None else v / scale],
                                     marker_color=colors[r["path"]], name=LABELS[r["path"]],
                                     legendgroup=r["path"], showlegend=col == 1), row=1, col=col)
            if key == "max_abs_diff":
                fig.update_yaxes(type="log", row=1, col=col)
        fig.update_layout(height=330, margin=dict(l=30, r=10, t=50, b=30), barmode="group",
                          title=f"Re-authored vs direct export — {self.recipe}, kv {self.kv}",
                          legend=dict(orientation="h", y=-0.15), font=dict(size=10))
        fig.update_annotations(font_size=10)
        fig.update_xaxes(showticklabels=False)  # the legend names the two bars
        return fig


def compare_paths(source, recipe: Any = "dynamic_int8", prefill: Sequence[int] = (8,), kv: Optional[int] = 64,
                  out: str | Path = "out", threads: int = 2, decode_steps: int = 32,
                  progress: Optional[Callable] = None, manifest_extra: Optional[dict] = None,
                  jobs: Optional[list] = None) -> PathComparison:
    """Converts `source` (a Mapping or a Hugging Face folder) both ways with the same recipe
    and lengths, and measures the two files side by side. `jobs`, if given, receives each
    Job as it starts (to cancel it from elsewhere). `kv=None` takes convert's default."""
    from workbench.runtime import SignatureModel

    rows = []
    for i, path in enumerate(PATHS):
        def step(stage: str, done: int, total: int, detail: str = "", _path=path, _i=i) -> None:
            if progress is not None:
                progress(f"{LABELS[_path]}: {stage}", _i * total + done, 2 * total, detail)

        job = convert(source, recipe=recipe, prefill=prefill, kv=kv, out=out, path=path, progress=step,
                      analyze=False, manifest_extra=manifest_extra)
        if jobs is not None:
            jobs.append(job)
        kv = job.settings.kv
        res = job.result()
        speed = SignatureModel(res.path, threads=threads).speed(decode_steps)
        c = res.check
        rows.append({"path": path, "file": str(res.path), "size_bytes": res.size_bytes,
                     "signatures": res.signatures, "seconds": res.seconds, "peak_rss_bytes": res.peak_rss_bytes,
                     "max_abs_diff": c.get("max_abs_diff"), "top1_agreement": c.get("top1_agreement"),
                     "mean_cosine": c.get("mean_cosine"), **speed})
    return PathComparison(rows, recipe, sorted({int(p) for p in prefill}), kv, threads)


__all__ = ["PathComparison", "compare_paths", "LABELS"]
