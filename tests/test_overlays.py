"""Numbers on the graphs (#14): node-data overlays checked against Model Explorer's own
node_data_builder types and node ids, a planted fault coloured at its layer on both graphs,
sync mappings that pair every decoder layer, shared node ids for "match node id", the
quantization overlays of a mixed int8/int4 conversion, and re-colouring that never touches
the export cache."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from conftest import copy_project
from workbench.explore import overlays as ovl
from workbench.explore import Explorer, ExploreError
from workbench.explore.overlays import OverlayError


# ---- Model Explorer's types ---------------------------------------------------------------
def _as_me_types(data: dict):
    """A GraphNodeData built from the file with Model Explorer's own dataclasses; raises
    when a field is unknown or a value has the wrong type; equal JSON when written back."""
    from model_explorer import node_data_builder as ndb

    fields = {f.name for f in dataclasses.fields(ndb.GraphNodeData)}
    assert set(data) <= fields, set(data) - fields
    results = {}
    for k, r in data["results"].items():
        assert isinstance(k, str) and set(r) <= {"value", "bgColor", "textColor"}
        assert isinstance(r["value"], (int, float)) and not isinstance(r["value"], bool)
        assert all(isinstance(r[c], str) and r[c].startswith("#") for c in ("bgColor", "textColor") if c in r)
        results[k] = ndb.NodeDataResult(**r)
    thresholds = [ndb.ThresholdItem(**t) for t in data.get("thresholds", [])]
    gradient = [ndb.GradientItem(**g) for g in data.get("gradient", [])]
    for t in thresholds:
        assert isinstance(t.value, (int, float)) and t.bgColor.startswith("#")
    if gradient:
        assert [g.stop for g in gradient][0] == 0 and gradient[-1].stop == 1
    options = {k: v for k, v in data.items() if k not in ("results", "name", "thresholds", "gradient")}
    built = ndb.GraphNodeData(results=results, name=data.get("name"), thresholds=thresholds, gradient=gradient,
                              **options)
    assert json.loads(built.to_json_string()) == data  # what Model Explorer's builder writes, exactly
    return built


def _pt_ids(graph) -> set[str]:
    return {n["id"] for n in json.loads(graph.nodes_file.read_text())["nodes"]}


def test_node_data_files_are_model_explorers_types(explored, quantized, faulty):
    from model_explorer import node_data_builder as ndb

    root, ex, graphs = explored
    ov = ex.overlay("compare", ["original", "reauthored"], comparison=faulty)
    assert set(ov.files) == {"original", "reauthored"}
    for name, f in ov.files.items():
        assert ex.data_dir in f.parents and f.parent.parent == ex.overlays_dir
        data = json.loads(f.read_text())
        _as_me_types(data)
        assert set(data["results"]) <= _pt_ids(graphs[name])  # Model Explorer's node ids (fx names)
        assert ov.labels[name] == graphs[name].label and ov.colored[name] == len(data["results"]) > 100
    qroot, qex, qgraphs, _ = quantized
    index = ovl.tflite_index(qgraphs["tflite"].path, qex.data_dir / "tflite")
    for name in ("quant", "sizes", "quant_error"):
        ov = qex.overlay(name, ["tflite"], export=False)
        data = json.loads(ov.files["tflite"].read_text())
        model = ndb.ModelNodeData(graphsData={gid: _as_me_types(d) for gid, d in data.items()})
        assert json.loads(model.to_json_string()) == data
        for gid, d in data.items():
            ids = {n["id"] for n in index["graphs"][gid]["nodes"]}
            assert d["results"] and set(d["results"]) <= ids, (name, gid)
        assert ov.labels == {"tflite": qgraphs["tflite"].label} and ov.legend


def test_the_index_is_model_explorers_own(quantized):
    """The converted model's node ids, labels and namespaces are what the server's adapter
    gives the page."""
    _, ex, graphs, _ = quantized
    g = graphs["tflite"]
    index = ovl.tflite_index(g.path, ex.data_dir / "tflite")
    assert ovl.signature_graphs(index) == ["prefill_8", "decode"]
    ex._ensure_server()
    ex.server.wait()
    body = json.dumps({"extensionId": g.adapter, "cmdId": "convert", "modelPath": str(g.path),
                       "settings": {"const_element_count_limit": 16}, "deleteAfterConversion": False}).encode()
    status, text = ex.server.request("/apipost/v1/send_command", body, {"Content-Type": "application/json"},
                                     timeout=120)
    assert status == 200, text
    served = {sg["id"]: sg for c in json.loads(text)["graphCollections"] for sg in c["graphs"]}
    for gid in ("prefill_8", "decode"):
        assert [(n["id"], n["label"], n["namespace"]) for n in served[gid]["nodes"]] == [
            (n["id"], n["label"], n["namespace"]) for n in index["graphs"][gid]["nodes"]]


# ---- the comparison overlay -----------------------------------------------------------------
def test_a_planted_fault_is_red_at_its_layer_on_both_graphs(explored, faulty):
    _, ex, graphs = explored
    ov = ex.overlay("compare", ["original", "reauthored"], comparison=faulty)
    layer_names = {"original": "LlamaDecoderLayer_", "reauthored": "TransformerBlock_"}
    for name in ("original", "reauthored"):
        nodes = {n["id"]: n for n in json.loads(graphs[name].nodes_file.read_text())["nodes"]}
        results = json.loads(ov.files[name].read_text())["results"]
        by_layer: dict = {}
        for nid, r in results.items():
            by_layer.setdefault(ovl.node_layer(nodes[nid]["stack"]), []).append(r)
        assert set(by_layer) >= {0, 1, 2}
        red = [nid for nid, r in results.items() if r.get("bgColor") == ovl.RED]
        # every op of layer 1, and nothing else, is red; the namespace says so too
        assert red and {ovl.node_layer(nodes[i]["stack"]) for i in red} == {1}
        assert len(red) == len(by_layer[1]) > 20
        assert all(f"{layer_names[name]}1/" in nodes[i]["namespace"] or
                   nodes[i]["namespace"].endswith(f"{layer_names[name]}1") for i in red)
        # before it: within the tolerance, uncoloured by hand (the green threshold); after it: orange
        assert all("bgColor" not in r and r["value"] <= faulty.tol for r in by_layer[0])
        assert all(r["bgColor"] == ovl.ORANGE for r in by_layer[2])
        assert by_layer[1][0]["value"] == pytest.approx(max(r.max_abs_diff for r in faulty.records if r.layer == 1))
        # the LM head (after the divergence) is orange, the embedding (before it) is not
        lm = [r for nid, r in results.items() if "lm_head" in nodes[nid]["stack"]]
        assert lm and all(r["bgColor"] == ovl.ORANGE for r in lm)
        # the red layer opens in its pane
        assert len(ov.expand[name]) == 1 and ov.expand[name][0].endswith(f"{layer_names[name]}1___group___")
    assert "first divergence: layer 1 (attention)" in ov.legend_html()
    assert any("transposed" in n for n in ov.notes)


def test_a_clean_comparison_is_all_within_tolerance(explored):
    _, ex, _ = explored
    ov = ex.overlay("compare", ["original", "reauthored"])  # the project's newest fresh comparison
    assert "comparison first" in ov.title
    for f in ov.files.values():
        data = json.loads(f.read_text())
        assert all("bgColor" not in r for r in data["results"].values())
        tol = data["thresholds"][0]["value"]
        assert all(r["value"] <= tol for r in data["results"].values())
    assert ov.expand == {} and "no layer diverges" in ov.notes


# ---- sync navigation ----------------------------------------------------------------------
def _group_ids(graph) -> set[str]:
    """Every group node Model Explorer draws: each namespace prefix + ___group___."""
    out = set()
    for n in json.loads(graph.nodes_file.read_text())["nodes"]:
        parts = n["namespace"].split("/")
        out.update("/".join(parts[:k]) + "___group___" for k in range(1, len(parts) + 1) if parts[0])
    return out


def test_the_sync_mapping_pairs_every_decoder_layer(explored):
    root, ex, graphs = explored
    path = ex.sync_mapping("original", "reauthored")
    assert ex.data_dir in path.parents and path.name == "original.pt2__reauthored.pt2.json"
    entries = json.loads(path.read_text())["mappingEntries"]
    left = [i for e in entries for i in e["leftNodeIds"]]
    right = [i for e in entries for i in e["rightNodeIds"]]
    assert len(left) == len(set(left)) and len(right) == len(set(right))  # one entry per node and side
    assert set(left) <= _pt_ids(graphs["original"]) | _group_ids(graphs["original"])
    assert set(right) <= _pt_ids(graphs["reauthored"]) | _group_ids(graphs["reauthored"])
    pairs = {(tuple(e["leftNodeIds"]), tuple(e["rightNodeIds"])) for e in entries}
    from workbench.project import Workbench

    layers = Workbench.open(root, readonly=True).blueprint.num_layers
    for i in range(layers):
        lg = [g for g in _group_ids(graphs["original"]) if g.endswith(f"LlamaDecoderLayer_{i}___group___")]
        rg = [g for g in _group_ids(graphs["reauthored"]) if g.endswith(f"TransformerBlock_{i}___group___")]
        assert len(lg) == len(rg) == 1 and ((lg[0],), (rg[0],)) in pairs, i
    # q, k and v (three ops) go to the one fused projection; their modules pair up too
    qkv = [e for e in entries if e["rightNodeIds"] == ["model_layers_1_self_attn_q_proj"]]
    assert len(qkv) == 1 and qkv[0]["leftNodeIds"] == [f"model_layers_1_self_attn_{x}_proj" for x in "qkv"]
    assert any(e["leftNodeIds"][0].endswith("LlamaDecoderLayer_1/transformers.models.llama.modeling_llama."
                                              "LlamaAttention_self_attn___group___")
               and e["rightNodeIds"][0].endswith("TransformerBlock_1/litert_torch.generative.layers.attention."
                                                 "CausalSelfAttention_atten_func___group___") for e in entries)
    # the other order of panes gives the mirrored file
    rev = json.loads(ex.sync_mapping("reauthored", "original").read_text())["mappingEntries"]
    assert {(tuple(e["rightNodeIds"]), tuple(e["leftNodeIds"])) for e in rev} == pairs


def test_ops_reading_a_weight_share_their_ids_across_the_two_graphs(explored):
    """What makes Model Explorer's "match node id" sync work from the URL alone."""
    _, _, graphs = explored
    nodes = {n: {x["id"]: x for x in json.loads(graphs[n].nodes_file.read_text())["nodes"]}
             for n in ("original", "reauthored")}
    shared = set(nodes["original"]) & set(nodes["reauthored"])
    ops = {i for i in shared if nodes["original"][i].get("stack") is not None}
    assert shared - ops == {"output"}  # placeholders differ; only the graphs' outputs share their node
    # every shared op reads a weight on both sides, and is the same kind of op
    for i in ops:
        o, r = nodes["original"][i], nodes["reauthored"][i]
        assert o.get("params") and r.get("params"), i
        assert o["label"] == r["label"] or {o["label"], r["label"]} <= {"aten.mul", "aten.add", "aten._to_copy"}, i
    assert {ovl.node_layer(nodes["reauthored"][i]["stack"]) for i in ops} >= {0, 1, 2}
    assert nodes["reauthored"]["model_layers_1_self_attn_o_proj"]["params"] == [
        "transformer_blocks.1.atten_func.output_projection.weight"]
    assert nodes["original"]["model_layers_1_self_attn_o_proj"]["params"] == ["model.layers.1.self_attn.o_proj.weight"]
    # every other op is named after its module, so no unrelated ops match by accident
    assert all("__" in i for i, n in nodes["reauthored"].items() if n.get("stack") is not None and i not in ops)


def test_reauthored_and_converted_pair_up_by_namespace(quantized):
    _, ex, graphs, _ = quantized
    path = ex.sync_mapping("reauthored", "tflite", export=False)
    assert path.name == f"reauthored.pt2__{graphs['tflite'].label}.prefill_8.json"
    entries = json.loads(path.read_text())["mappingEntries"]
    index = ovl.tflite_index(graphs["tflite"].path, ex.data_dir / "tflite")
    t_ids = {n["id"] for n in index["graphs"]["prefill_8"]["nodes"]}
    t_groups = {"/".join(n["namespace"].split("/")[:k]) + "___group___"
                for n in index["graphs"]["prefill_8"]["nodes"] for k in range(1, n["namespace"].count("/") + 2)}
    right = [i for e in entries for i in e["rightNodeIds"]]
    assert len(right) == len(set(right)) and set(right) <= t_ids | t_groups
    left = [i for e in entries for i in e["leftNodeIds"]]
    assert set(left) <= _pt_ids(graphs["reauthored"]) | _group_ids(graphs["reauthored"])
    for i in range(3):
        assert any(e["leftNodeIds"][0].endswith(f"TransformerBlock_{i}___group___")
                   and e["rightNodeIds"][0].endswith(f"TransformerBlock_{i}___group___")
                   and e["rightNodeIds"][0].startswith("litert_torch.generative.utilities.converter.ExportableModule/")
                   for e in entries), i
    # the fused projection's op pairs with the fully_connected op of the same module
    fc = [e for e in entries if "model_layers_0_self_attn_q_proj" in e["leftNodeIds"]]
    labels = {n["id"]: n["label"] for n in index["graphs"]["prefill_8"]["nodes"]}
    assert len(fc) == 1 and [labels[i] for i in fc[0]["rightNodeIds"]] == ["fully_connected"]
    with pytest.raises(ExploreError, match="share no names"):
        ex.sync_mapping("original", "tflite", export=False)


# ---- the converted model's overlays -----------------------------------------------------------
def _ops(index, gid, namespace_part: str, label: str) -> list[dict]:
    return [n for n in index["graphs"][gid]["nodes"] if n["label"] == label and namespace_part in n["namespace"]]


def test_quant_overlay_names_each_ops_scheme(quantized):
    _, ex, graphs, _ = quantized
    ov = ex.overlay("quant", ["tflite"], export=False)
    data = json.loads(ov.files["tflite"].read_text())
    index = ovl.tflite_index(graphs["tflite"].path, ex.data_dir / "tflite")
    assert set(data) == {"prefill_8", "decode"}
    colors = {k: v[2] for k, v in ovl.SCHEME_COLORS.items()}
    for gid, d in data.items():
        res = d["results"]
        qkv = _ops(index, gid, "Linear_qkv_projection", "fully_connected")
        ff = [n for w in ("w1", "w2", "w3") for n in _ops(index, gid, f"Linear_{w}", "fully_connected")]
        emb = _ops(index, gid, "Embedding_tok_embedding", "embedding_lookup")
        # prefill outputs no logits: the converter drops the last layer's attention output and
        # feed-forward there (only its KV-cache update is needed)
        assert len(qkv) == 3 and len(ff) == (9 if gid == "decode" else 6) and len(emb) == 1
        assert all(res[n["id"]] == {"value": 8, "bgColor": colors["int8_dynamic"]} for n in qkv)  # int8 default
        assert all(res[n["id"]] == {"value": 4, "bgColor": colors["int4"]} for n in ff)  # feedforward int4
        assert res[emb[0]["id"]]["value"] == 8
        norms = [n for n in index["graphs"][gid]["nodes"] if n["label"] == "stablehlo_composite"
                 and "RMSNorm" in n["namespace"]]
        assert norms and all(res[n["id"]] == {"value": 32, "bgColor": colors["fp32"]} for n in norms)
    assert [i.label for i in ov.legend][:2] == ["int4 weights", "int8 weights, dynamic-range op"]
    assert ov.expand["tflite"][0].endswith("DecoderOnlyModel_module___group___")


def test_sizes_overlay_counts_the_bytes_each_op_reads(quantized, samples):
    from workbench import Blueprint

    _, ex, graphs, _ = quantized
    bp = Blueprint.from_hf(samples["llama"])
    spec = bp.layer_spec(0)
    ov = ex.overlay("sizes", ["tflite"], export=False)
    data = json.loads(ov.files["tflite"].read_text())
    index = ovl.tflite_index(graphs["tflite"].path, ex.data_dir / "tflite")
    res = data["prefill_8"]["results"]
    w1 = _ops(index, "prefill_8", "Linear_w1", "fully_connected")[0]
    assert res[w1["id"]]["value"] == spec.intermediate_size * bp.hidden_size // 2  # int4: half a byte each
    qkv = _ops(index, "prefill_8", "Linear_qkv_projection", "fully_connected")[0]
    q, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    assert res[qkv["id"]]["value"] == (q + 2 * kv) * bp.hidden_size  # int8: a byte each
    assert data["prefill_8"]["gradient"] == ovl.SIZE_GRADIENT
    assert "largest" in ov.legend[-1].label


def test_quant_error_overlay_is_the_manifests_per_op_mse(quantized):
    root, ex, graphs, res = quantized
    qe = res.quant_error
    assert len(qe["tensors"]) > 150  # every tensor ai-edge-quantizer measured, not only the worst 25
    ov = ex.overlay("quant_error", ["tflite"], export=False)
    assert ov.graph_ids == {"tflite": "decode"}  # measured on decode: the pane opens there
    data = json.loads(ov.files["tflite"].read_text())
    assert set(data) == {"decode"}
    index = ovl.tflite_index(graphs["tflite"].path, ex.data_dir / "tflite")
    nodes = {n["id"]: n for n in index["graphs"]["decode"]["nodes"]}
    results = data["decode"]["results"]
    assert len(results) > 100
    for nid, r in results.items():
        assert r["value"] == max(qe["tensors"][o["tensor"]] for o in nodes[nid]["outputs"] if o["tensor"] in qe["tensors"])
    worst = max(results, key=lambda i: results[i]["value"])
    assert data["decode"]["thresholds"][-1]["value"] == ovl.BIG and results[worst]["value"] > 0
    # the page opens the decode graph of the converted model
    view = ex.show(["tflite"], overlay="quant_error", export=False)
    d = json.loads(urllib.parse.unquote(view.frames[0][1].split("data=")[1].split("&")[0]))
    assert d["uiState"]["paneStates"][0]["selectedGraphId"] == "decode"
    assert d["nodeData"] == [str(ov.files["tflite"])] and d["nodeDataTargets"] == [graphs["tflite"].label]


def test_an_older_manifest_shows_its_worst_tensors_and_says_so(quantized, tmp_path):
    root, ex, graphs, res = quantized
    man = json.loads(res.manifest_path.read_text())
    old = tmp_path / "old"
    old.mkdir()
    (old / "old.tflite").write_bytes(res.path.read_bytes())
    del man["quant_error"]["tensors"]
    (old / "old.json").write_text(json.dumps(man))
    ex2 = Explorer(root, tflite=old / "old.tflite")
    ov = ex2.overlay("quant_error", ["tflite"])
    assert 0 < ov.colored["tflite"] <= 25
    assert any("only its 25 worst" in n for n in ov.notes)


# ---- refusals --------------------------------------------------------------------------------
def test_overlays_that_cannot_be_shown_say_why(explored, samples, tmp_path):
    root, ex, graphs = explored
    offered = {o["name"]: o for o in ex.overlays()}
    assert offered["compare"]["available"] and offered["quant"]["available"]
    assert not offered["quant_error"]["available"] and "not quantized" in offered["quant_error"]["why"]
    assert not offered["timing"]["available"] and "no op profiler" in offered["timing"]["why"]
    with pytest.raises(OverlayError, match="quantizes nothing"):
        ex.overlay("quant_error", ["tflite"], export=False)
    with pytest.raises(OverlayError, match="per-op timing is not available"):
        ex.show(["tflite"], overlay="timing", export=False)
    with pytest.raises(ExploreError, match="unknown overlay"):
        ex.show(["tflite"], overlay="heat", export=False)
    with pytest.raises(OverlayError, match="not shown") as e:
        ex.show(["tflite"], overlay="compare", export=False)
    assert "original" in e.value.hint
    with pytest.raises(OverlayError, match="not shown"):
        ex.show(["original"], overlay="quant", export=False)
    hf = Explorer(samples["llama"], graphs_dir=tmp_path / "g")
    assert not {o["name"]: o for o in hf.overlays()}["compare"]["available"]
    with pytest.raises(OverlayError) as e:
        hf.show(["original"], overlay="compare")
    assert "comparison=" in e.value.hint


# ---- the view: data parameter, legend, sync, and no export when re-colouring -------------------
def test_show_with_an_overlay_names_the_node_data_and_turns_sync_on(explored, faulty):
    _, ex, graphs = explored
    view = ex.show(["original", "reauthored", "tflite"], overlay="compare", comparison=faulty)
    d = json.loads(urllib.parse.unquote(view.frames[0][1].split("data=")[1].split("&")[0]))
    assert d["nodeDataTargets"] == ["original.pt2", "reauthored.pt2"]
    assert d["nodeData"] == [str(view.overlay.files["original"]), str(view.overlay.files["reauthored"])]
    assert d["sync"] == {"mode": "match_node_id"}
    assert d["uiState"]["paneStates"][0]["deepestExpandedGroupNodeIds"] == view.overlay.expand["original"]
    d3 = json.loads(urllib.parse.unquote(view.frames[1][1].split("data=")[1].split("&")[0]))
    assert "nodeData" not in d3 and "sync" not in d3  # the converted model: nothing of this overlay
    page = view._repr_html_()
    assert "ewb-explore-legend" in page and "first divergence: layer 1 (attention)" in page
    assert "Upload mapping" in page and str(view.sync["file"]) in page
    assert view.sync["mode"] == "match_node_id" and Path(view.sync["file"]).is_file()
    assert "overlay:" in repr(view) and "sync:" in repr(view)
    plain = ex.show(["original", "reauthored"], sync=False)
    dp = json.loads(urllib.parse.unquote(plain.frames[0][1].split("data=")[1].split("&")[0]))
    assert "sync" not in dp and "nodeData" not in dp and "ewb-explore-legend" not in plain._repr_html_()
    # the server reads the files the page names (they are under the explorer's data folder)
    status, text = ex.server.request("/api/v1/read_text_file?path=" + urllib.parse.quote(d["nodeData"][0]))
    assert status == 200 and json.loads(json.loads(text)["content"])["results"]


def _tree(folder: Path) -> dict:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.rglob("*"))}


def test_recolouring_never_touches_the_export_cache(quantized, monkeypatch, faulty):
    from workbench.explore.graphs import GraphStore

    root, ex, graphs, _ = quantized
    ex.show(["original", "reauthored", "tflite"])
    before = _tree(ex.store.folder)

    def no(*a, **k):
        raise AssertionError("the export cache was consulted")

    monkeypatch.setattr(GraphStore, "ensure", no)
    monkeypatch.setattr(GraphStore, "_export", no)
    for overlay, comparison in (("compare", faulty), ("quant", None), ("quant_error", None), ("sizes", None),
                                (None, None)):
        view = ex.show(["original", "reauthored", "tflite"], overlay=overlay, comparison=comparison, export=False)
        assert (view.overlay.name if view.overlay else None) == overlay
    assert _tree(ex.store.folder) == before
    with pytest.raises(ExploreError, match="not exported yet"):
        Explorer(root).show(["original"], export=False)


# ---- the CLI -----------------------------------------------------------------------------
def test_cli_overlay_writes_node_data_and_sync_mappings(quantized, tmp_path):
    root, _, _, _ = quantized
    project = copy_project(root, tmp_path, "cli")  # explore/ comes along: nothing re-exported
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "explore", "--project", str(project),
                             "--overlay", "quant", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        out = json.loads(proc.stdout.readline())
        assert set(out["node_data"]) == {"tflite"} and Path(out["node_data"]["tflite"]).is_file()
        assert Path(out["node_data"]["tflite"]).is_relative_to(project / "explore")
        assert set(out["sync_mapping"]) == {"original__reauthored", "reauthored__tflite"}
        assert all(Path(p).is_file() for p in out["sync_mapping"].values())
        assert out["overlay"]["name"] == "quant" and out["overlay"]["legend"]
        data = json.loads(urllib.parse.parse_qs(urllib.parse.urlparse(out["url"]).query)["data"][0])
        assert data["nodeData"] == [out["node_data"]["tflite"]] and data["sync"] == {"mode": "match_node_id"}
        assert all(g["cached"] for n, g in out["graphs"].items() if n != "tflite")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    bad = subprocess.run([sys.executable, "-m", "workbench.cli", "explore", "--project", str(project), "--overlay",
                          "timing", "--json"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "per-op timing is not available" in json.loads(bad.stdout)["error"]
