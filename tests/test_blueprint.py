"""The Blueprint core: import, edit, check, summarise, build, emit, round-trip."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from conftest import make_hf_checkpoint
from workbench import Blueprint, BlueprintError
from workbench.blueprint import LAYER_FIELDS


def _import_file(path, name="emitted"):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---- import from Hugging Face ---------------------------------------------------
@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma"])
def test_sample_imports_clean_with_transformers_param_count(name, samples, hf_models):
    bp = Blueprint.from_hf(samples[name])
    assert bp.family == name
    assert bp.problems() == []
    assert bp.summary().params == hf_models(name).num_parameters()


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma"])
def test_build_runs_a_forward_pass_with_the_summarised_size(name, samples):
    import torch
    from workbench import layers

    bp = Blueprint.from_hf(samples[name])
    model = bp.build(kv_cache_length=32)
    assert layers.count_params(model) == bp.summary().params
    out = layers.logits(model, list(range(1, 9)), 32)
    assert out.shape == (1, 8, bp.vocab_size)
    assert torch.isfinite(out).all()
    # litert-torch's module names, which its loader and quantization recipes match on
    names = dict(model.named_modules())
    assert "transformer_blocks.0.atten_func.qkv_projection" in names
    assert f"transformer_blocks.{bp.num_layers - 1}.ff.w2" in names


def test_gemma_head_dim_times_heads_may_differ_from_hidden(samples):
    bp = Blueprint.from_hf(samples["gemma"])
    assert bp.head_dim() * bp.layer.num_heads != bp.hidden_size
    assert bp.problems() == []
    assert bp.layer.norm_offset == 1.0 and bp.scale_embeddings and bp.tie_embeddings


def test_qwen2_has_qkv_bias_but_no_output_bias(samples):
    bp = Blueprint.from_hf(samples["qwen2"])
    assert bp.layer.qkv_bias and not bp.layer.out_bias


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma"])
def test_emitted_python_rebuilds_the_model_and_loads_the_checkpoint(name, samples, hf_models, tmp_path):
    """The re-authoring a user keeps: imported in a fresh module, it gives the same
    model and, with litert-torch's loader, transformers' logits."""
    import torch
    from workbench import configs, layers

    bp = Blueprint.from_hf(samples[name])
    path = tmp_path / f"{name}_reauthored.py"
    path.write_text(bp.to_python())
    mod = _import_file(path, f"emitted_{name}")
    assert configs.to_jsonable(mod.get_model_config()) == configs.to_jsonable(bp.model_config())
    built = bp.build(kv_cache_length=16)
    emitted = mod.build_model(str(samples[name]), mask_cache_size=16)
    assert type(emitted) is type(built)
    assert {k: v.shape for k, v in emitted.state_dict().items()} == {k: v.shape for k, v in built.state_dict().items()}
    tokens = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29, 33, 37]])
    with torch.no_grad():
        ref = hf_models(name)(tokens).logits
    ours = layers.logits(emitted, tokens[0], 16)
    assert (ref - ours).abs().max().item() <= 1e-5


def test_emitted_python_for_per_layer_overrides_uses_workbench_layers(samples, tmp_path):
    from workbench import configs

    bp = Blueprint.from_hf(samples["llama"])
    bp.set("sliding_window", 4, layer=1)
    src = bp.to_python()
    assert "layers.Decoder" in src and "if idx in (1,)" in src
    path = tmp_path / "ovr.py"
    path.write_text(src)
    mod = _import_file(path, "emitted_ovr")
    assert configs.to_jsonable(mod.get_model_config()) == configs.to_jsonable(bp.model_config())
    assert type(mod.build_model(str(samples["llama"]), mask_cache_size=16)).__name__ == "Decoder"


# ---- our own layers against transformers ------------------------------------------
def test_gemma2_features_match_transformers(tmp_path):
    """Post-norms, query_pre_attn_scalar, both soft-caps and alternating sliding
    windows: the parts litert-torch's DecoderOnlyModel lacks, checked end to end."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma2Config
    from workbench import layers

    cfg = Gemma2Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=64,
                       sliding_window=5, query_pre_attn_scalar=24, attn_implementation="eager")
    d = make_hf_checkpoint(tmp_path / "g2", cfg)
    bp = Blueprint.from_hf(d)
    assert bp.problems() == []
    assert bp.summary().params == AutoModelForCausalLM.from_pretrained(d).num_parameters()
    assert sorted(bp.overrides) == [0, 2]  # sliding layers; the others are global
    path = tmp_path / "g2.py"
    path.write_text(bp.to_python())
    model = _import_file(path, "emitted_g2").build_model(str(d), mask_cache_size=16)
    hf = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager").eval()
    tokens = torch.arange(3, 15).reshape(1, -1)
    with torch.no_grad():
        ref = hf(tokens).logits
    assert (ref - layers.logits(model, tokens[0], 16)).abs().max().item() <= 1e-5


def test_workbench_layers_reduce_to_litert_when_their_knobs_are_neutral(samples):
    """A window as long as the prompt, an explicit 1/sqrt(head_dim) scale and a
    per-layer RoPE base equal to the shared one change nothing."""
    import torch
    from workbench import layers

    base = Blueprint.from_hf(samples["llama"])
    model = base.build(16)
    torch.manual_seed(0)
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.1)
    tokens = list(range(3, 15))
    ref = layers.logits(model, tokens, 16)
    variant = base.copy()
    variant.set("sliding_window", 16, layer=1)
    variant.set("attn_scale", 1 / math.sqrt(base.head_dim()), layer=2)
    variant.set("rope_base", base.layer.rope_base, layer=0)
    other = variant.build(16)
    assert type(other).__name__ == "Decoder"
    other.load_state_dict(model.state_dict())
    assert (layers.logits(other, tokens, 16) - ref).abs().max().item() <= 1e-6
    narrow = base.copy().set("sliding_window", 2, layer=1).build(16)
    narrow.load_state_dict(model.state_dict())
    assert (layers.logits(narrow, tokens, 16) - ref).abs().max().item() > 1e-3


# ---- editing --------------------------------------------------------------------
def test_global_and_per_layer_edits_revalidate_and_resummarise(samples):
    bp = Blueprint.from_hf(samples["llama"])
    before = bp.summary().params
    bp.set("intermediate_size", 320)
    assert bp.summary().params > before
    bp.set("num_kv_heads", 3, layer=1)
    [p] = bp.problems()
    assert p.layer == 1 and p.field == "num_kv_heads" and "choose num_kv_heads among [1, 2, 4]" in str(p)
    assert bp.layer_spec(1).num_kv_heads == 3 and bp.layer_spec(0).num_kv_heads == 2
    bp.unset("num_kv_heads", 1)
    assert bp.problems() == [] and bp.overrides == {}


@pytest.mark.parametrize("field", LAYER_FIELDS)
def test_every_layer_knob_can_be_overridden_for_one_layer(field, samples):
    bp = Blueprint.from_hf(samples["llama"])
    current = getattr(bp.layer, field)
    new = {bool: (not current) if isinstance(current, bool) else None}.get(type(current))
    if new is None:
        new = {"ff_type": "sequential", "activation": "gelu", "norm_type": "layer", "head_dim": 32,
               "attn_scale": 0.3, "attn_logit_softcap": 20.0, "sliding_window": 8, "norm_offset": 1.0,
               "rotary_fraction": 0.5}.get(field, current * 2 if isinstance(current, (int, float)) else current)
    bp.set(field, new, layer=2)
    assert getattr(bp.layer_spec(2), field) == new
    assert getattr(bp.layer_spec(0), field) == current


def test_edit_errors_are_clear(samples):
    bp = Blueprint.from_hf(samples["llama"])
    with pytest.raises(BlueprintError, match="layer 7 does not exist: the model has 3 layers"):
        bp.set("num_heads", 2, layer=7)
    with pytest.raises(BlueprintError, match="'num_hedas' is not a Blueprint knob"):
        bp.set("num_hedas", 2)
    with pytest.raises(BlueprintError, match="num_heads takes an integer, got str"):
        bp.set("num_heads", "four")
    with pytest.raises(BlueprintError, match="model-wide"):
        bp.set("vocab_size", 10, layer=0)
    with pytest.raises(BlueprintError, match="has no override"):
        bp.unset("num_heads", 0)


def test_shrinking_the_model_flags_orphaned_overrides(samples):
    bp = Blueprint.from_hf(samples["llama"]).set("sliding_window", 8, layer=2)
    bp.set("num_layers", 2)
    assert any(p.field == "overrides" and p.layer == 2 for p in bp.problems())
    with pytest.raises(BlueprintError, match="overrides layer 2"):
        bp.build()


# ---- problems -------------------------------------------------------------------
@pytest.mark.parametrize("field,value,needle", [
    ("num_layers", 0, "at least one layer"),
    ("num_kv_heads", 3, "not a multiple of num_kv_heads"),
    ("norm_eps", -1e-5, "epsilon must be positive"),
    ("num_heads", 0, "at least one head"),
    ("rotary_fraction", 0.2, "must be even"),
    ("norm_offset", 0.5, "offsets from 1"),
    ("kv_cache_length", 100_000, "exceeds max_seq_len"),
    ("activation", "swiglu9", "no such activation"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}, "not supported"),
])
def test_impossible_values_are_problems_naming_field_value_and_fix(field, value, needle, samples):
    bp = Blueprint.from_hf(samples["llama"]).set(field, value)
    ps = [p for p in bp.problems() if needle in p.message]
    assert ps, [str(p) for p in bp.problems()]
    text = str(ps[0])
    assert field in text and repr(value) in text and "fix:" in text
    with pytest.raises(BlueprintError, match=needle.split()[0]):
        bp.build()


def test_hidden_not_divisible_by_heads_needs_an_explicit_head_dim():
    bp = Blueprint(hidden_size=100, layer=Blueprint().layer)
    bp.set("num_heads", 3).set("num_kv_heads", 1)
    assert any("not divisible by num_heads" in p.message for p in bp.problems())
    bp.set("head_dim", 32)
    assert bp.problems() == []


# ---- bad input files ------------------------------------------------------------
def test_bad_model_folders_are_clear_errors(tmp_path):
    with pytest.raises(BlueprintError, match="does not exist"):
        Blueprint.from_hf(tmp_path / "missing")
    with pytest.raises(BlueprintError, match="has no config.json"):
        Blueprint.from_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(BlueprintError, match="not valid JSON"):
        Blueprint.from_hf(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(BlueprintError, match="not a JSON object"):
        Blueprint.from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    with pytest.raises(BlueprintError, match="'bert' is not a supported decoder family") as e:
        Blueprint.from_hf(tmp_path)
    assert "edge-workbench families" in e.value.hint
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(BlueprintError, match="no model_type"):
        Blueprint.from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_act": "mish"}))
    with pytest.raises(BlueprintError, match="hidden_act='mish'"):
        Blueprint.from_hf(tmp_path)


def test_impossible_hf_config_imports_with_its_problems_listed(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 66, "num_hidden_layers": 0, "num_attention_heads": 4,
           "num_key_value_heads": 3, "intermediate_size": 128, "vocab_size": 100, "rms_norm_eps": -1.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    bp = Blueprint.from_hf(tmp_path)
    fields = {p.field for p in bp.problems()}
    assert {"num_layers", "num_kv_heads", "num_heads", "norm_eps"} <= fields


def test_rope_is_read_from_old_and_new_config_styles():
    old = Blueprint.from_hf_config({"model_type": "llama", "rope_theta": 500000.0,
                                    "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                     "high_freq_factor": 4.0,
                                                     "original_max_position_embeddings": 8192}})
    new = Blueprint.from_hf_config({"model_type": "llama", "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})
    assert old.layer.rope_base == new.layer.rope_base == 500000.0
    assert old.rope_scaling == new.rope_scaling and new.rope_scaling["rope_type"] == "llama3"


def test_llama3_rope_scaling_matches_transformers():
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from workbench import layers

    params = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=2, max_position_embeddings=128, rope_parameters=params)
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    pos = torch.arange(100)
    cos, sin = layers.build_rope(pos, 32, 500000.0, scaling=params)
    ref = pos.float()[:, None] * inv_freq[None]
    assert torch.allclose(cos[0], ref.cos(), atol=1e-6) and torch.allclose(sin[0], ref.sin(), atol=1e-6)


# ---- presets --------------------------------------------------------------------
@pytest.mark.parametrize("name", Blueprint.presets())
def test_presets_are_clean_and_count_like_transformers(name):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from workbench.presets import ALIASES, PRESETS

    bp = Blueprint.preset(name)
    assert bp.problems() == []
    raw = dict(PRESETS[ALIASES.get(name, name)])
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(raw.pop("model_type"), **raw))
    assert bp.summary().params == hf.num_parameters()


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(BlueprintError, match="no preset named 'llama9'") as e:
        Blueprint.preset("llama9")
    assert "tinyllama-1.1b" in e.value.hint


# ---- summary --------------------------------------------------------------------
def test_memory_figures(samples):
    bp = Blueprint.from_hf(samples["llama"]).set("kv_cache_length", 128)
    s = bp.summary()
    assert s.weights_bytes["fp32"] == 4 * s.params
    assert s.weights_bytes["int4"] < s.weights_bytes["int8"] < s.weights_bytes["fp16"] < s.weights_bytes["fp32"]
    assert s.kv_cache_bytes == bp.num_layers * 2 * 128 * bp.layer.num_kv_heads * bp.head_dim() * 4
    bp.set("kv_cache_dtype", "int8")
    assert bp.summary().kv_cache_bytes == s.kv_cache_bytes // 4
    assert sum(s.params_by_block.values()) == s.params


# ---- serialization --------------------------------------------------------------
@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma"])
def test_json_round_trip_is_exact(name, samples):
    bp = Blueprint.from_hf(samples[name])
    bp.set("sliding_window", 8, layer=1).set("attn_scale", 0.25, layer=2).set("rope_base", 5e5)
    text = json.dumps(bp.to_json())
    again = Blueprint.from_json(text)
    assert again == bp and json.dumps(again.to_json()) == text
    assert again.fingerprint() == bp.fingerprint()
    assert again.layer_spec(1).sliding_window == 8


def test_fingerprint_changes_with_the_architecture(samples):
    bp = Blueprint.from_hf(samples["llama"])
    fp = bp.fingerprint()
    assert bp.copy().set("norm_eps", 1e-6).fingerprint() != fp
    assert bp.copy().set("name", "renamed").fingerprint() == fp


def test_from_json_refuses_foreign_and_future_files():
    with pytest.raises(BlueprintError, match="not an Edge Workbench blueprint"):
        Blueprint.from_json({"hello": 1})
    data = Blueprint().to_json()
    data["schema"] = 99
    with pytest.raises(BlueprintError, match="schema 99"):
        Blueprint.from_json(data)


def test_config_json_is_json_safe(samples):
    bp = Blueprint.from_hf(samples["gemma"])
    cfg = bp.config_json()
    text = json.dumps(cfg, allow_nan=False)
    assert '"RMS_NORM"' in text and "build_rope" not in text
    assert cfg["block_configs"]["attn_config"]["causal_mask_value"] == "-inf"


def test_repr_html_names_size_and_problems(samples):
    bp = Blueprint.from_hf(samples["llama"])
    assert "no problems" in bp._repr_html_() and f"{bp.summary().params:,}" in bp._repr_html_()
    bp.set("num_kv_heads", 3)
    assert "not a multiple" in bp._repr_html_()
