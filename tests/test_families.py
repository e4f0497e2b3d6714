"""Every supported decoder family, end to end with no per-checkpoint code: a tiny random
checkpoint from transformers' own config class (fixed seed, every parameter perturbed,
one layer of each kind where a family alternates), then the Blueprint's parameter count,
the proposed mapping (no problems, nothing unused), compare's logits against transformers
and one planted fault found at its layer."""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_hf_checkpoint
from workbench import Blueprint, families
from workbench.compare import compare
from workbench.errors import BlueprintError
from workbench.mapping import Mapping

TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128)
# model_type -> (config class, config overrides, (parameter to plant a fault in, its layer))
CASES = {
    "llama": ("LlamaConfig", dict(num_hidden_layers=2, attention_bias=True, mlp_bias=True),
              ("transformer_blocks.{}.ff.w3.weight", 1)),
    "mistral": ("MistralConfig", dict(num_hidden_layers=2, head_dim=32, sliding_window=5),
                ("transformer_blocks.{}.atten_func.output_projection.weight", 1)),
    "qwen2": ("Qwen2Config", dict(num_hidden_layers=3, use_sliding_window=True, sliding_window=5,
                                  max_window_layers=1), ("transformer_blocks.{}.atten_func.qkv_projection.bias", 2)),
    "qwen3": ("Qwen3Config", dict(num_hidden_layers=2, head_dim=32),
              ("transformer_blocks.{}.atten_func.key_norm.weight", 1)),
    "gemma": ("GemmaConfig", dict(num_hidden_layers=2, num_key_value_heads=1, head_dim=32),
              ("transformer_blocks.{}.post_atten_norm.weight", 1)),
    "gemma2": ("Gemma2Config", dict(num_hidden_layers=2, head_dim=32, sliding_window=5, query_pre_attn_scalar=24),
               ("transformer_blocks.{}.ff.post_ff_norm.weight", 1)),
    "gemma3_text": ("Gemma3TextConfig", dict(num_hidden_layers=2, head_dim=32, sliding_window=5,
                                             query_pre_attn_scalar=24,
                                             layer_types=["sliding_attention", "full_attention"]),
                    ("transformer_blocks.{}.atten_func.query_norm.weight", 0)),
    "phi": ("PhiConfig", dict(num_hidden_layers=2, num_key_value_heads=4, intermediate_size=128,
                              partial_rotary_factor=0.5), ("transformer_blocks.{}.ff.w1.bias", 1)),
    "falcon": ("FalconConfig", dict(num_hidden_layers=2, alibi=True, multi_query=False, parallel_attn=False,
                                    bias=True, new_decoder_architecture=False, num_kv_heads=4),
               ("transformer_blocks.{}.atten_func.qkv_projection.weight", 1)),
    "phi3": ("Phi3Config", dict(num_hidden_layers=2, partial_rotary_factor=0.75, pad_token_id=0),
             ("transformer_blocks.{}.ff.w1.weight", 1)),
}
PROMPT = [3, 17, 250, 41, 9, 77, 120, 5, 300, 64, 11, 199]  # longer than the sliding windows


@pytest.fixture(scope="module")
def family_checkpoints(tmp_path_factory):
    import transformers

    root = tmp_path_factory.mktemp("families")
    out = {}
    for model_type, (cls, extra, _) in CASES.items():
        config = getattr(transformers, cls)(**{**TINY, **extra}, attn_implementation="eager")
        out[model_type] = make_hf_checkpoint(root / model_type, config, seed=len(out))
    return out


def test_every_family_row_has_a_case():
    assert set(CASES) == set(families.FAMILIES)


@pytest.mark.parametrize("model_type", sorted(CASES))
def test_family_imports_maps_and_matches_transformers(model_type, family_checkpoints):
    _check_family(family_checkpoints[model_type], model_type, *CASES[model_type][2])


def test_falcon_7b_shape_rotary_parallel_multi_query(tmp_path):
    """The other Falcon: RoPE, one KV head, attention and FF in parallel, no biases."""
    from transformers import FalconConfig

    config = FalconConfig(**{**TINY, "num_hidden_layers": 2}, alibi=False, multi_query=True, parallel_attn=True,
                          bias=False, new_decoder_architecture=False, attn_implementation="eager")
    d = make_hf_checkpoint(tmp_path / "falcon7b", config, seed=7)
    bp = _check_family(d, "falcon", "transformer_blocks.{}.ff.w2.weight", 0)
    assert bp.layer.num_kv_heads == 1 and bp.layer.parallel_residual and not bp.layer.alibi


def _check_family(d, model_type: str, param: str, layer: int) -> Blueprint:
    import torch
    from transformers import AutoModelForCausalLM

    bp = Blueprint.from_hf(d)
    assert bp.family == model_type and bp.problems() == []
    hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    assert bp.summary().params == hf.num_parameters()
    m = Mapping.propose(bp, d)
    assert m.problems() == [] and m.unused() == []
    model = m.load()
    assert sum(p.numel() for p in {p.data_ptr(): p for p in model.parameters()}.values()) == hf.num_parameters()

    c = compare(d, model, m, prompts=[PROMPT], max_new_tokens=4)
    assert c.logits["max_abs_diff"] <= 1e-5, c.logits
    assert c.passed and c.first_divergence() is None
    assert c.generation["first_diff"] is None

    # A planted fault: one parameter of one layer scaled; compare names that layer first.
    with torch.no_grad():
        model.get_parameter(param.format(layer)).mul_(1.5).add_(0.05)
    div = compare(d, model, m, prompts=[PROMPT], max_new_tokens=1).first_divergence()
    assert div is not None and div.layer == layer, (param, div)
    return bp


def test_family_table_lists_example_and_features():
    rows = {f.model_type: f for f in families.FAMILIES.values()}
    assert {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi", "phi3",
            "falcon"} <= set(rows)
    for f in rows.values():
        assert f.example and f.features


@pytest.mark.parametrize("model_type, missing", [("openelm", "no transformers class"),
                                                 ("gemma3", "gemma3_text"), ("t5", "encoder-decoder")])
def test_family_that_cannot_be_imported_names_why(tmp_path, model_type, missing):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "num_hidden_layers": 2}))
    with pytest.raises(BlueprintError, match=missing):
        Blueprint.from_hf(tmp_path)


def test_embedding_gemma_is_refused_as_an_encoder():
    with pytest.raises(BlueprintError, match="EmbeddingGemma"):
        Blueprint.from_hf_config({"model_type": "gemma3_text", "use_bidirectional_attention": True,
                                  "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                                  "vocab_size": 300})


def test_per_layer_rope_scaling_is_refused_by_name():
    with pytest.raises(BlueprintError, match="RoPE scaling of their own"):
        Blueprint.from_hf_config({
            "model_type": "gemma3_text", "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 96,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 300,
            "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"],
            "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}}})


def test_gemma3_local_and_global_layers_get_their_own_rope_base(family_checkpoints):
    bp = Blueprint.from_hf(family_checkpoints["gemma3_text"])
    assert bp.layer_spec(0).sliding_window == 5 and bp.layer_spec(0).rope_base == 10_000.0
    assert bp.layer_spec(1).sliding_window is None and bp.layer_spec(1).rope_base == 1_000_000.0
    assert bp.needs_own_layers()


@pytest.mark.parametrize("model_type", ["gemma3_text", "phi3", "falcon"])
def test_family_converts_and_matches_transformers(model_type, family_checkpoints, tmp_path):
    """Our own layers (Gemma 3), the fused projections (Phi-3) and ALiBi (Falcon) lower through
    litert-torch's converter; the fp32 file decodes like transformers."""
    from workbench.convert import convert

    res = convert(family_checkpoints[model_type], recipe="none", prefill=[8], kv=32, out=tmp_path,
                  check_steps=4).result()
    assert res.check["max_abs_diff"] <= 1e-5 and res.check["top1_agreement"] == 1.0, res.check
    assert set(res.signatures) == {"prefill_8", "decode"}


@pytest.mark.parametrize("model_type", sorted(CASES))
def test_family_emitted_python_rebuilds_the_model(model_type, family_checkpoints, tmp_path):
    """The module `to_python` writes (blueprint + TENSOR_NAMES, litert-torch's loader)
    rebuilds each family from its checkpoint alone."""
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM

    from workbench import layers

    d = family_checkpoints[model_type]
    path = tmp_path / f"reauthored_{model_type}.py"
    path.write_text(Mapping.propose(Blueprint.from_hf(d), d).module_source())
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build_model(str(d), mask_cache_size=len(PROMPT))
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()(torch.tensor([PROMPT])).logits
    assert (ref - layers.logits(model, PROMPT, len(PROMPT))).abs().max().item() <= 1e-5


def test_falcon_eager_attention_in_transformers_still_differs_from_sdpa(family_checkpoints):
    """Why compare runs Falcon through transformers' SDPA path: in transformers 5.24 the
    eager path adds ALiBi twice. When this fails, transformers fixed it: drop the
    family's reference_attention override."""
    import torch
    from transformers import AutoModelForCausalLM

    d = family_checkpoints["falcon"]
    t = torch.tensor([PROMPT])
    with torch.no_grad():
        eager, sdpa = (AutoModelForCausalLM.from_pretrained(d, attn_implementation=a).eval()(t).logits
                       for a in ("eager", "sdpa"))
    assert (eager - sdpa).abs().max().item() > 1e-3
    assert families.FAMILIES["falcon"].reference_attention == "sdpa"


def test_falcon_new_decoder_architecture_is_refused_by_name():
    with pytest.raises(BlueprintError, match="new decoder architecture"):
        Blueprint.from_hf_config({"model_type": "falcon", "new_decoder_architecture": True, "num_hidden_layers": 2,
                                  "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 300})


def test_alibi_models_keep_the_default_kv_layout(family_checkpoints, tmp_path):
    """litert-torch 0.10's transposed attention has no ALiBi path: asked for, it is refused up front."""
    from workbench.convert import ConversionError, convert

    with pytest.raises(ConversionError, match="ALiBi") as e:
        convert(family_checkpoints["falcon"], recipe="none", prefill=[8], kv=32, out=tmp_path, kv_layout="transposed")
    assert "kv_layout='default'" in e.value.hint
