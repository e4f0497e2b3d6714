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
