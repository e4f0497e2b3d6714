"""Decoder families: how a Hugging Face `config.json` becomes Blueprint knobs.

One reader (`read_hf_config`) handles the fields every family shares; a family is
a small table of what differs (fixed knobs, default tensor names, the litert-torch
example it matches). Adding a family means adding a row, not a code path.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from workbench.errors import BlueprintError

# HF activation names -> our knob values (litert-torch ActivationType, lower case).
ACTIVATIONS_FROM_HF = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "quick_gelu": "gelu_quick",
    "relu": "relu",
}

# The rope_type values our layers compute exactly as transformers does.
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")

# litert-torch's ModelLoader.TensorNames for the standard HF decoder layout.
_HF_DECODER_NAMES = {
    "ff_up_proj": "model.layers.{}.mlp.up_proj",
    "ff_down_proj": "model.layers.{}.mlp.down_proj",
    "ff_gate_proj": "model.layers.{}.mlp.gate_proj",
    "attn_query_proj": "model.layers.{}.self_attn.q_proj",
    "attn_key_proj": "model.layers.{}.self_attn.k_proj",
    "attn_value_proj": "model.layers.{}.self_attn.v_proj",
    "attn_output_proj": "model.layers.{}.self_attn.o_proj",
    "pre_attn_norm": "model.layers.{}.input_layernorm",
    "post_attn_norm": "model.layers.{}.post_attention_layernorm",
    "embedding": "model.embed_tokens",
    "final_norm": "model.norm",
    "lm_head": "lm_head",
}


@dataclasses.dataclass(frozen=True)
class Family:
    """What one HF `model_type` fixes beyond the fields every family shares."""

    model_type: str
    example: str  # the litert-torch example under generative/examples it matches
    knobs: dict[str, Any]  # knob values the architecture fixes (not read from config)
    features: tuple[str, ...]
    tensor_names: dict[str, str] = dataclasses.field(default_factory=lambda: dict(_HF_DECODER_NAMES))
    # The config field transformers' modeling code reads the activation from.
    activation_field: str = "hidden_act"


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family(
            "llama",
            example="llama, tiny_llama, smollm",
            knobs={"norm_type": "rms", "ff_type": "gated"},
            features=("RMSNorm", "SiLU gated FF", "RoPE (default/linear/llama3)", "GQA", "optional biases"),
        ),
        Family(
            "qwen2",
            example="qwen (Qwen 2 / 2.5)",
            # Qwen2's modeling code hard-codes biases on q/k/v and none on o_proj.
            knobs={"norm_type": "rms", "ff_type": "gated", "qkv_bias": True, "out_bias": False},
            features=("RMSNorm", "SiLU gated FF", "RoPE", "GQA", "q/k/v biases", "sliding window layers"),
        ),
        Family(
            "gemma",
            example="gemma (gemma1)",
            # Gemma stores RMSNorm weights as offsets from 1 and scales embeddings by sqrt(hidden).
            knobs={"norm_type": "rms", "ff_type": "gated", "norm_offset": 1.0, "scale_embeddings": True},
            features=("RMSNorm (+1 offset)", "GELU-tanh gated FF", "RoPE", "MQA/GQA", "head_dim != hidden/heads",
                      "scaled embeddings", "tied embeddings"),
        ),
        Family(
            "gemma2",
            example="gemma (gemma2)",
            knobs={"norm_type": "rms", "ff_type": "gated", "norm_offset": 1.0, "scale_embeddings": True,
                   "post_norms": True},
            features=("RMSNorm (+1 offset)", "post-attention and post-FF norms", "GELU-tanh gated FF",
                      "attention and final logit soft-capping", "query_pre_attn_scalar", "alternating sliding window",
                      "scaled embeddings", "tied embeddings"),
            tensor_names={**_HF_DECODER_NAMES, "pre_ff_norm": "model.layers.{}.pre_feedforward_layernorm",
                          "post_ff_norm": "model.layers.{}.post_feedforward_layernorm"},
            activation_field="hidden_activation",
        ),
    )
}


def supported() -> list[str]:
    return sorted(FAMILIES)


def family(model_type: str) -> Family:
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise BlueprintError(
            f"model_type {model_type!r} is not a supported decoder family "
            f"(supported: {', '.join(supported())})",
            hint="check config.json's model_type; `edge-workbench families` lists what can be imported",
        ) from None


def _class_defaults(model_type: str) -> dict[str, Any]:
    """Defaults of transformers' own config class, so a field missing from config.json
    means what it means to transformers (e.g. Llama's untied vs Gemma's tied head)."""
    from workbench._quiet import import_stack

    import_stack()
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    out: dict[str, Any] = {"rope_theta": getattr(cls, "default_theta", 10_000.0)}
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
    return out


def _first(d: dict, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return default


def read_rope(raw: dict, defaults: dict) -> tuple[float, float, dict | None]:
    """(base, rotary fraction, scaling) from transformers 5's `rope_parameters` or the
    older `rope_theta` / `rope_scaling` / `partial_rotary_factor` fields."""
    params = raw.get("rope_parameters") or {}
    if params and all(isinstance(v, dict) for v in params.values()):
        # Per-layer-type parameters (e.g. Gemma 3): the full-attention entry is the default.
        params = params.get("full_attention") or next(iter(params.values()))
    scaling = dict(raw.get("rope_scaling") or {})
    base = _first(params, "rope_theta", default=_first(raw, "rope_theta", default=defaults.get("rope_theta", 10_000.0)))
    fraction = _first(params, "partial_rotary_factor", default=_first(raw, "partial_rotary_factor", default=1.0))
    merged = {**scaling, **{k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}}
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type == "default":
        return float(base), float(fraction), None
    merged["rope_type"] = rope_type
    merged.pop("type", None)
    return float(base), float(fraction), merged


def read_hf_config(raw: dict) -> tuple[dict[str, Any], dict[str, Any], dict[int, dict[str, Any]]]:
    """Split an HF config dict into (model knobs, layer knobs, per-layer overrides).

    Values are taken as written, even impossible ones: the Blueprint reports those
    as problems naming the field, so a user can see and fix them.
    """
    model_type = raw.get("model_type")
    if not model_type:
        raise BlueprintError(
            "config.json has no model_type",
            hint="add the Hugging Face model_type (e.g. \"llama\") to config.json",
        )
    fam = family(model_type)
    d = {**_class_defaults(model_type), **raw}

    act_name = d.get(fam.activation_field) or "silu"
    if act_name not in ACTIVATIONS_FROM_HF:
        raise BlueprintError(
            f"config.json {fam.activation_field}={act_name!r} has no litert-torch activation "
            f"(known: {', '.join(sorted(ACTIVATIONS_FROM_HF))})",
            hint="litert-torch's feed-forward builders cannot express this activation",
        )
    base, fraction, scaling = read_rope(d, d)
    heads = d.get("num_attention_heads")
    hidden = d.get("hidden_size")
    eps = _first(d, "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps", default=1e-6)
    attention_bias = bool(d.get("attention_bias", False))
    layer = {
        "num_heads": heads,
        "num_kv_heads": _first(d, "num_key_value_heads", default=heads),
        "head_dim": d.get("head_dim"),
        "intermediate_size": d.get("intermediate_size"),
        "activation": ACTIVATIONS_FROM_HF[act_name],
        "ff_bias": bool(d.get("mlp_bias", False)),
        "qkv_bias": attention_bias,
        "out_bias": attention_bias,
        "norm_eps": eps,
        "rope_base": base,
        "rotary_fraction": fraction,
        "attn_logit_softcap": d.get("attn_logit_softcapping"),
    }
    if d.get("query_pre_attn_scalar") is not None:
        layer["attn_scale"] = float(d["query_pre_attn_scalar"]) ** -0.5
    model = {
        "family": model_type,
        "vocab_size": d.get("vocab_size"),
        "num_layers": d.get("num_hidden_layers"),
        "hidden_size": hidden,
        "max_seq_len": _first(d, "max_position_embeddings", default=2048),
        "tie_embeddings": bool(d.get("tie_word_embeddings", True)),
        "final_logit_softcap": d.get("final_logit_softcapping"),
        "rope_scaling": scaling,
    }
    for knob, value in fam.knobs.items():
        (model if knob in ("scale_embeddings", "tie_embeddings", "lm_head_bias") else layer)[knob] = value

    overrides: dict[int, dict[str, Any]] = {}
    window = d.get("sliding_window")
    layer_types = d.get("layer_types")
    if layer_types is None and window and d.get("use_sliding_window"):
        start = d.get("max_window_layers", 0)
        layer_types = ["sliding_attention" if i >= start else "full_attention" for i in range(d["num_hidden_layers"])]
    if window and layer_types and (model_type != "qwen2" or d.get("use_sliding_window")):
        if all(t == "sliding_attention" for t in layer_types):
            layer["sliding_window"] = int(window)
        else:
            for i, t in enumerate(layer_types):
                if t == "sliding_attention":
                    overrides[i] = {"sliding_window": int(window)}
    elif window and model_type == "llama":
        layer["sliding_window"] = int(window)
    for k, v in list(layer.items()):
        if isinstance(v, float) and math.isfinite(v) and v.is_integer() and k in ("rope_base",):
            layer[k] = float(v)
    return model, layer, overrides
