"""Where quantization hurts: ai-edge-quantizer's per-tensor error, per layer and component.

ai-edge-quantizer's `Quantizer.validate` runs the float and the quantized model side by
side and returns each tensor's MSE; we only group it. Tensor names carry litert-torch's
module path (`...TransformerBlock_3/...CausalSelfAttention_atten_func/...`), so every
error lands on a layer and a component. The error a part *adds* (its worst MSE minus that
of the matmul part before it, in forward order) ranks the parts; the worst quarter are
proposed in fp16. It is a one-pass estimate: error compounds, so a part late in the model
may look worse than it is alone. Every tensor's MSE is kept too (`tensors`, by TFLite
tensor name): Model Explorer colours each op of the converted graph by it.
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional

_LAYER = re.compile(r"Block_(\d+)/")


def component_of(name: str) -> str:
    if "_atten_func" in name:
        return "attention"
    if re.search(r"_ff(?:[/;]|$)", name):
        return "feedforward"
    return "norms/residual"


def summarize(tensor_results: dict[str, dict], recipe, num_layers: int, keep_fraction: float = 0.25) -> dict:
    """Groups per-tensor MSE by (layer, component), ranks the added error, proposes a recipe."""
    from workbench.recipe import Recipe

    worst: dict[tuple[int, str], float] = {}
    top = []
    for name, metrics in tensor_results.items():
        mse = float(metrics.get("mse", 0.0))
        if not math.isfinite(mse):
            mse = float("inf")
        top.append((mse, name))
        m = _LAYER.search(name)
        if m:
            key = (int(m.group(1)), component_of(name))
            worst[key] = max(worst.get(key, 0.0), mse)
    rows = []
    previous = 0.0  # the error out of the previous matmul part (norms only rescale it)
    for layer in range(num_layers):
        for comp in ("attention", "feedforward", "norms/residual"):
            if (layer, comp) not in worst:
                continue
            mse = worst[(layer, comp)]
            matmul = comp != "norms/residual"
            rows.append({"layer": layer, "component": comp, "mse": mse,
                         "added": max(0.0, mse - previous) if matmul else 0.0,
                         "scheme": recipe.scheme_of(comp, layer) if matmul else "float"})
            if matmul:
                previous = mse
    ranked = sorted((r for r in rows if r["component"] != "norms/residual"), key=lambda r: -r["added"])
    k = max(1, math.ceil(keep_fraction * len(ranked))) if ranked else 0
    proposal: Optional[dict] = None
    if ranked and recipe.name != "none":
        spec = recipe.to_json() if isinstance(recipe.to_json(), dict) else {"default": recipe.name}
        for r in ranked[:k]:
            if r["scheme"] not in ("none", "fp16"):
                comp = spec.setdefault(r["component"], {})
                if isinstance(comp, str):
                    comp = spec[r["component"]] = {str(i): comp for i in range(num_layers)}
                comp[str(r["layer"])] = "fp16"
        proposal = Recipe.parse(spec).to_json()
    top.sort(reverse=True)
    return {"metric": "mse", "signature": "decode", "parts": rows,
            "worst": [{"layer": r["layer"], "component": r["component"], "added": r["added"]} for r in ranked[:k]],
            "proposal": proposal, "top_tensors": [{"name": n, "mse": v} for v, n in top[:25]],
            # every tensor's MSE (4 significant digits): the per-op overlay in Model Explorer
            "tensors": {n: (float(f"{v:.4g}") if math.isfinite(v) else v) for v, n in top}}


def figure(quant_error: dict) -> Any:
    """Error at each layer's attention and feed-forward output (log scale); outlined: the
    parts that add the most, proposed for fp16."""
    import plotly.graph_objects as go

    fig = go.Figure()
    worst = {(w["layer"], w["component"]) for w in quant_error.get("worst", [])}
    for comp, color in (("attention", "#bf616a"), ("feedforward", "#d08770")):
        rs = [r for r in quant_error["parts"] if r["component"] == comp]
        fig.add_trace(go.Bar(x=[f"L{r['layer']}" for r in rs], y=[max(r["mse"], 1e-12) for r in rs], name=comp,
                             marker_color=color,
                             marker_line=dict(width=[3 if (r["layer"], comp) in worst else 0 for r in rs],
                                              color="#000"),
                             customdata=[[r["scheme"], r["added"]] for r in rs],
                             hovertemplate="%{x} " + comp + " (%{customdata[0]}): MSE %{y:.3g}, adds "
                                           "%{customdata[1]:.3g}<extra></extra>"))
    fig.update_layout(title="Quantization error at each part's output (MSE vs float; outlined: proposed for fp16)",
                      yaxis_type="log", yaxis_exponentformat="power", barmode="group", height=330,
                      template="plotly_white", margin=dict(l=60, r=10, t=40, b=30))
    return fig
