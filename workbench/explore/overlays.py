"""Numbers on the graphs: Model Explorer node data (overlays) and sync-navigation mappings.

    ov = overlays.compare_overlay(graphs, comparison, tensor_names, folder)  # or Explorer.overlay("compare")
    ov.files        # graph name -> node-data file (Model Explorer's node_data_builder JSON)
    ov.legend_html()

Overlays are Model Explorer node-data files (`results` per node id with a numeric `value`,
`thresholds` or a `gradient` for colours, and a result's own `bgColor` where its colour says
something the value cannot), one per graph, named in the page's `data` parameter
(`nodeData`, and `nodeDataTargets` by model label):

- compare (original and re-authored graphs): every op of decoder layer i gets layer i's
  largest error in a comparison (max |re-authored - original| over its capture points); the
  embedding, final norm and LM head get theirs. Green within the tolerance, red the first
  divergent part, orange what comes after it (its error is carried forward).
- quant (converted graph): the weights each op reads, as bits (the value) and a colour per
  scheme (int4, int8 dynamic-range, int8 dequantized, fp16, fp32).
- quant_error (converted graph, its `decode` signature): ai-edge-quantizer's MSE of each
  op's output, float vs quantized, from the conversion's manifest; a colour per decade.
- sizes (converted graph): bytes of the constant tensors each op reads.
- timing: not available here (TIMING_UNAVAILABLE says why).

Sync mappings are Model Explorer's `{"mappingEntries": [{"leftNodeIds", "rightNodeIds"}]}`:
original <-> re-authored from the weight mapping (the ops reading each checkpoint tensor
and the litert-torch parameter it fills, their modules, every decoder layer's group), and
re-authored <-> converted from the module namespaces both share. Model Explorer's Flask app
loads such a file only through its sync menu ("Upload mapping"); the two PyTorch graphs
also sync with no file, by node id (see `workbench.explore.graphs`).

A converted model's node index (ids, namespaces, tensors, constants) comes from Model
Explorer's own flatbuffer adapter, run once per file in a child process
(`python -m workbench.explore.overlays tflite-index MODEL OUT`) and kept beside the overlays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from workbench._io import atomic_write_json, digest
from workbench.errors import WorkbenchError

OVERLAY_VERSION = 2  # bump when a file's content changes for the same inputs
OVERLAYS = {
    "compare": "per-layer error of the comparison",
    "quant": "quantization scheme per op",
    "quant_error": "quantization error per op",
    "sizes": "weight bytes per op",
    "timing": "time per op",
}
APPLIES_TO = {"compare": ("original", "reauthored"), "quant": ("tflite",), "quant_error": ("tflite",),
              "sizes": ("tflite",), "timing": ("tflite",)}
TIMING_UNAVAILABLE = (
    "per-op timing is not available: litert-torch's converter times only its stages, and ai-edge-litert's "
    "Python interpreter has no op profiler (its profiling messages ship without anything that fills them)")
KEEP = 12  # overlay and sync folders kept (the newest)
BIG = 1.7976931348623157e308  # the last threshold: every larger value would get no colour

GREEN, RED, ORANGE = "#66bb6a", "#e53935", "#ffa726"
SCHEME_COLORS = {  # (label, bits, colour) by scheme key
    "int4": ("int4 weights", 4, "#8e24aa"),
    "int8_dynamic": ("int8 weights, dynamic-range op", 8, "#1e88e5"),
    "int8": ("int8 weights", 8, "#4fc3f7"),
    "int8_dequant": ("int8 weights, dequantized to float (weight-only)", 8, "#26a69a"),
    "fp16": ("fp16 weights, dequantized to float", 16, "#fdd835"),
    "fp32": ("fp32 weights (not quantized)", 32, "#ff7043"),
}
DECADE_COLORS = ["#43a047", "#9ccc65", "#ffee58", "#ffa726", "#e53935", "#8e0000"]
SIZE_GRADIENT = [{"stop": 0, "bgColor": "#e3f2fd"}, {"stop": 1, "bgColor": "#0d47a1", "textColor": "#ffffff"}]
_DTYPE_BITS = {"float32": 32, "float16": 16, "bfloat16": 16, "int8": 8, "uint8": 8, "int4": 4, "int16": 16,
               "float64": 64}
_WEIGHT_MIN_ELEMENTS = 64  # smaller float constants are scalars and masks, not weights
_DYNAMIC_OPS = {"fully_connected", "batch_matmul", "conv_2d", "depthwise_conv_2d"}
_NOT_OPS = {"pseudo_const", "GraphInputs", "GraphOutputs"}


class OverlayError(WorkbenchError):
    """An overlay that cannot be made from what there is."""


@dataclasses.dataclass(frozen=True)
class LegendItem:
    color: str
    label: str


@dataclasses.dataclass(frozen=True)
class Overlay:
    """Node-data files for the graphs an overlay colours, and how to read the colours."""

    name: str  # compare | quant | quant_error | sizes
    title: str
    files: dict[str, Path]  # graph name -> node-data file
    labels: dict[str, str]  # graph name -> the model label the file targets (nodeDataTargets)
    legend: tuple[LegendItem, ...]
    notes: tuple[str, ...] = ()
    graph_ids: dict[str, str] = dataclasses.field(default_factory=dict)  # graph to open (tflite: decode)
    colored: dict[str, int] = dataclasses.field(default_factory=dict)  # graph name -> nodes with a value
    expand: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # graph name -> groups to open

    def to_json(self) -> dict:
        return {"name": self.name, "title": self.title, "files": {k: str(v) for k, v in self.files.items()},
                "labels": self.labels, "legend": [dataclasses.asdict(i) for i in self.legend],
                "notes": list(self.notes), "graph_ids": self.graph_ids, "colored": self.colored,
                "expand": self.expand}

    def legend_html(self) -> str:
        rows = "".join(f"<div style='display:flex;align-items:center;gap:6px;margin:2px 0'>"
                       f"<span class='ewb-legend-swatch' style='display:inline-block;width:14px;height:14px;"
                       f"flex:none;border:1px solid #999;background:{html.escape(i.color)}'></span>"
                       f"<span>{html.escape(i.label)}</span></div>" for i in self.legend)
        notes = "".join(f"<div style='color:#555;margin-top:4px'>{html.escape(n)}</div>" for n in self.notes)
        return (f"<div class='ewb-explore-legend-overlay' data-overlay='{html.escape(self.name)}'>"
                f"<b>{html.escape(self.title)}</b>{rows}{notes}</div>")


# ---- small helpers -------------------------------------------------------------------


def file_identity(path: Path) -> dict:
    """A file's identity without reading all of it (a converted model can be gigabytes):
    path, size, mtime and the hash of its first and last 64 KiB."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(65536))
        if st.st_size > 65536:
            f.seek(max(65536, st.st_size - 65536))
            h.update(f.read(65536))
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha": h.hexdigest()[:16]}


def _atomic_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj, OverlayError, compact=True)


def _prune(folder: Path, keep: int = KEEP) -> None:
    dirs = sorted((d for d in folder.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True) \
        if folder.is_dir() else []
    for d in dirs[keep:]:
        shutil.rmtree(d, ignore_errors=True)


def _fmt(x: float) -> str:
    return f"{x:.2g}" if x else "0"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def graph_node_data(name: str, results: dict[str, dict], *, thresholds: Sequence[dict] = (),
                    gradient: Sequence[dict] = ()) -> dict:
    """One graph's node data exactly as `node_data_builder.GraphNodeData.to_json_string()`
    writes it (every field; unset options at their defaults)."""
    return {"results": results, "name": name, "thresholds": list(thresholds), "gradient": list(gradient),
            "hideInAggregatedStatsTable": False, "hideInChildrenStatsTable": False,
            "showExpandedSummaryOnGroupNode": False, "showLabelCountColumnsInChildrenStatsTable": False}


# ---- node indexes ----------------------------------------------------------------------
def pt_nodes(graph) -> list[dict]:
    """The node index of an exported PyTorch graph (`<name>.nodes.json`)."""
    f = graph.nodes_file
    if f is None:
        raise OverlayError(f"the {graph.name} graph has no node index", hint="refresh the explorer (ex.export())")
    try:
        nodes = json.loads(f.read_text())["nodes"]
    except (OSError, ValueError, KeyError) as e:
        raise OverlayError(f"cannot read {f}: {e}", hint="re-export it: ex.export(force=True)") from None
    if not any("stack" in n for n in nodes):
        raise OverlayError(f"{f} was written by an older export (no module stacks)",
                           hint="re-export it: ex.export(force=True)")
    return nodes


def tflite_index(path: Path, folder: Path, timeout: float = 600) -> dict:
    """The node index of a converted model as Model Explorer's flatbuffer adapter sees it
    (computed once per file, in a child process, and kept under `folder`)."""
    ident = file_identity(path)
    out = folder / digest({**ident, "v": OVERLAY_VERSION}) / "tflite.nodes.json"
    if out.is_file():
        try:
            return json.loads(out.read_text())
        except ValueError:
            pass
    proc = subprocess.run([sys.executable, "-m", "workbench.explore.overlays", "tflite-index", str(path), str(out)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode != 0 or not out.is_file():
        # its reason is the exception's last line ("RuntimeError: INVALID_ARGUMENT: ..."), not the traceback
        last = ((proc.stderr or "").strip().splitlines() or ["no reason given"])[-1]
        reason = last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith(("Error", "Exception")) else last
        raise OverlayError(f"Model Explorer's adapter could not read {path.name}: {reason}",
                           hint="check that the file opens in ai-edge-litert; convert it again if it does not")
    _prune(folder)
    return json.loads(out.read_text())


def _index_from_adapter(path: str) -> dict:
    """(In the child) Model Explorer's adapter output, cut down to what overlays need."""
    import ai_edge_model_explorer_adapter as adapter

    config = adapter.VisualizeConfig()
    config.const_element_count_limit = 0
    collections = json.loads(adapter.ConvertFlatbufferDirectlyToJson(config, path))
    graphs = {}
    order = []
    for coll in collections:
        for sg in coll.get("subgraphs") or coll.get("graphs") or []:
            nodes = []
            for n in sg["nodes"]:
                outs = []
                for md in n.get("outputsMetadata") or []:
                    attrs = {a["key"]: a["value"] for a in md.get("attrs", [])}
                    outs.append({"tensor": attrs.get("tensor_name", ""), "shape": attrs.get("tensor_shape", "")})
                quant = {}
                for md in n.get("inputsMetadata") or []:
                    attrs = {a["key"]: a["value"] for a in md.get("attrs", [])}
                    if "quantization" in attrs:
                        quant[md["id"]] = attrs["quantization"][:80]
                ins = [{"source": e["sourceNodeId"], "output": e.get("sourceNodeOutputId", "0"),
                        "input": e.get("targetNodeInputId", "")} for e in n.get("incomingEdges") or []]
                nodes.append({"id": n["id"], "label": n["label"], "namespace": n.get("namespace", ""),
                              "outputs": outs, "inputs": ins, "quant": quant})
            graphs[sg["id"]] = {"nodes": nodes}
            order.append(sg["id"])
    return {"kind": "edge-workbench/tflite-nodes", "graphs": graphs, "order": order}


def signature_graphs(index: dict) -> list[str]:
    """The graphs of a converted model that are its signatures (prefill_N, decode), not the
    decompositions of its composite ops (odml.rms_norm.impl, ...)."""
    return [g for g in index["order"] if not g.startswith("odml.") and "." not in g]


def layers_group(nodes: Sequence[dict]) -> list[str]:
    """The group holding a converted graph's decoder layers (`.../DecoderOnlyModel_module`),
    as Model Explorer's group id: a pane opens it so the layers and their colours show."""
    for n in nodes:
        parts = (n.get("namespace") or "").split("/")
        for i, part in enumerate(parts):
            if i and re.search(r"_\d+$", part):
                return ["/".join(parts[:i]) + "___group___"]
    return []


# ---- compare: per-layer error on the PyTorch graphs -------------------------------------
_LAYER_PATH = re.compile(r"(?:^|\.)(\d+)$")


def node_layer(stack: Sequence[str]) -> Optional[int]:
    """The decoder layer an op belongs to: the outermost module whose path ends in an index
    (`model.layers.3`, `transformer_blocks.3`, `transformer.h.3`)."""
    for path in stack:
        m = _LAYER_PATH.search(path)
        if m:
            return int(m.group(1))
    return None


MODEL_PARTS = {  # part -> (the original's TensorNames key, the re-authored module)
    "embedding": ("embedding", "tok_embedding"),
    "final_norm": ("final_norm", "final_norm"),
    "logits": ("lm_head", "lm_head"),
}


def part_modules(graph_name: str, tensor_names: dict[str, Optional[str]]) -> dict[str, str]:
    """Module paths of the embedding, final norm and LM head in one PyTorch graph."""
    out = {}
    for part, (key, ours) in MODEL_PARTS.items():
        if graph_name == "reauthored":
            out[part] = ours
        else:
            pat = tensor_names.get(key) or ("lm_head" if key == "lm_head" else None)
            if pat:
                out[part] = pat[:-len(".weight")] if pat.endswith(".weight") else pat
    return out


@dataclasses.dataclass(frozen=True)
class LayerErrors:
    """A comparison read per part: each decoder layer's largest error, the model-level
    parts', and where it first diverged."""

    layers: dict[int, float]
    parts: dict[str, float]  # embedding, final_norm, logits
    tol: float
    first: Optional[tuple[str, Optional[int], str, float, str]]  # (name, layer, point, value, hint)

    @classmethod
    def of(cls, comparison) -> "LayerErrors":
        layers: dict[int, float] = {}
        parts: dict[str, float] = {}
        for r in comparison.records:
            v = r.max_abs_diff if math.isfinite(r.max_abs_diff) else BIG
            if r.layer is not None:
                layers[r.layer] = max(layers.get(r.layer, 0.0), v)
            elif r.point in MODEL_PARTS:
                parts[r.point] = max(parts.get(r.point, 0.0), v)
        d = comparison.first_divergence()
        first = (d.name, d.layer, d.point, d.max_abs_diff, d.hint) if d else None
        return cls(layers, parts, comparison.tol, first)

    def _order(self, part: str, layer: Optional[int]) -> float:
        """Forward position: embedding, layers, final norm, logits."""
        if layer is not None:
            return 1 + layer
        return {"embedding": 0, "final_norm": 1e6, "logits": 1e6 + 1}[part]

    def status(self, part: str, layer: Optional[int]) -> str:
        """ok | first | after (downstream of the first divergence)."""
        if self.first is None:
            return "ok"
        _, flayer, fpoint, _, _ = self.first
        first_pos = self._order(fpoint if flayer is None else "", flayer)
        pos = self._order(part, layer)
        if pos == first_pos:
            return "first"
        return "after" if pos > first_pos else "ok"


def compare_results(nodes: Sequence[dict], errors: LayerErrors, parts: dict[str, str]) -> dict[str, dict]:
    """node id -> result for every op of a layer or model part the comparison measured."""
    colors = {"first": RED, "after": ORANGE}
    out = {}
    for n in nodes:
        stack = n.get("stack")
        if not stack:
            continue
        layer, part = node_layer(stack), ""
        if layer is not None:
            if layer not in errors.layers:
                continue
            value = errors.layers[layer]
        else:
            part = next((p for p, module in parts.items() if module in stack), "")
            if part not in errors.parts:
                continue
            value = errors.parts[part]
        status = errors.status(part, layer)
        res: dict[str, Any] = {"value": value}
        if status in colors:
            res["bgColor"] = colors[status]
            if status == "first":
                res["textColor"] = "#ffffff"
        out[n["id"]] = res
    return out


def compare_overlay(graphs: dict, comparison, comparison_name: str, tensor_names: dict, folder: Path) -> Overlay:
    """The per-layer error of `comparison` on the original and re-authored graphs shown."""
    errors = LayerErrors.of(comparison)
    targets = {n: g for n, g in graphs.items() if n in APPLIES_TO["compare"] and g.ok}
    if not targets:
        raise OverlayError("the per-layer error colours the original and re-authored graphs: neither is shown",
                           hint="show 'original' or 'reauthored' with it")
    key = digest({"overlay": "compare", "v": OVERLAY_VERSION, "graphs": {n: g.key for n, g in targets.items()},
                 "comparison": comparison.to_json(), "names": tensor_names})
    files, labels, colored, expand = {}, {}, {}, {}
    title = f"max |re-authored − original| per layer (comparison {comparison_name})"
    for name, g in targets.items():
        nodes = pt_nodes(g)
        results = compare_results(nodes, errors, part_modules(name, tensor_names))
        if errors.first is not None and errors.first[1] is not None:
            group = _layer_groups(nodes).get(errors.first[1])
            if group:
                expand[name] = [group]  # the red layer opens, its ops coloured
        data = graph_node_data(title, results, thresholds=[{"value": errors.tol, "bgColor": GREEN},
                                                           {"value": BIG, "bgColor": ORANGE}])
        path = folder / key / f"compare.{name}.json"
        if not path.is_file():
            _atomic_json(path, data)
        files[name], labels[name], colored[name] = path, g.label, len(results)
    _prune(folder)
    legend = [LegendItem(GREEN, f"within the tolerance ({errors.tol:g})")]
    notes = []
    if errors.first is not None:
        name, layer, point, value, hint = errors.first
        where = f"layer {layer} ({point})" if layer is not None else point
        legend.append(LegendItem(RED, f"first divergence: {where}, max |Δ| {_fmt(value)}"))
        legend.append(LegendItem(ORANGE, "after it (its error is carried forward)"))
        notes.append(f"check {hint}")
    else:
        notes.append("no layer diverges")
    per_layer = ", ".join(f"L{i} {_fmt(v)}" for i, v in sorted(errors.layers.items()))
    notes.append(f"per layer: {per_layer}")
    return Overlay("compare", title, files, labels, tuple(legend), tuple(notes), colored=colored, expand=expand)


# ---- converted model: schemes, sizes, quantization error ---------------------------------
def _dtype_shape(shape: str) -> tuple[str, int]:
    """'int8[128,64]' -> ('int8', 8192); 'float32' -> ('float32', 1)."""
    m = re.match(r"^([a-z0-9]+)(?:\[([^\]]*)\])?$", shape.strip())
    if not m:
        return "", 0
    dims = [d for d in (m.group(2) or "").split(",") if d.strip()]
    n = 1
    for d in dims:
        try:
            n *= max(int(d), 0)
        except ValueError:
            return m.group(1), 0
    return m.group(1), n


def _weights(node: dict, by_id: dict) -> list[tuple[str, int]]:
    """(dtype, elements) of each constant weight an op reads directly."""
    out = []
    for e in node["inputs"]:
        src = by_id.get(e["source"])
        if src is None or src["label"] != "pseudo_const" or not src["outputs"]:
            continue
        dtype, n = _dtype_shape(src["outputs"][0]["shape"])
        if dtype in _DTYPE_BITS and n >= _WEIGHT_MIN_ELEMENTS and not dtype.startswith("int3"):
            out.append((dtype, n))
    return out


def op_schemes(nodes: Sequence[dict]) -> dict[str, str]:
    """node id -> scheme key (SCHEME_COLORS) for every op that reads a weight."""
    by_id = {n["id"]: n for n in nodes}
    users: dict[str, list[dict]] = {}
    for n in nodes:
        for e in n["inputs"]:
            users.setdefault(e["source"], []).append(n)
    out = {}
    for n in nodes:
        if n["label"] in _NOT_OPS:
            continue
        ws = _weights(n, by_id)
        if not ws:
            continue
        dtype = min((w[0] for w in ws), key=lambda d: _DTYPE_BITS[d])  # the narrowest says the scheme
        if n["label"] == "dequantize":
            key = "fp16" if dtype in ("float16", "bfloat16") else ("int8_dequant" if dtype in ("int8", "uint8")
                                                                    else "int4" if dtype == "int4" else "fp32")
            out[n["id"]] = key
            for u in users.get(n["id"], []):  # the op computing with the dequantized weight
                if u["label"] not in _NOT_OPS:
                    out.setdefault(u["id"], key)
            continue
        if dtype == "int4":
            out[n["id"]] = "int4"
        elif dtype in ("int8", "uint8"):
            out[n["id"]] = "int8_dynamic" if n["label"] in _DYNAMIC_OPS else "int8"
        elif dtype in ("float16", "bfloat16"):
            out[n["id"]] = "fp16"
        else:
            out[n["id"]] = "fp32"
    return out


def op_weight_bytes(nodes: Sequence[dict]) -> dict[str, int]:
    """node id -> bytes of the constant weights the op reads directly."""
    by_id = {n["id"]: n for n in nodes}
    out = {}
    for n in nodes:
        if n["label"] in _NOT_OPS:
            continue
        total = sum(math.ceil(k * _DTYPE_BITS[d] / 8) for d, k in _weights(n, by_id))
        if total:
            out[n["id"]] = total
    return out


def _tflite_expand(tflite, index: dict) -> dict[str, list[str]]:
    gid = tflite.graph_id if tflite.graph_id in index["graphs"] else (signature_graphs(index) or [""])[0]
    return {"tflite": layers_group(index["graphs"][gid]["nodes"])} if gid else {}


def quant_overlay(tflite, index: dict, folder: Path) -> Overlay:
    graphs = signature_graphs(index)
    key = digest({"overlay": "quant", "v": OVERLAY_VERSION, "tflite": file_identity(tflite.path)})
    data, colored, seen = {}, 0, set()
    for gid in graphs:
        schemes = op_schemes(index["graphs"][gid]["nodes"])
        results = {i: {"value": SCHEME_COLORS[k][1], "bgColor": SCHEME_COLORS[k][2]} for i, k in schemes.items()}
        data[gid] = graph_node_data("weight bits per op (colour: scheme)", results)
        colored = max(colored, len(results))
        seen.update(schemes.values())
    path = folder / key / "quant.tflite.json"
    if not path.is_file():
        _atomic_json(path, data)
    _prune(folder)
    legend = tuple(LegendItem(SCHEME_COLORS[k][2], SCHEME_COLORS[k][0]) for k in SCHEME_COLORS if k in seen)
    notes = ("the value is the weights' bits; ops that read no weight are not coloured",)
    return Overlay("quant", "quantization scheme per op", {"tflite": path}, {"tflite": tflite.label}, legend,
                   notes, colored={"tflite": colored}, expand=_tflite_expand(tflite, index))


def sizes_overlay(tflite, index: dict, folder: Path) -> Overlay:
    graphs = signature_graphs(index)
    key = digest({"overlay": "sizes", "v": OVERLAY_VERSION, "tflite": file_identity(tflite.path)})
    data, lo, hi, colored, total = {}, None, 0, 0, 0
    for gid in graphs:
        sizes = op_weight_bytes(index["graphs"][gid]["nodes"])
        data[gid] = graph_node_data("weight bytes per op", {i: {"value": v} for i, v in sizes.items()},
                                    gradient=SIZE_GRADIENT)
        if sizes:
            lo = min(sizes.values()) if lo is None else min(lo, min(sizes.values()))
            hi = max(hi, max(sizes.values()))
        colored = max(colored, len(sizes))
        if gid.startswith("prefill") or not total:
            total = max(total, sum(sizes.values()))
    path = folder / key / "sizes.tflite.json"
    if not path.is_file():
        _atomic_json(path, data)
    _prune(folder)
    legend = (LegendItem(SIZE_GRADIENT[0]["bgColor"], f"smallest: {_bytes(lo or 0)}"),
              LegendItem(SIZE_GRADIENT[1]["bgColor"], f"largest: {_bytes(hi)}"))
    notes = ("the constant tensors (weights, tables) each op reads, at their stored precision",)
    return Overlay("sizes", "weight bytes per op", {"tflite": path}, {"tflite": tflite.label}, legend, notes,
                   colored={"tflite": colored}, expand=_tflite_expand(tflite, index))


def _decades(values: Iterable[float]) -> list[float]:
    vals = [v for v in values if v > 0 and math.isfinite(v)]
    if not vals:
        return [1e-12]
    lo, hi = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
    hi = max(hi, lo + 1)
    edges = [10.0 ** e for e in range(lo + 1, hi + 1)]
    while len(edges) > len(DECADE_COLORS):  # merge the lowest decades
        edges.pop(0)
    return edges


def quant_error_overlay(tflite, index: dict, manifest: Optional[dict], folder: Path) -> Overlay:
    qe = (manifest or {}).get("quant_error")
    if not qe:
        why = ("its recipe quantizes nothing" if (manifest or {}).get("recipe") in ("none", {"default": "none"})
               else "this conversion did not measure it (sweeps skip it; a model of 300M parameters or more "
                    "skips it unless analyze=True)")
        raise OverlayError(f"{tflite.label} has no per-op quantization error: {why}",
                           hint="convert a quantized recipe with wb.convert(...) (analyze=True for a large model)")
    tensors: dict[str, float] = qe.get("tensors") or {t["name"]: t["mse"] for t in qe.get("top_tensors", [])}
    notes = [f"ai-edge-quantizer's validate: MSE of each op's output, float vs quantized, on the "
             f"{qe.get('signature', 'decode')} signature"]
    if not qe.get("tensors"):
        notes.append(f"this conversion recorded only its {len(tensors)} worst tensors: convert it again for every op")
    gid = qe.get("signature", "decode")
    if gid not in index["graphs"]:
        raise OverlayError(f"{tflite.label} has no {gid} graph, where the error was measured",
                           hint="convert again: the manifest and the file disagree")
    results = {}
    for n in index["graphs"][gid]["nodes"]:
        if n["label"] in _NOT_OPS:
            continue
        vals = [tensors[o["tensor"]] for o in n["outputs"] if o["tensor"] in tensors]
        vals = [v if math.isfinite(v) else BIG for v in vals]
        if vals:
            results[n["id"]] = {"value": max(vals)}
    edges = _decades(r["value"] for r in results.values())
    colors = DECADE_COLORS[-len(edges):] if len(edges) < len(DECADE_COLORS) else DECADE_COLORS
    thresholds = [{"value": e, "bgColor": c} for e, c in zip(edges, colors)]
    thresholds[-1]["value"] = BIG
    if len(thresholds) > 1:
        thresholds[-1]["textColor"] = "#ffffff"
    key = digest({"overlay": "quant_error", "v": OVERLAY_VERSION, "tflite": file_identity(tflite.path),
                 "qe": digest(tensors)})
    path = folder / key / "quant_error.tflite.json"
    if not path.is_file():
        _atomic_json(path, {gid: graph_node_data("quantization MSE per op", results, thresholds=thresholds)})
    _prune(folder)
    legend, lower = [], 0.0
    for t, e in zip(thresholds, edges):
        upper = e
        label = (f"MSE ≤ {upper:.0e}" if lower == 0 else
                 f"{lower:.0e} < MSE ≤ {upper:.0e}" if t is not thresholds[-1] else f"MSE > {lower:.0e}")
        legend.append(LegendItem(t["bgColor"], label))
        lower = upper
    worst = qe.get("worst") or []
    if worst:
        notes.append("adds the most: " + ", ".join(f"layer {w['layer']} {w['component']}" for w in worst))
    return Overlay("quant_error", "quantization error per op", {"tflite": path}, {"tflite": tflite.label},
                   tuple(legend), tuple(notes), graph_ids={"tflite": gid}, colored={"tflite": len(results)},
                   expand={"tflite": layers_group(index["graphs"][gid]["nodes"])})


# ---- sync-navigation mappings -----------------------------------------------------------
def _group_id(namespace: str, stack: Sequence[str], module: str) -> Optional[str]:
    """Model Explorer's id of the group node drawn for `module` (its namespace + ___group___)."""
    parts = namespace.split("/")
    if len(parts) != len(stack) or module not in stack:
        return None
    k = list(stack).index(module)
    return "/".join(parts[:k + 1]) + "___group___"


class _Entries:
    """Mapping entries where a node id is on one entry per side at most."""

    def __init__(self) -> None:
        self.entries: list[dict] = []
        self.left: set[str] = set()
        self.right: set[str] = set()

    def add(self, left: Sequence[str], right: Sequence[str]) -> bool:
        left = [i for i in dict.fromkeys(left) if i not in self.left]
        right = [i for i in dict.fromkeys(right) if i not in self.right]
        if not left or not right:
            return False
        self.entries.append({"leftNodeIds": left, "rightNodeIds": right})
        self.left.update(left)
        self.right.update(right)
        return True


def _layer_groups(nodes: Sequence[dict]) -> dict[int, str]:
    """decoder layer -> the id of its group node."""
    out: dict[int, str] = {}
    for n in nodes:
        stack = n.get("stack") or []
        for path in stack:
            m = _LAYER_PATH.search(path)
            if m:
                gid = _group_id(n["namespace"], stack, path)
                if gid:
                    out.setdefault(int(m.group(1)), gid)
                break
    return out


def pytorch_sync(original: Sequence[dict], reauthored: Sequence[dict], rows: Sequence[tuple[str, list[str]]],
                 original_left: bool = True) -> dict:
    """Original <-> re-authored: every decoder layer's group; for each mapped parameter, the
    ops reading the checkpoint tensors and the op reading the parameter they fill; then the
    modules holding them, outward to the layer. `rows`: (litert-torch parameter, checkpoint
    tensors) from the mapping."""
    def readers(nodes):
        out: dict[str, list[dict]] = {}
        for n in nodes:
            for p in n.get("params", []):
                out.setdefault(p, []).append(n)
        return out

    o_read, r_read = readers(original), readers(reauthored)
    e = _Entries()
    pairs = []
    o_layers, r_layers = _layer_groups(original), _layer_groups(reauthored)
    for i in sorted(set(o_layers) & set(r_layers)):
        pairs.append(([o_layers[i]], [r_layers[i]]))
    modules = []
    for target, sources in rows:
        lo = [n for s in sources for n in o_read.get(s, [])]
        ro = r_read.get(target, [])
        if not lo or not ro:
            continue
        if len(sources) == 1 and len(lo) == len(ro):
            pairs += [([a["id"]], [b["id"]]) for a, b in zip(lo, ro)]
        else:
            pairs.append(([n["id"] for n in lo], [n["id"] for n in ro]))
        modules.append((lo[0], ro[0]))
    for a, b in modules:  # the modules around them, innermost first, while both sides have one
        sa, sb = a.get("stack") or [], b.get("stack") or []
        for ma, mb in zip(reversed(sa), reversed(sb)):
            if not ma or not mb:
                break
            ga, gb = _group_id(a["namespace"], sa, ma), _group_id(b["namespace"], sb, mb)
            if ga and gb:
                pairs.append(([ga], [gb]))
            if _LAYER_PATH.search(ma) or _LAYER_PATH.search(mb):
                break
    for left, right in pairs:
        e.add(left, right) if original_left else e.add(right, left)
    return {"mappingEntries": e.entries}


def tflite_sync(reauthored: Sequence[dict], tflite_nodes: Sequence[dict], reauthored_left: bool = True) -> dict:
    """Re-authored <-> converted: the ops of each module namespace both graphs share (the
    converted graph's namespaces are the re-authored ones under litert-torch's export wrapper),
    and the group nodes of those namespaces."""
    r_ns: dict[str, list[str]] = {}
    for n in reauthored:
        if n.get("stack"):
            r_ns.setdefault(n["namespace"], []).append(n["id"])
    t_ns: dict[str, list[str]] = {}
    prefix = ""
    for n in tflite_nodes:
        if n["label"] in _NOT_OPS or "/" not in n["namespace"]:
            continue
        head, rest = n["namespace"].split("/", 1)
        if rest in r_ns:
            prefix = prefix or head
            t_ns.setdefault(rest, []).append(n["id"])
    e = _Entries()
    pairs = []
    groups = set()
    for ns in t_ns:
        parts = ns.split("/")
        groups.update("/".join(parts[:k]) for k in range(1, len(parts) + 1))
    for g in sorted(groups, key=lambda s: (s.count("/"), s)):
        pairs.append(([f"{g}___group___"], [f"{prefix}/{g}___group___"]))
    for ns, ids in t_ns.items():
        pairs.append((r_ns[ns], ids))
    for left, right in pairs:
        e.add(left, right) if reauthored_left else e.add(right, left)
    return {"mappingEntries": e.entries}


def write_sync(folder: Path, key_inputs: dict, filename: str, mapping: dict) -> Path:
    path = folder / digest({**key_inputs, "v": OVERLAY_VERSION}) / filename
    if not path.is_file():
        _atomic_json(path, mapping)
    _prune(folder)
    return path


# ---- the child: Model Explorer's adapter on a .tflite -------------------------------------
def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "tflite-index":
        print("usage: python -m workbench.explore.overlays tflite-index MODEL.tflite OUT.json", file=sys.stderr)
        return 2
    index = _index_from_adapter(args[1])
    _atomic_json(Path(args[2]), index)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["OVERLAYS", "APPLIES_TO", "TIMING_UNAVAILABLE", "Overlay", "OverlayError", "LegendItem",
           "compare_overlay", "quant_overlay", "sizes_overlay", "quant_error_overlay", "pytorch_sync", "tflite_sync",
           "tflite_index", "signature_graphs", "op_schemes", "op_weight_bytes", "node_layer", "LayerErrors"]
