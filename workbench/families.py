"""Decoder families: how a Hugging Face `config.json` becomes Blueprint knobs.

One reader (`read_hf_config`) handles the fields every family shares; a family is
a small table of what differs (fixed knobs, default tensor names, the litert-torch
example it matches). Adding a family means adding a row, not a code path.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

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
    # Config fields of this family alone -> (model knobs, layer knobs); may refuse with BlueprintError.
    read: Optional[Callable[[dict], tuple[dict, dict]]] = None
    # How the checkpoint's fused QKV rows are laid out: "plain" [q; k; v] (Phi-3) or "grouped"
    # per KV group [q.., k, v] (Falcon); the mapping reorders grouped rows on load.
    fused_qkv_layout: str = "plain"
    # transformers attention implementation compare runs the original with.
    reference_attention: str = "eager"


_PHI_NAMES = {**_HF_DECODER_NAMES, "attn_output_proj": "model.layers.{}.self_attn.dense",
              "ff_up_proj": "model.layers.{}.mlp.fc1", "ff_down_proj": "model.layers.{}.mlp.fc2",
              "ff_gate_proj": "", "post_attn_norm": "", "final_norm": "model.final_layernorm",
              "attn_query_norm": "model.layers.{}.self_attn.q_layernorm",
              "attn_key_norm": "model.layers.{}.self_attn.k_layernorm"}
_PHI3_NAMES = {**_HF_DECODER_NAMES, "attn_fused_qkv_proj": "model.layers.{}.self_attn.qkv_proj",
               "attn_query_proj": "", "attn_key_proj": "", "attn_value_proj": "",
               "ff_up_proj": "model.layers.{}.mlp.gate_up_proj", "ff_gate_proj": ""}
_QK_NORM_NAMES = {**_HF_DECODER_NAMES, "attn_query_norm": "model.layers.{}.self_attn.q_norm",
                  "attn_key_norm": "model.layers.{}.self_attn.k_norm"}
_GEMMA2_NAMES = {**_HF_DECODER_NAMES, "pre_ff_norm": "model.layers.{}.pre_feedforward_layernorm",
                 "post_ff_norm": "model.layers.{}.post_feedforward_layernorm"}
_FALCON_NAMES = {
    "embedding": "transformer.word_embeddings", "final_norm": "transformer.ln_f",
    "pre_attn_norm": "transformer.h.{}.input_layernorm", "post_attn_norm": "transformer.h.{}.post_attention_layernorm",
    "attn_fused_qkv_proj": "transformer.h.{}.self_attention.query_key_value",
    "attn_output_proj": "transformer.h.{}.self_attention.dense", "ff_up_proj": "transformer.h.{}.mlp.dense_h_to_4h",
    "ff_down_proj": "transformer.h.{}.mlp.dense_4h_to_h", "lm_head": "lm_head",
}


def _read_falcon(d: dict) -> tuple[dict, dict]:
    """Falcon's own fields: ALiBi or RoPE, one bias switch, parallel attention, and a
    single KV head unless the config asks for MHA/GQA (as FalconAttention decides)."""
    if d.get("new_decoder_architecture"):
        raise BlueprintError(
            "Falcon's new decoder architecture (Falcon-40B/180B: separate ln_attn and ln_mlp norms in front "
            "of a parallel block) cannot be imported: litert-torch's TransformerBlock has one norm there",
            hint="Falcon-RW and Falcon-7B-style checkpoints (new_decoder_architecture false) import")
    heads = d.get("num_attention_heads")
    kv = d.get("num_kv_heads") or heads
    bias = bool(d.get("bias", False))
    layer = {"num_kv_heads": 1 if d.get("multi_query", True) else kv, "alibi": bool(d.get("alibi", False)),
             "parallel_residual": bool(d.get("parallel_attn", True)), "qkv_bias": bias, "out_bias": bias,
             "ff_bias": bias, "intermediate_size": d.get("ffn_hidden_size") or 4 * (d.get("hidden_size") or 0),
             "norm_eps": d.get("layer_norm_epsilon", 1e-5)}
    return {}, layer


def _read_gemma3(d: dict) -> tuple[dict, dict]:
    if d.get("use_bidirectional_attention"):
        raise BlueprintError(
            "this gemma3_text checkpoint attends bidirectionally (EmbeddingGemma): an encoder of sentence "
            "embeddings, not a decoder that generates text",
            hint="import a Gemma 3 text decoder (e.g. gemma-3-1b or gemma-3-270m)")
    return {}, {}


_GEMMA = {"norm_type": "rms", "ff_type": "gated", "norm_offset": 1.0, "scale_embeddings": True}

FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family(
            "llama",
            example="llama, tiny_llama, smollm, amd_llama_135m",
            knobs={"norm_type": "rms", "ff_type": "gated"},
            features=("RMSNorm", "SiLU gated FF", "RoPE (default/linear/llama3)", "GQA", "optional biases"),
        ),
        Family(
            "mistral",
            example="none (llama-shaped; export_hf converts it)",
            knobs={"norm_type": "rms", "ff_type": "gated"},
            features=("RMSNorm", "SiLU gated FF", "RoPE", "GQA", "head_dim != hidden/heads",
                      "sliding window on every layer"),
        ),
        Family(
            "qwen2",
            example="qwen (Qwen 2 / 2.5), hammer, deepseek (R1 distill)",
            # Qwen2's modeling code hard-codes biases on q/k/v and none on o_proj.
            knobs={"norm_type": "rms", "ff_type": "gated", "qkv_bias": True, "out_bias": False},
            features=("RMSNorm", "SiLU gated FF", "RoPE", "GQA", "q/k/v biases", "sliding window layers"),
        ),
        Family(
            "qwen3",
            example="qwen (Qwen 3)",
            knobs={"norm_type": "rms", "ff_type": "gated", "qk_norm": True},
            features=("RMSNorm", "QK-norm (RMS, per head)", "SiLU gated FF", "RoPE", "GQA",
                      "head_dim != hidden/heads", "sliding window layers"),
            tensor_names=_QK_NORM_NAMES,
        ),
        Family(
            "gemma",
            example="gemma (gemma1)",
            # Gemma stores RMSNorm weights as offsets from 1 and scales embeddings by sqrt(hidden).
            knobs=_GEMMA,
            features=("RMSNorm (+1 offset)", "GELU-tanh gated FF", "RoPE", "MQA/GQA", "head_dim != hidden/heads",
                      "scaled embeddings", "tied embeddings"),
        ),
        Family(
            "gemma2",
            example="gemma (gemma2)",
            knobs={**_GEMMA, "post_norms": True},
            features=("RMSNorm (+1 offset)", "post-attention and post-FF norms", "GELU-tanh gated FF",
                      "attention and final logit soft-capping", "query_pre_attn_scalar", "alternating sliding window",
                      "scaled embeddings", "tied embeddings"),
            tensor_names=_GEMMA2_NAMES,
            activation_field="hidden_activation",
        ),
        Family(
            "gemma3_text",
            example="gemma3 (decoder)",
            knobs={**_GEMMA, "post_norms": True, "qk_norm": True},
            features=("RMSNorm (+1 offset)", "QK-norm (+1 offset)", "post-attention and post-FF norms",
                      "GELU-tanh gated FF", "query_pre_attn_scalar", "sliding-window and global layers",
                      "per-layer RoPE base (local/global)", "scaled embeddings", "tied embeddings"),
            tensor_names={**_GEMMA2_NAMES, "attn_query_norm": "model.layers.{}.self_attn.q_norm",
                          "attn_key_norm": "model.layers.{}.self_attn.k_norm"},
            activation_field="hidden_activation",
            read=_read_gemma3,
        ),
        Family(
            "phi",
            example="phi (phi2)",
            knobs={"norm_type": "layer", "ff_type": "sequential", "qkv_bias": True, "out_bias": True,
                   "ff_bias": True, "parallel_residual": True, "lm_head_bias": True},
            features=("LayerNorm with bias", "parallel attention/FF residual", "partial rotary RoPE",
                      "GELU-tanh sequential FF", "biases everywhere", "LM head bias", "optional QK LayerNorm"),
            tensor_names=_PHI_NAMES,
        ),
        Family(
            "phi3",
            example="phi (phi3, phi4)",
            knobs={"norm_type": "rms", "ff_type": "gated_fused"},
            features=("RMSNorm", "fused QKV", "fused gate/up (SiLU-GLU)", "partial rotary RoPE (Phi-4-mini)",
                      "GQA", "sliding window on every layer"),
            tensor_names=_PHI3_NAMES,
        ),
        Family(
            "falcon",
            example="falcon (Falcon-RW-1B)",
            knobs={"norm_type": "layer", "ff_type": "sequential"},
            features=("LayerNorm with bias", "ALiBi (Falcon-RW) or RoPE", "fused QKV, interleaved per KV group",
                      "MHA or MQA", "optional parallel attention/FF residual", "GELU sequential FF",
                      "tied embeddings"),
            tensor_names=_FALCON_NAMES,
            activation_field="activation",
            read=_read_falcon,
            fused_qkv_layout="grouped",
            # transformers 5.24's eager Falcon adds ALiBi twice (once inside the causal mask it
            # builds, once in the attention); its SDPA path adds it once, as Falcon does.
            reference_attention="sdpa",
        ),
    )
}

# Families that litert-torch re-authors but that cannot be imported here, and why: a
# clear refusal naming the missing piece instead of "unsupported model_type".
UNSUPPORTED = {
    "openelm": "OpenELM has no transformers class in this version (it needs trust_remote_code), so there is "
               "no reference to map from or compare with",
    "gemma3": "this is the multimodal Gemma 3 (vision + text); import its text decoder (model_type "
              "gemma3_text, e.g. gemma-3-1b or gemma-3-270m)",
    "paligemma": "PaliGemma is a vision-language model, not a decoder-only text family",
    "qwen2_vl": "Qwen2-VL is a vision-language model, not a decoder-only text family",
    "qwen2_5_vl": "Qwen2.5-VL is a vision-language model, not a decoder-only text family",
    "t5": "T5 is an encoder-decoder model, not a decoder-only text family",
    "moonshine": "Moonshine is a speech model, not a decoder-only text family",
}


def supported() -> list[str]:
    return sorted(FAMILIES)


def family(model_type: str) -> Family:
    if model_type in UNSUPPORTED:
        raise BlueprintError(f"model_type {model_type!r} cannot be imported: {UNSUPPORTED[model_type]}",
                             hint="`edge-workbench families` lists what can be imported")
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
    theta = getattr(cls, "default_theta", 10_000.0)
    out: dict[str, Any] = {}
    if isinstance(theta, dict):  # per layer type (Gemma 3): global and local (sliding) bases
        if "local" in theta:
            out["rope_local_base_freq"] = theta["local"]
        theta = theta.get("global", theta.get("full_attention", next(iter(theta.values()))))
    out["rope_theta"] = theta
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


def _rope_entry(params: dict, raw: dict, defaults: dict) -> tuple[float, float, dict | None]:
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


def read_rope(raw: dict, defaults: dict) -> tuple[float, float, dict | None]:
    """(base, rotary fraction, scaling) from transformers 5's `rope_parameters` or the
    older `rope_theta` / `rope_scaling` / `partial_rotary_factor` fields. With
    per-layer-type parameters (Gemma 3) this is the full-attention layers' RoPE."""
    params = raw.get("rope_parameters") or {}
    if params and all(isinstance(v, dict) for v in params.values()):
        params = params.get("full_attention") or next(iter(params.values()))
    return _rope_entry(params, raw, defaults)


def read_local_rope(raw: dict, defaults: dict) -> tuple[float, dict | None] | None:
    """(base, scaling) of the sliding-window layers when they have a RoPE of their own
    (Gemma 3: `rope_parameters.sliding_attention`, or the older `rope_local_base_freq`)."""
    params = raw.get("rope_parameters") or {}
    if params and all(isinstance(v, dict) for v in params.values()) and "sliding_attention" in params:
        base, _, scaling = _rope_entry(params["sliding_attention"], {}, defaults)
        return base, scaling
    if raw.get("rope_local_base_freq") is not None:
        return float(raw["rope_local_base_freq"]), None
    return None


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
    own_model, own_layer = fam.read(d) if fam.read is not None else ({}, {})  # may refuse: first

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
        "qk_norm": bool(d.get("qk_layernorm", False)),
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
    model.update(own_model)
    layer.update(own_layer)

    overrides: dict[int, dict[str, Any]] = {}
    window = d.get("sliding_window")
    if d.get("use_sliding_window") is False:  # Qwen 2/3 write a window they do not use
        window = None
    layer_types = d.get("layer_types")
    n_layers = d.get("num_hidden_layers")
    if layer_types is None and window and d.get("use_sliding_window"):
        start = d.get("max_window_layers", 0)
        layer_types = ["sliding_attention" if i >= start else "full_attention" for i in range(n_layers)]
    if window and layer_types is None:  # Mistral, Phi-3: one window on every layer
        layer_types = ["sliding_attention"] * (n_layers if isinstance(n_layers, int) else 0)
    local = {}
    if window and layer_types and "sliding_attention" in layer_types:
        local = {"sliding_window": int(window)}
        local_rope = read_local_rope(d, d)
        if local_rope is not None:
            local_base, local_scaling = local_rope
            if local_scaling != scaling:
                raise BlueprintError(
                    "config.json gives the sliding-window layers a RoPE scaling of their own "
                    f"({local_scaling}) that differs from the global layers' ({scaling})",
                    hint="per-layer RoPE scaling is not supported: the workbench's RoPE takes one scaling for "
                         "every layer (per-layer RoPE bases are supported)")
            if local_base != base:
                local["rope_base"] = local_base
    if local:
        if all(t == "sliding_attention" for t in layer_types):
            layer.update(local)
        else:
            for i, t in enumerate(layer_types):
                if t == "sliding_attention":
                    overrides[i] = dict(local)
    for k, v in list(layer.items()):
        if isinstance(v, float) and math.isfinite(v) and v.is_integer() and k in ("rope_base",):
            layer[k] = float(v)
    return model, layer, overrides
