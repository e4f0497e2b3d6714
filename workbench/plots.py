"""Figures of core results, as plain `plotly.graph_objects.Figure` (panels show them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from workbench.blueprint import Summary

BLOCK_LABELS = {"embedding": "embedding", "attention": "attention", "feed_forward": "feed-forward",
                "norms": "norms", "head": "LM head"}
BLOCK_COLORS = {"embedding": "#5e81ac", "attention": "#bf616a", "feed_forward": "#d08770", "norms": "#a3be8c",
                "head": "#b48ead"}


def params_by_block(summary: "Summary") -> "go.Figure":
    """A bar per block type: how many parameters each kind of block holds."""
    import plotly.graph_objects as go

    keys = list(BLOCK_LABELS)
    values = [summary.params_by_block.get(k, 0) for k in keys]
    total = max(summary.params, 1)
    fig = go.Figure(go.Bar(
        x=[BLOCK_LABELS[k] for k in keys], y=values, marker_color=[BLOCK_COLORS[k] for k in keys],
        text=[f"{v / total:.0%}" for v in values], textposition="outside",
        hovertemplate="%{x}: %{y:,} parameters<extra></extra>"))
    fig.update_layout(title=f"Parameters per block type ({summary.params:,} total)", height=300, width=460,
                      margin=dict(l=50, r=10, t=40, b=30), yaxis_title="parameters", template="plotly_white",
                      uniformtext_minsize=9)
    return fig


POINT_COLORS = {"embedding": "#4c566a", "input_norm": "#5e81ac", "attention": "#bf616a",
                "post_attention_residual": "#b48ead", "mlp": "#d08770", "output": "#2e3440",
                "final_norm": "#a3be8c", "logits": "#ebcb8b"}


def error_per_layer(c) -> "go.Figure":
    """Max abs difference per layer (log scale), a line per sub-module, the first divergence marked."""
    import plotly.graph_objects as go

    fig = go.Figure()
    by_point: dict[str, list] = {}
    for r in c.records:
        if r.layer is not None:
            by_point.setdefault(r.point, []).append(r)
    for point, rs in by_point.items():
        fig.add_trace(go.Scatter(x=[r.layer for r in rs], y=[max(r.max_abs_diff, 1e-12) for r in rs],
                                 mode="lines+markers", name=point, line=dict(color=POINT_COLORS.get(point)),
                                 hovertemplate=f"layer %{{x}} {point}: %{{y:.3g}}<extra></extra>"))
    last = max((r.layer for r in c.records if r.layer is not None), default=0)
    for r in c.records:
        if r.layer is None and r.point != "embedding":
            fig.add_trace(go.Scatter(x=[last + 1], y=[max(r.max_abs_diff, 1e-12)], mode="markers",
                                     marker=dict(symbol="diamond", size=11, color=POINT_COLORS[r.point]),
                                     name=r.point, hovertemplate=f"{r.point}: %{{y:.3g}}<extra></extra>"))
    fig.add_hline(y=c.tol, line_dash="dash", line_color="#c62828", annotation_text=f"tolerance {c.tol:g}",
                  annotation_position="top left")
    d = c.first_divergence()
    if d is not None:
        x = d.layer if d.layer is not None else (last + 1 if d.point != "embedding" else 0)
        fig.add_trace(go.Scatter(x=[x], y=[max(d.max_abs_diff, 1e-12)], mode="markers", name="first divergence",
                                 marker=dict(symbol="circle-open", size=22, color="#c62828", line=dict(width=3)),
                                 hovertemplate=f"first divergence: {d.name}<extra></extra>"))
    fig.update_layout(title="Max |re-authored − original| per layer", yaxis_type="log", height=360,
                      xaxis=dict(title="layer", tickmode="array", tickvals=list(range(last + 2)),
                                 ticktext=[str(i) for i in range(last + 1)] + ["head"]),
                      yaxis_title="max abs diff", yaxis_exponentformat="power", template="plotly_white",
                      margin=dict(l=60, r=10, t=40, b=40))
    return fig


def error_heatmap(c) -> "go.Figure":
    """log10 max abs difference, layer × sub-module."""
    import math

    import plotly.graph_objects as go

    points = [p for p in ("input_norm", "attention", "post_attention_residual", "mlp", "output")
              if any(r.point == p for r in c.records)]
    layers = sorted({r.layer for r in c.records if r.layer is not None})
    cell = {(r.layer, r.point): r.max_abs_diff for r in c.records}
    z = [[math.log10(max(cell[(i, p)], 1e-12)) if (i, p) in cell else None for p in points] for i in layers]
    fig = go.Figure(go.Heatmap(z=z, x=points, y=[f"layer {i}" for i in layers], colorscale="RdYlGn_r",
                               zmin=-8, zmax=0, colorbar=dict(title="log10"),
                               hovertemplate="%{y} %{x}: 10^%{z:.2f}<extra></extra>"))
    fig.update_layout(title="log10 max abs diff: layer × sub-module", height=120 + 28 * len(layers),
                      template="plotly_white", margin=dict(l=70, r=10, t=40, b=40), yaxis_autorange="reversed")
    return fig
