"""Layer-by-layer comparison: clean samples pass; planted faults are found where they are."""

from __future__ import annotations

import json

import pytest
import torch

from workbench import Blueprint
from workbench.compare import LAYER_POINTS, CompareError, compare
from workbench.errors import MappingError
from workbench.mapping import Mapping


@pytest.fixture(scope="module")
def llama(samples):
    bp = Blueprint.from_hf(samples["llama"])
    return samples["llama"], bp, Mapping.propose(bp, samples["llama"])


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma"])
def test_every_sample_matches_transformers_layer_by_layer(name, samples):
    bp = Blueprint.from_hf(samples[name])
    c = compare(samples[name], bp, prompts=["Once upon a time", "The robot walked 12 miles."], tol=1e-5)
    assert c.passed, c.verdict()
    assert c.first_divergence() is None
    assert c.logits["max_abs_diff"] <= 1e-5 and c.logits["top1_agreement"] == 1.0
    assert c.generation["reference_ids"] == c.generation["reauthored_ids"]
    assert c.generation["first_diff"] is None and len(c.generation["reference_ids"]) == 8
    assert all(r.cosine > 0.999999 for r in c.records)


def test_capture_point_names_are_stable(llama):
    d, bp, m = llama
    c = compare(d, bp, m, prompts=[[1, 2, 3, 4]])
    assert [r.name for r in c.records] == (
        ["embedding"] + [f"transformer_blocks.{i}.{p}" for i in range(bp.num_layers) for p in LAYER_POINTS]
        + ["final_norm", "logits"])
    assert LAYER_POINTS == ("input_norm", "attention", "post_attention_residual", "mlp", "output")
    r = c.records[1]
    assert r.shape == (1, 4, bp.hidden_size) and r.layer == 0 and r.point == "input_norm"


# ---- planted faults -------------------------------------------------------------
def _diverge(d, model, m):
    c = compare(d, model, m, prompts=["Once upon a time there was a robot"], tol=1e-4)
    assert not c.passed
    return c.first_divergence()


def test_swapped_layers_are_found_at_the_first_swapped_layer(llama):
    d, bp, m = llama
    model = m.load(kv_cache_length=64)
    a, b = model.transformer_blocks[1], model.transformer_blocks[2]
    sa, sb = {k: v.clone() for k, v in a.state_dict().items()}, {k: v.clone() for k, v in b.state_dict().items()}
    a.load_state_dict(sb)
    b.load_state_dict(sa)
    div = _diverge(d, model, m)
    assert (div.layer, div.point) == (1, "input_norm")
    assert "swapped" in div.hint


def test_wrong_rope_base_is_found_at_layer_0_attention(llama):
    d, bp, _ = llama
    wrong = bp.copy().set("rope_base", 500.0)
    m = Mapping.propose(wrong, d)
    div = _diverge(d, m.load(kv_cache_length=64), m)
    assert (div.layer, div.point) == (0, "attention") and "RoPE" in div.hint


def test_wrong_norm_eps_is_found_at_layer_0_input_norm(llama):
    d, bp, _ = llama
    wrong = bp.copy().set("norm_eps", 0.5)
    m = Mapping.propose(wrong, d)
    div = _diverge(d, m.load(kv_cache_length=64), m)
    assert (div.layer, div.point) == (0, "input_norm") and "eps" in div.hint


def test_transposed_o_proj_is_found_at_its_layer_attention(llama):
    d, bp, m = llama
    model = m.load(kv_cache_length=64)
    w = model.transformer_blocks[2].atten_func.output_projection.weight
    w.data = w.data.T.contiguous()  # square (64 x 64): loads without a shape error
    div = _diverge(d, model, m)
    assert (div.layer, div.point) == (2, "attention") and "transposed" in div.hint


def test_wrong_activation_is_found_at_layer_0_mlp(llama):
    d, bp, _ = llama
    wrong = bp.copy().set("activation", "gelu")
    m = Mapping.propose(wrong, d)
    div = _diverge(d, m.load(kv_cache_length=64), m)
    assert (div.layer, div.point) == (0, "mlp") and "activation" in div.hint


def test_missing_embedding_scale_is_found_at_the_embedding(samples):
    bp = Blueprint.from_hf(samples["gemma"]).set("scale_embeddings", False)
    m = Mapping.propose(bp, samples["gemma"])
    div = _diverge(samples["gemma"], m.load(kv_cache_length=64), m)
    assert div.point == "embedding" and "sqrt(hidden_size)" in div.hint


# ---- results --------------------------------------------------------------------
def test_json_and_figures(llama):
    d, bp, m = llama
    c = compare(d, bp, m, prompts=["hello there"], max_new_tokens=4)
    data = json.loads(json.dumps(c.to_json(), allow_nan=False))
    assert data["passed"] is True and data["first_divergence"] is None
    assert set(data["logits"]) == {"max_abs_diff", "mean_abs_diff", "top1_agreement"}
    assert len(data["layers"]) == len(c.records)
    per_layer, heat = c.figures()
    assert per_layer.layout.yaxis.type == "log"
    assert {t.name for t in per_layer.data} >= set(LAYER_POINTS)
    assert len(heat.data[0].z) == bp.num_layers and list(heat.data[0].x) == list(LAYER_POINTS)
    assert "within" in c._repr_html_()


def test_figure_marks_the_first_divergence(llama):
    d, bp, _ = llama
    m = Mapping.propose(bp.copy().set("activation", "relu"), d)
    c = compare(d, m.load(kv_cache_length=64), m, prompts=["a b c d"])
    per_layer, _ = c.figures()
    marker = [t for t in per_layer.data if t.name == "first divergence"]
    assert marker and marker[0].x == (0,)


# ---- bad input ------------------------------------------------------------------
def test_bad_input_is_a_clear_error(llama, samples, tmp_path):
    d, bp, m = llama
    with pytest.raises(CompareError, match="a prompt is empty"):
        compare(d, bp, m, prompts=[""])
    with pytest.raises(CompareError, match="exceeds the model's context of 256 tokens"):
        compare(d, bp, m, prompts=[list(range(1, 255))])
    with pytest.raises(CompareError, match="outside the vocabulary"):
        compare(d, bp, m, prompts=[[1, 2, 9999]])
    with pytest.raises(CompareError, match="vocabularies differ: original 512, re-authored 600"):
        compare(d, bp.copy().set("vocab_size", 600))
    with pytest.raises(CompareError, match="a prompt is empty"):
        compare(d, bp, m, prompts=["   "])
    broken = Mapping.propose(bp, d).set("ff_down_proj", "model.layers.{}.mlp.nope")
    with pytest.raises(MappingError, match="cannot fill the model"):
        compare(d, bp, broken)


def test_missing_tokenizer_falls_back_to_ids_and_says_so(samples, tmp_path):
    import shutil

    d = tmp_path / "no-tok"
    d.mkdir()
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(samples["llama"] / f, d / f)
    bp = Blueprint.from_hf(d)
    with pytest.raises(CompareError, match="has no tokenizer") as e:
        compare(d, bp, prompts=["text needs a tokenizer"])
    assert "token ids" in e.value.hint
    c = compare(d, bp, prompts=[[1, 5, 7, 9]])
    assert c.passed and any("compared on token ids" in n for n in c.notes)
